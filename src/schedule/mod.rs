//! Update schedules: which layer steps when, and which messages it evaluates
//! against. A schedule only calls [`Layer::start`], [`Layer::evaluate`] and
//! [`Layer::step`] in some order with some messages, so every schedule runs the
//! model's arithmetic unchanged and its fixed point compares with the
//! [`Solver`](crate::solver::Solver)'s.
//!
//! - [`synchronous`]: Jacobi. Every layer evaluates against the previous
//!   iterate, then all layers step (one tick).
//! - [`sequential`]: Gauss-Seidel. A sweep steps layers 1, 2, …, n in turn,
//!   each against the newest states of its neighbours.
//! - [`seeded`]: a deterministic discrete-event simulation of the layer actors
//!   of [`crate::runtime`] in virtual time, with seeded message latencies.
//!
//! Rules shared by every schedule:
//!
//! - Start: each layer's [`Layer::start`] bottom up, as `Solver::start` does.
//! - Converged: every layer's max row residual is below the tolerance against
//!   its neighbours' current states.
//! - Diverged: an evaluation is not finite, or its max row residual exceeds
//!   `divergence_factor` times the starting residual (the solver's rule).
//! - Step cap: a layer that has taken `max_steps` updates needs another. The
//!   whole run stops there, unlike the actor runtime, where a capped actor
//!   settles alone. [`classify_cap`] then calls it `Oscillating` or `Capped`.
//! - Timed out: the wall clock passed [`SeededConfig::max_wall_seconds`],
//!   which applies to every schedule. Only such a run is not reproducible.
//! - Messages: counted as the actor protocol sends them. The input sends `x_0`
//!   once. Every layer sends its state up when a layer is above it and its
//!   prediction down when a layer (not the input) is below it: once when it
//!   starts and once after each update.
//!
//! Invariant: no schedule writes a non-finite value into a layer. A step
//! whose result is not finite is undone and the run ends `Diverged`, so the
//! state, the curve and the report of a run contain no NaN.

pub mod seeded;
pub mod sequential;
pub mod synchronous;

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::debug;

use crate::model::{Layer, LayerEval, Network, State, energies, prediction};
use crate::relaxation::{Outcome, RelaxConfig, RelaxReport};
use crate::solver::{build_layers, max_residual, summarize};
use crate::trace::TraceRecorder;

/// The order in which layers update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Jacobi: all layers evaluate, then all step.
    Synchronous,
    /// Gauss-Seidel: layers step one after another, bottom up.
    Sequential,
    /// Simulated layer actors with seeded latencies, in virtual time.
    Seeded,
}

impl ScheduleKind {
    /// Every schedule, in the order the names are listed in errors.
    pub const ALL: [ScheduleKind; 3] = [
        ScheduleKind::Synchronous,
        ScheduleKind::Sequential,
        ScheduleKind::Seeded,
    ];

    /// Returns the schedule's name, as used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Synchronous => "synchronous",
            ScheduleKind::Sequential => "sequential",
            ScheduleKind::Seeded => "seeded",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScheduleKind {
    type Err = ScheduleError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ScheduleKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| ScheduleError::UnknownKind {
                name: name.to_string(),
            })
    }
}

/// One measurement of a run's progress.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Layer updates so far, summed over layers.
    pub update: usize,
    /// Data messages sent so far. The start point counts none, and every
    /// later point counts the feed-forward messages of the start as well.
    pub messages: u64,
    /// V summed over the batch's images, at the layers' current states.
    pub potential: f64,
    /// Max row residual over layers, each layer evaluated against its
    /// neighbours' current states.
    pub residual: f64,
    /// Virtual time for the seeded schedule. Otherwise the number of the tick
    /// (synchronous) or sweep (sequential) in progress, 0 at the start.
    pub time: f64,
}

/// The reason a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every layer settled below the tolerance.
    Converged,
    /// The step cap was reached and the residual had stopped decreasing.
    Oscillating,
    /// The residual grew past the divergence limit or became non-finite.
    Diverged,
    /// The step cap was reached while the residual was still decreasing.
    Capped,
    /// The wall-clock limit was reached first.
    TimedOut,
}

impl Verdict {
    /// Returns the relaxation outcome the verdict maps to: every verdict that
    /// ends before convergence without diverging is `Capped`.
    pub fn outcome(self) -> Outcome {
        match self {
            Verdict::Converged => Outcome::Converged,
            Verdict::Diverged => Outcome::Diverged,
            Verdict::Oscillating | Verdict::Capped | Verdict::TimedOut => Outcome::Capped,
        }
    }
}

