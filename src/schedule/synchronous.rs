//! The synchronous (Jacobi) schedule: in each tick every layer evaluates
//! against its neighbours' states from the previous tick, then every layer
//! with a row at or above the tolerance steps. It is the solver's schedule,
//! run here tick by tick so that each tick can be measured.
//!
//! Invariant: within a tick no layer evaluates against another layer's new
//! state.

use super::{
    Context, Progress, ScheduleKind, ScheduleRun, Verdict, evaluate_all, fanout, guarded_step,
    start_layers, start_messages,
};
use crate::solver::max_residual;

/// Relaxes the batch tick by tick until a stopping rule of the module
/// [`crate::schedule`] applies.
pub(super) fn run<'a>(context: &'a Context<'a>) -> ScheduleRun {
    let mut layers = start_layers(context);
    let count = layers.len();
    let tolerance = context.relax.tolerance;
    let (mut progress, mut evals) = Progress::new(context, ScheduleKind::Synchronous, &layers);
    progress.count_sent(start_messages(count));
    let mut tick = 0;

    let verdict = loop {
        if evals.iter().any(|e| progress.diverged(e)) {
            break Verdict::Diverged;
        }
        let pending: Vec<usize> = (0..count)
            .filter(|&i| evals[i].max_residual() >= tolerance)
            .collect();
        if pending.is_empty() {
            break Verdict::Converged;
        }
        if pending.iter().any(|&i| progress.at_cap(i)) {
            break progress.cap_verdict();
        }
        if context.timed_out() {
            break Verdict::TimedOut;
        }

        tick += 1;
        let mut finite = true;
        for &i in &pending {
            if guarded_step(&mut layers[i], &evals[i], tolerance).is_none() {
                finite = false;
                break;
            }
            progress.count_update(i);
            progress.count_sent(fanout(i, count));
        }
        if !finite {
            break Verdict::Diverged;
        }

        evals = evaluate_all(&layers, context.x0);
        progress.note_residual(max_residual(&evals));
        if progress.point_due() {
            progress.record(&layers, &evals, tick as f64);
        }
    };
    progress.finish(verdict, &layers, tick as f64)
}
