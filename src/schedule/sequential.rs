//! The sequential (Gauss-Seidel) schedule: a sweep steps layer 1, then 2, …,
//! then n, each evaluated against the newest states of its neighbours, so
//! layer i + 1 evaluates against layer i's new state within the same sweep.
//!
//! Invariant: the run converges only after a whole sweep in which no layer
//! stepped. Every evaluation of that sweep saw the final state, so the fixed
//! point is checked against current messages only.

use super::{
    Context, Progress, ScheduleKind, ScheduleRun, Verdict, fanout, guarded_step,
    prediction_from_above, start_layers, start_messages,
};

/// Relaxes the batch sweep by sweep until a stopping rule of the module
/// [`crate::schedule`] applies.
pub(super) fn run<'a>(context: &'a Context<'a>) -> ScheduleRun {
    let mut layers = start_layers(context);
    let count = layers.len();
    let tolerance = context.relax.tolerance;
    let (mut progress, _) = Progress::new(context, ScheduleKind::Sequential, &layers);
    progress.count_sent(start_messages(count));
    let mut sweep = 0;

    let verdict = 'sweeps: loop {
        if context.timed_out() {
            break Verdict::TimedOut;
        }
        sweep += 1;
        let mut stepped = false;
        let mut sweep_residual: f64 = 0.0;
        for i in 0..count {
            let above = prediction_from_above(&layers, i);
            let eval = match i {
                0 => layers[0].evaluate(context.x0, above.as_ref().map(|p| p.view())),
                _ => layers[i].evaluate(layers[i - 1].x.view(), above.as_ref().map(|p| p.view())),
            };
            if progress.diverged(&eval) {
                break 'sweeps Verdict::Diverged;
            }
            let residual = eval.max_residual();
            sweep_residual = sweep_residual.max(residual);
            if residual < tolerance {
                continue;
            }
            if progress.at_cap(i) {
                break 'sweeps progress.cap_verdict();
            }
            if guarded_step(&mut layers[i], &eval, tolerance).is_none() {
                break 'sweeps Verdict::Diverged;
            }
            stepped = true;
            progress.count_update(i);
            progress.count_sent(fanout(i, count));
            if progress.point_due() {
                progress.measure(&layers, sweep as f64);
            }
        }
        progress.note_residual(sweep_residual);
        if !stepped {
            break Verdict::Converged;
        }
    };
    progress.finish(verdict, &layers, sweep as f64)
}