/// The result of relaxing one batch under one schedule.
#[derive(Clone, Debug)]
pub struct ScheduleRun {
    pub kind: ScheduleKind,
    pub verdict: Verdict,
    /// Layer updates, summed over layers.
    pub updates: usize,
    /// Data messages sent, counted by the actor protocol.
    pub messages: u64,
    /// Wall-clock duration of the run, in seconds. It is the only field that
    /// differs between two runs with the same inputs, unless the wall-clock
    /// limit ended one of them.
    pub wall_seconds: f64,
    /// Progress measured at the start, every `curve_every` updates, and at
    /// the end.
    pub curve: Vec<CurvePoint>,
    /// Final `x` of every layer (`x[0]` the input) and layer 1's `lambda`.
    pub state: State<f64>,
    /// The relaxation report, with `outcome` from [`Verdict::outcome`].
    pub report: RelaxReport,
}

/// Settings of the seeded schedule, and the wall-clock limit of every
/// schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct SeededConfig {
    /// Seed of the latency draws.
    pub seed: u64,
    /// Mean message latency, in virtual time units (a step of speed 1 takes
    /// one unit). Must be finite and non-negative.
    pub latency_mean: f64,
    /// Relative half-width of the latency distribution, in [0, 1]: each
    /// latency is uniform on `[mean (1 − spread), mean (1 + spread)]`.
    pub latency_spread: f64,
    /// Duration of one step of each layer (layer 1 first), in virtual time
    /// units. Empty means 1 for every layer.
    pub speeds: Vec<f64>,
    /// Wall-clock limit of a run, in seconds, for every schedule. Infinity
    /// means no limit: the step cap alone bounds the run.
    pub max_wall_seconds: f64,
}

impl Default for SeededConfig {
    fn default() -> Self {
        SeededConfig {
            seed: 0,
            latency_mean: 0.5,
            latency_spread: 0.5,
            speeds: Vec::new(),
            max_wall_seconds: f64::INFINITY,
        }
    }
}

/// Invalid arguments to [`run_schedule`] or an unknown schedule name.
#[derive(Debug, Error, PartialEq)]
pub enum ScheduleError {
    #[error("unknown schedule {name:?}; expected synchronous, sequential or seeded")]
    UnknownKind { name: String },
    #[error("the network has no layers; give it at least one weight matrix")]
    EmptyNetwork,
    #[error("the network has {weights} weight matrices but {alpha} sparsity weights")]
    AlphaCount { weights: usize, alpha: usize },
    #[error("W_{layer} has {rows} rows but layer {below} has {expected} units")]
    WeightShape {
        layer: usize,
        below: usize,
        rows: usize,
        expected: usize,
    },
    #[error("the input has {found} columns but W_1 has {expected} rows")]
    InputWidth { expected: usize, found: usize },
    #[error("input row {row}, column {column} is {value}; every input value must be finite")]
    NonFiniteInput {
        row: usize,
        column: usize,
        value: f64,
    },
    #[error(
        "invalid latency: mean {mean} must be finite and non-negative, spread {spread} in [0, 1]"
    )]
    InvalidLatency { mean: f64, spread: f64 },
    #[error("{found} step durations for {expected} layers; give one per layer or none")]
    SpeedCount { expected: usize, found: usize },
    #[error("step duration {speed} of layer {layer} is invalid; it must be finite and >= 0")]
    InvalidSpeed { layer: usize, speed: f64 },
    #[error("wall-clock limit {seconds} s is invalid; it must be positive (infinity for none)")]
    InvalidWallLimit { seconds: f64 },
}

/// Relaxes the batch `x0` (one unit-norm or zero image per row) under
/// schedule `kind`, measuring the curve every `curve_every` updates (0 for
/// only the start and the end).
pub fn run_schedule(
    kind: ScheduleKind,
    network: &Network<f64>,
    x0: ArrayView2<f64>,
    relax: &RelaxConfig,
    seeded: &SeededConfig,
    curve_every: usize,
) -> Result<ScheduleRun, ScheduleError> {
    validate(network, x0, seeded)?;
    let context = Context {
        network,
        x0,
        relax,
        seeded,
        curve_every,
        began: Instant::now(),
        trace: None,
    };
    let run = match kind {
        ScheduleKind::Synchronous => synchronous::run(&context),
        ScheduleKind::Sequential => sequential::run(&context),
        ScheduleKind::Seeded => seeded::run(&context),
    };
    debug!(
        schedule = kind.name(),
        verdict = ?run.verdict,
        updates = run.updates,
        messages = run.messages,
        residual = run.report.max_residual,
        "relaxed"
    );
    Ok(run)
}

/// Runs the seeded schedule like [`run_schedule`] and records every step
/// and message in `trace` in virtual time: one step of duration 1 is 1,000
/// µs of trace time, so the file replays exactly from the seed. Trace actor
/// 0 is the input and actor `i` is layer `i`.
pub fn run_seeded_traced(
    network: &Network<f64>,
    x0: ArrayView2<f64>,
    relax: &RelaxConfig,
    seeded: &SeededConfig,
    curve_every: usize,
    trace: &TraceRecorder,
) -> Result<ScheduleRun, ScheduleError> {
    validate(network, x0, seeded)?;
    let context = Context {
        network,
        x0,
        relax,
        seeded,
        curve_every,
        began: Instant::now(),
        trace: Some(trace),
    };
    Ok(seeded::run(&context))
}

/// Factor below which a capped run's minimum residual over the last third of
/// its history must fall, relative to the middle third, for the run to count
/// as still converging.
pub const STALL_RATIO: f64 = 0.9;

/// Classifies a run that reached the step cap from its residual history (one
/// entry per tick, sweep or update, in order).
///
/// The run is `Oscillating` when the minimum residual over the last third of
/// the history is not below [`STALL_RATIO`] times the minimum over the middle
/// third: the residual has stopped decreasing, whether it cycles, stalls or
/// creeps up. It is `Capped` when the residual still falls, and also when the
/// history has fewer than three entries to compare.
pub fn classify_cap(history: &[f64]) -> Verdict {
    let n = history.len();
    if n < 3 {
        return Verdict::Capped;
    }
    let minimum = |values: &[f64]| values.iter().fold(f64::INFINITY, |m, &v| m.min(v));
    let middle = minimum(&history[n / 3..2 * n / 3]);
    let last = minimum(&history[2 * n / 3..]);
    if last >= STALL_RATIO * middle {
        Verdict::Oscillating
    } else {
        Verdict::Capped
    }
}

/// The arguments of one run, shared by the schedule implementations.
struct Context<'a> {
    network: &'a Network<f64>,
    x0: ArrayView2<'a, f64>,
    relax: &'a RelaxConfig,
    seeded: &'a SeededConfig,
    curve_every: usize,
    began: Instant,
    /// The recorder of the seeded schedule's events, in virtual time.
    trace: Option<&'a TraceRecorder>,
}

impl Context<'_> {
    fn timed_out(&self) -> bool {
        self.began.elapsed().as_secs_f64() >= self.seeded.max_wall_seconds
    }
}

fn validate(
    network: &Network<f64>,
    x0: ArrayView2<f64>,
    seeded: &SeededConfig,
) -> Result<(), ScheduleError> {
    let Some(first) = network.weights.first() else {
        return Err(ScheduleError::EmptyNetwork);
    };
    if network.alpha.len() != network.weights.len() {
        return Err(ScheduleError::AlphaCount {
            weights: network.weights.len(),
            alpha: network.alpha.len(),
        });
    }
    for (i, pair) in network.weights.windows(2).enumerate() {
        if pair[1].nrows() != pair[0].ncols() {
            return Err(ScheduleError::WeightShape {
                layer: i + 2,
                below: i + 1,
                rows: pair[1].nrows(),
                expected: pair[0].ncols(),
            });
        }
    }
    if x0.ncols() != first.nrows() {
        return Err(ScheduleError::InputWidth {
            expected: first.nrows(),
            found: x0.ncols(),
        });
    }
    if let Some(((row, column), &value)) = x0.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(ScheduleError::NonFiniteInput { row, column, value });
    }
    validate_seeded(seeded, network.weights.len())
}

fn validate_seeded(seeded: &SeededConfig, layers: usize) -> Result<(), ScheduleError> {
    let mean = seeded.latency_mean;
    let spread = seeded.latency_spread;
    if !(mean.is_finite() && mean >= 0.0 && (0.0..=1.0).contains(&spread)) {
        return Err(ScheduleError::InvalidLatency { mean, spread });
    }
    if !seeded.speeds.is_empty() && seeded.speeds.len() != layers {
        return Err(ScheduleError::SpeedCount {
            expected: layers,
            found: seeded.speeds.len(),
        });
    }
    if let Some((i, &speed)) = seeded
        .speeds
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s >= 0.0))
    {
        return Err(ScheduleError::InvalidSpeed {
            layer: i + 1,
            speed,
        });
    }
    if seeded.max_wall_seconds.is_nan() || seeded.max_wall_seconds <= 0.0 {
        return Err(ScheduleError::InvalidWallLimit {
            seconds: seeded.max_wall_seconds,
        });
    }
    Ok(())
}

/// Builds the layers and sets their feed-forward starting states bottom up,
/// exactly as `Solver::start` does.
fn start_layers(context: &Context) -> Vec<Layer<f64>> {
    let mut layers = build_layers(context.network, context.relax);
    for i in 0..layers.len() {
        let below = match i {
            0 => context.x0.to_owned(),
            _ => layers[i - 1].x.clone(),
        };
        layers[i].start(below.view());
    }
    layers
}

/// Returns the prediction `p_{i+2}` that layer `i + 1` (0-based `i`) receives
/// from above, computed from the current state of the layer above.
fn prediction_from_above(layers: &[Layer<f64>], i: usize) -> Option<Array2<f64>> {
    layers
        .get(i + 1)
        .map(|above| prediction(above.x.view(), above.w.view()))
}

/// Evaluates every layer against its neighbours' current states.
fn evaluate_all(layers: &[Layer<f64>], x0: ArrayView2<f64>) -> Vec<LayerEval<f64>> {
    let mut evals: Vec<LayerEval<f64>> = Vec::with_capacity(layers.len());
    // Top down, so that each layer takes its prediction from the evaluation
    // of the layer above instead of recomputing it.
    for i in (0..layers.len()).rev() {
        let below = match i {
            0 => x0,
            _ => layers[i - 1].x.view(),
        };
        let above = evals.last().map(|e| e.prediction.view());
        let eval = layers[i].evaluate(below, above);
        evals.push(eval);
    }
    evals.reverse();
    evals
}

/// Returns how many messages layer `i + 1` (0-based `i`) of `count` sends per
/// announcement: its state up unless it is the top layer, and its prediction
/// down unless the layer below is the input.
fn fanout(i: usize, count: usize) -> u64 {
    u64::from(i + 1 < count) + u64::from(i > 0)
}

/// Returns the messages of the feed-forward start: `x_0` once and every
/// layer's starting state.
fn start_messages(count: usize) -> u64 {
    1 + (0..count).map(|i| fanout(i, count)).sum::<u64>()
}

/// Takes one step of `layer`, or undoes it and returns `None` when it wrote a
/// non-finite value into the state or lambda. Returns the rows moved.
fn guarded_step(layer: &mut Layer<f64>, eval: &LayerEval<f64>, tolerance: f64) -> Option<usize> {
    let x = layer.x.clone();
    let lambda = layer.lambda.clone();
    let moved = layer.step(eval, tolerance);
    let finite = layer.x.iter().all(|v| v.is_finite())
        && layer
            .lambda
            .as_ref()
            .is_none_or(|l| l.iter().all(|v| v.is_finite()));
    if finite {
        Some(moved)
    } else {
        layer.x = x;
        layer.lambda = lambda;
        None
    }
}

/// Collects the state of the input and every layer.
fn collect_state(layers: &[Layer<f64>], x0: ArrayView2<f64>) -> State<f64> {
    let mut x = vec![x0.to_owned()];
    x.extend(layers.iter().map(|l| l.x.clone()));
    let lambda = layers[0]
        .lambda
        .clone()
        .unwrap_or_else(|| ndarray::Array1::zeros(x0.nrows()));
    State { x, lambda }
}

/// Counters, limits and the curve of one run.
struct Progress<'a> {
    context: &'a Context<'a>,
    kind: ScheduleKind,
    /// Residual above which an evaluation counts as diverged.
    limit: f64,
    layer_updates: Vec<usize>,
    messages: u64,
    curve: Vec<CurvePoint>,
    /// Residual after each tick, sweep or update, for [`classify_cap`].
    history: Vec<f64>,
    /// Update count at which the next curve point is due.
    next_point: usize,
}

impl<'a> Progress<'a> {
    /// Starts the counters from the started `layers` and records the start
    /// point. Returns the evaluations of the start state too.
    fn new(
        context: &'a Context<'a>,
        kind: ScheduleKind,
        layers: &[Layer<f64>],
    ) -> (Self, Vec<LayerEval<f64>>) {
        let evals = evaluate_all(layers, context.x0);
        let start = max_residual(&evals).max(context.relax.tolerance);
        let mut progress = Progress {
            context,
            kind,
            limit: start * context.relax.divergence_factor,
            layer_updates: vec![0; layers.len()],
            messages: 0,
            curve: Vec::new(),
            history: Vec::new(),
            next_point: context.curve_every.max(1),
        };
        let point = progress.point(layers, &evals, 0.0);
        progress.push(point);
        progress.note_residual(point.residual);
        (progress, evals)
    }

    fn tolerance(&self) -> f64 {
        self.context.relax.tolerance
    }

    fn updates(&self) -> usize {
        self.layer_updates.iter().sum()
    }

    /// Returns whether an evaluation is non-finite or above the limit.
    fn diverged(&self, eval: &LayerEval<f64>) -> bool {
        !eval.is_finite() || eval.max_residual() > self.limit
    }

    /// Returns whether layer `i` (0-based) has used all its steps.
    fn at_cap(&self, i: usize) -> bool {
        self.layer_updates[i] >= self.context.relax.max_steps
    }

    fn count_update(&mut self, i: usize) {
        self.layer_updates[i] += 1;
    }

    fn count_sent(&mut self, messages: u64) {
        self.messages += messages;
    }

    /// Notes the residual of a tick, sweep or update for [`classify_cap`].
    /// A non-finite residual is left out, because the run is diverging.
    fn note_residual(&mut self, residual: f64) {
        if residual.is_finite() {
            self.history.push(residual);
        }
    }

    fn cap_verdict(&self) -> Verdict {
        classify_cap(&self.history)
    }

    /// Returns whether a curve point is due, and schedules the next one.
    fn point_due(&mut self) -> bool {
        if self.context.curve_every == 0 || self.updates() < self.next_point {
            return false;
        }
        while self.next_point <= self.updates() {
            self.next_point += self.context.curve_every;
        }
        true
    }

    /// Measures the current state of `layers` into a curve point.
    fn measure(&mut self, layers: &[Layer<f64>], time: f64) {
        let evals = evaluate_all(layers, self.context.x0);
        self.record(layers, &evals, time);
    }

    /// Records a curve point from `evals`, the evaluations of every layer
    /// against its neighbours' current states.
    fn record(&mut self, layers: &[Layer<f64>], evals: &[LayerEval<f64>], time: f64) {
        let point = self.point(layers, evals, time);
        self.push(point);
    }

    fn point(&self, layers: &[Layer<f64>], evals: &[LayerEval<f64>], time: f64) -> CurvePoint {
        let state = collect_state(layers, self.context.x0);
        CurvePoint {
            update: self.updates(),
            messages: self.messages,
            potential: energies(self.context.network, &state).potential.sum(),
            residual: max_residual(evals),
            time,
        }
    }

    /// Appends a point unless a measurement in it is not finite or it repeats
    /// the last point.
    fn push(&mut self, point: CurvePoint) {
        let finite = point.potential.is_finite() && point.residual.is_finite();
        if finite && self.curve.last() != Some(&point) {
            self.curve.push(point);
        }
    }

    /// Measures the end state and assembles the run.
    fn finish(mut self, verdict: Verdict, layers: &[Layer<f64>], time: f64) -> ScheduleRun {
        let evals = evaluate_all(layers, self.context.x0);
        let point = self.point(layers, &evals, time);
        self.push(point);
        let mut report = summarize(
            &evals,
            verdict.outcome(),
            self.layer_updates.clone(),
            self.tolerance(),
            &layers[0],
            self.messages,
        );
        // A non-finite end evaluation is reported as infinite, never NaN.
        for value in [
            &mut report.max_residual,
            &mut report.max_constraint_violation,
        ] {
            if !value.is_finite() {
                *value = f64::INFINITY;
            }
        }
        ScheduleRun {
            kind: self.kind,
            verdict,
            updates: self.updates(),
            messages: self.messages,
            wall_seconds: self.context.began.elapsed().as_secs_f64(),
            curve: self.curve,
            state: collect_state(layers, self.context.x0),
            report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_of_three_layers() {
        assert_eq!(fanout(0, 3), 1);
        assert_eq!(fanout(1, 3), 2);
        assert_eq!(fanout(2, 3), 1);
        assert_eq!(fanout(0, 1), 0);
        assert_eq!(start_messages(3), 5);
        assert_eq!(start_messages(1), 1);
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in ScheduleKind::ALL {
            assert_eq!(kind.name().parse::<ScheduleKind>(), Ok(kind));
        }
        assert_eq!(
            "jacobi".parse::<ScheduleKind>(),
            Err(ScheduleError::UnknownKind {
                name: "jacobi".to_string()
            })
        );
    }
}
