//! The training phase of the main job: mini-batches relaxed by the layer
//! actors, equation 1 applied at each detected output state, and the
//! per-batch bookkeeping that `summary.json` and `training.csv` report.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ndarray::{Array2, s};
use tracing::{debug, info};

use super::{RunOptions, Status, Summary, instruments, mean, mean_usize, progress, unit_rows};
use crate::data::Dataset;
use crate::error::Error;
use crate::learn::{UsageWindow, reseed_unused};
use crate::model::Network;
use crate::quiescence::Detection;
use crate::relaxation::{Outcome, RelaxReport};
use crate::runtime::{
    ActorNetwork, BatchOptions, BatchResult, Connectivity, LayerSummary, RuntimeConfig,
};
use crate::scenario::{Scenario, TrainSchedule};
use crate::solver::Solver;
use crate::trace::{AuditResult, TraceRecorder, merge};

/// The last good weights (if any), the status and a message.
pub(super) type TrainFailure = (Option<Network<f32>>, Status, String);

/// Trains with the actors, then runs the locality instruments on them.
/// The outer error is a file that could not be written; the inner one a
/// failed training, with the last good weights, the status and a message.
pub(super) fn train(
    scenario: &Scenario,
    train_set: &Dataset,
    network: Network<f32>,
    summary: &mut Summary,
    interrupted: &AtomicBool,
    options: &RunOptions,
    out: &Path,
) -> Result<Result<Option<Network<f32>>, TrainFailure>, Error> {
    if scenario.train.schedule == TrainSchedule::Synchronous {
        let trained =
            train_synchronous(scenario, train_set, network, summary, interrupted, options);
        return Ok(trained);
    }
    let t = &scenario.train;
    let images = summary.train_images;
    let batches_per_epoch = images.div_ceil(t.batch_size);
    let total = batches_per_epoch * t.epochs;
    let trace = options
        .trace_file
        .as_ref()
        .map(|_| Arc::new(TraceRecorder::new(scenario.runtime.trace_limit)));
    let config = RuntimeConfig {
        relax: scenario.relax.config(),
        timeout: Duration::from_secs_f64(scenario.relax.timeout_seconds),
        workers: scenario.runtime.workers,
        delay: None,
        granularity: scenario.granularity(),
        connectivity: scenario.connectivity(),
        audit: scenario.runtime.audit,
        trace: trace.clone(),
        planted: Vec::new(),
    };
    let mut actors = match ActorNetwork::spawn(&network, config) {
        Ok(actors) => actors,
        Err(e) => return Ok(Err((Some(network), Status::Diverged, e.to_string()))),
    };
    summary.granularity = scenario.granularity().to_string();
    summary.actors = actors.topology.roles.len();
    let mut audit = scenario.runtime.audit.then(AuditResult::default);
    info!(
        batches = total,
        batch_size = t.batch_size,
        granularity = %summary.granularity,
        actors = summary.actors,
        "training with actors"
    );
    let bar = progress(options.progress, total as u64, "train");
    let stats = actors.stats();
    let traffic = actors.traffic();
    let mut log = TrainingLog::new(network.weights.clone());
    summary.reseeded_units = vec![0; network.weights.len()];
    let started = Instant::now();
    let mut failure = None;
    'epochs: for epoch in 0..t.epochs {
        for b in 0..batches_per_epoch {
            if interrupted.load(Ordering::SeqCst) {
                failure = Some((Status::Interrupted, "interrupted".to_owned()));
                break 'epochs;
            }
            let k = epoch * batches_per_epoch + b;
            let rows = b * t.batch_size..((b + 1) * t.batch_size).min(images);
            let x0 = unit_rows(&train_set.images.slice(s![rows, ..]).to_owned());
            let rate = t.learning_rate / (1.0 + k as f64 / t.rate_decay_batches);
            let reseed = t.reseed_every > 0 && (k + 1).is_multiple_of(t.reseed_every);
            let batch_options = BatchOptions {
                rate,
                reseed,
                return_state: false,
            };
            let result = match actors.run_batch(x0, batch_options) {
                Ok(result) => result,
                Err(e) => {
                    failure = Some((Status::Diverged, format!("batch {k} failed: {e}")));
                    break 'epochs;
                }
            };
            if let Some(total) = audit.as_mut() {
                merge(total, crate::trace::audit(&actors.topology, &result.actors));
            }
            let diverged = divergence(k, &result);
            log.record(k, rate, &result, summary, diverged.is_none());
            if let Some(message) = diverged {
                failure = Some((Status::Diverged, message));
                break 'epochs;
            }

            let sent: u64 = stats.iter().map(|e| e.sent).sum();
            let seconds = started.elapsed().as_secs_f64().max(1e-9);
            let busiest = traffic
                .iter()
                .max_by_key(|e| e.messages)
                .and_then(|e| actors.wires.get(*e.key()).copied());
            let busiest = busiest.map_or_else(String::new, |edge| {
                format!(
                    ", busiest {} -> {}",
                    actors.topology.roles[edge.from], actors.topology.roles[edge.to]
                )
            });
            bar.set_message(format!(
                "{:.0} msg/s, {:.0} updates/relaxation{busiest}",
                sent as f64 / seconds,
                mean_usize(&log.updates)
            ));
            bar.inc(1);
            if let Some(message) = too_many_capped(scenario, summary, total) {
                failure = Some((Status::TooManyCapped, message));
                break 'epochs;
            }
        }
    }
    bar.finish_and_clear();
    if let (None, Some(settings)) = (&failure, &scenario.perturbation) {
        match instruments::perturbation(&mut actors, settings, train_set, out) {
            Ok(result) => summary.perturbation = Some(result),
            Err(message) => failure = Some((Status::Failed, message)),
        }
    }
    if let Some(total) = audit {
        summary.non_local_reads = Some(total.non_local_reads);
        summary.audited_reads = Some(total.reads);
        summary.non_local_examples = total.examples;
    }
    instruments::write_traffic(&actors, out, summary)?;
    if let (Some(recorder), Some(path)) = (&trace, &options.trace_file) {
        instruments::write_trace(recorder, path, &actors.topology.names(), summary)?;
    }
    actors.shutdown();
    if failure.is_none()
        && summary.relaxations > 0
        && summary.blank_images == summary.train_images * t.epochs
    {
        let message = format!(
            "all {} training images are blank (all zero), so nothing was learned; check --data",
            summary.train_images
        );
        failure = Some((Status::Failed, message));
    }
    let trained = log.finish(summary, network.alpha.clone());
    info!(
        relaxations = summary.relaxations,
        updates_mean = summary.updates_mean,
        at_cap = summary.relaxations_at_cap,
        seconds = started.elapsed().as_secs_f64(),
        "training done"
    );
    Ok(match failure {
        None => Ok(Some(trained)),
        Some((status, message)) => Err((Some(trained), status, message)),
    })
}

/// Trains with the synchronous solver instead of the actors: every layer
/// steps on a global clock, so the same seed always gives the same weights.
/// Equation 1 and reseeding are the same as the actors'.
fn train_synchronous(
    scenario: &Scenario,
    train_set: &Dataset,
    network: Network<f32>,
    summary: &mut Summary,
    interrupted: &AtomicBool,
    options: &RunOptions,
) -> Result<Option<Network<f32>>, TrainFailure> {
    let t = &scenario.train;
    let images = summary.train_images;
    let batches_per_epoch = images.div_ceil(t.batch_size);
    let total = batches_per_epoch * t.epochs;
    let mut solver = Solver::new(&network, scenario.relax.config());
    let sizes = &scenario.network.layers;
    for (i, (layer, connectivity)) in solver
        .layers
        .iter_mut()
        .zip(scenario.connectivity())
        .enumerate()
    {
        if connectivity != Connectivity::Dense {
            let mask = connectivity.mask(sizes[i], sizes[i + 1]);
            layer.mask = Some(mask.mapv(|m| if m { 1.0 } else { 0.0 }));
        }
    }
    summary.granularity = "synchronous solver".to_owned();
    info!(
        batches = total,
        batch_size = t.batch_size,
        "training with the synchronous solver"
    );
    let bar = progress(options.progress, total as u64, "train");
    let mut log = TrainingLog::new(network.weights.clone());
    let mut windows: Vec<UsageWindow> = network
        .weights
        .iter()
        .map(|w| UsageWindow::new(w.ncols()))
        .collect();
    summary.reseeded_units = vec![0; network.weights.len()];
    let mut failure = None;
    'epochs: for epoch in 0..t.epochs {
        for b in 0..batches_per_epoch {
            if interrupted.load(Ordering::SeqCst) {
                failure = Some((Status::Interrupted, "interrupted".to_owned()));
                break 'epochs;
            }
            let k = epoch * batches_per_epoch + b;
            let rows = b * t.batch_size..((b + 1) * t.batch_size).min(images);
            let x0 = unit_rows(&train_set.images.slice(s![rows, ..]).to_owned());
            let rate = t.learning_rate / (1.0 + k as f64 / t.rate_decay_batches);
            let reseed = t.reseed_every > 0 && (k + 1).is_multiple_of(t.reseed_every);
            let report = solver.relax(x0.view());
            let result = synchronous_batch(&mut solver, &mut windows, report, rate, reseed);
            let diverged = divergence(k, &result);
            log.record(k, rate, &result, summary, diverged.is_none());
            if let Some(message) = diverged {
                failure = Some((Status::Diverged, message));
                break 'epochs;
            }
            bar.set_message(format!(
                "{:.0} updates/relaxation",
                mean_usize(&log.updates)
            ));
            bar.inc(1);
            if let Some(message) = too_many_capped(scenario, summary, total) {
                failure = Some((Status::TooManyCapped, message));
                break 'epochs;
            }
        }
    }
    bar.finish_and_clear();
    let trained = log.finish(summary, network.alpha.clone());
    info!(
        relaxations = summary.relaxations,
        updates_mean = summary.updates_mean,
        "training done"
    );
    match failure {
        None => Ok(Some(trained)),
        Some((status, message)) => Err((Some(trained), status, message)),
    }
}

/// Learns from the solver's last relaxation and describes it the way the
/// actors describe a batch.
fn synchronous_batch(
    solver: &mut Solver<f32>,
    windows: &mut [UsageWindow],
    report: RelaxReport,
    rate: f64,
    reseed: bool,
) -> BatchResult<f32> {
    let rows = solver.input.nrows();
    let mut layers = Vec::new();
    for (i, eval) in solver.evals.iter().enumerate() {
        let layer = &solver.layers[i];
        let below = if i == 0 {
            &solver.input
        } else {
            &solver.layers[i - 1].x
        };
        let r = below - &eval.prediction;
        layers.push(LayerSummary {
            layer: i + 1,
            updates: report.layer_updates.get(i).copied().unwrap_or(0),
            outcome: report.outcome,
            row_residual: eval.row_residual.iter().map(|&v| f64::from(v)).collect(),
            max_constraint_violation: f64::from(eval.constraint.fold(0.0f32, |m, &v| m.max(v))),
            usage: layer.usage().to_vec(),
            blank_rows: layer.blank.iter().filter(|&&b| b).count(),
            zero_columns: Vec::new(),
            reseeded: Vec::new(),
            reconstruction: r
                .rows()
                .into_iter()
                .map(|row| 0.5 * f64::from(row.dot(&row)))
                .collect(),
            state: None,
            lambda: None,
            weights: None,
            report: Default::default(),
        });
    }
    if rate > 0.0 && report.outcome != Outcome::Diverged {
        let zero = solver.learn(rate);
        for (i, columns) in zero.into_iter().enumerate() {
            layers[i].zero_columns = columns;
            let usage = solver.layers[i].usage();
            windows[i].add(&usage, rows);
            if reseed {
                let unused = windows[i].unused();
                let residual = solver.evals[i].residual.view();
                layers[i].reseeded = reseed_unused(&mut solver.layers[i], residual, &unused);
                windows[i].reset();
            }
        }
    }
    for (summary, layer) in layers.iter_mut().zip(&solver.layers) {
        summary.weights = Some(Arc::new(layer.w.clone()));
    }
    BatchResult {
        report,
        detection: Detection {
            waves: 0,
            messages: 0,
        },
        layers,
        actors: Vec::new(),
        lambda: ndarray::Array1::zeros(0),
    }
}

/// Returns why a batch counts as diverged, if it does: a diverged
/// relaxation, or a reconstruction error or weights that are not finite.
fn divergence(k: usize, result: &BatchResult<f32>) -> Option<String> {
    let report = &result.report;
    debug!(batch = k, updates = report.updates(), messages = report.messages,
        residual = report.max_residual, outcome = ?report.outcome, "relaxation");
    if report.outcome == Outcome::Diverged {
        return Some(format!(
            "training diverged at batch {k} (residual {:.3e}); lower relax.step_scale or \
             train.learning_rate",
            report.max_residual
        ));
    }
    let reconstruction_finite = mean(&result.layers[0].reconstruction).is_finite();
    let weights_finite = result.layers.iter().all(|l| {
        l.weights
            .as_ref()
            .is_none_or(|w| w.iter().all(|v| v.is_finite()))
    });
    if !(reconstruction_finite && weights_finite) {
        return Some(format!(
            "training diverged at batch {k}: weights became NaN or infinite; lower \
             train.learning_rate"
        ));
    }
    None
}

/// Returns the failure message once more relaxations reached the cap than
/// `train.max_capped_fraction` of the planned ones allows.
fn too_many_capped(scenario: &Scenario, summary: &Summary, total: usize) -> Option<String> {
    let fraction = scenario.train.max_capped_fraction;
    let limit = (fraction * total as f64).floor() as usize;
    (summary.relaxations_at_cap > limit).then(|| {
        format!(
            "{} of {} relaxations reached relax.max_steps = {} (limit {:.0}% of {total}); raise \
             relax.max_steps or relax.tolerance",
            summary.relaxations_at_cap,
            summary.relaxations,
            scenario.relax.max_steps,
            fraction * 100.0
        )
    })
}

/// Per-batch records of the training phase.
struct TrainingLog {
    /// The newest weights each layer reported, layer 1 first.
    weights: Vec<Array2<f32>>,
    /// Layer updates of every relaxation (all layers summed).
    updates: Vec<usize>,
    /// Per layer, the updates summed over all relaxations.
    layer_updates: Vec<usize>,
    /// Mean `½‖x_0 − W_1 x_1‖²` of every batch.
    reconstruction: Vec<f64>,
    csv: String,
}

impl TrainingLog {
    fn new(weights: Vec<Array2<f32>>) -> Self {
        let layers = weights.len();
        TrainingLog {
            weights,
            updates: Vec::new(),
            layer_updates: vec![0; layers],
            reconstruction: Vec::new(),
            csv: String::from("batch,rate,updates,messages,max_residual,outcome,reconstruction\n"),
        }
    }

    /// Adds one finished batch to the log and to the summary's counters.
    /// The batch's weights replace the kept ones only when `keep_weights`,
    /// so a diverged batch is counted but its weights are not kept.
    fn record(
        &mut self,
        k: usize,
        rate: f64,
        result: &BatchResult<f32>,
        summary: &mut Summary,
        keep_weights: bool,
    ) {
        for (i, layer) in result.layers.iter().enumerate() {
            if let Some(w) = layer.weights.as_ref().filter(|_| keep_weights) {
                self.weights[i] = (**w).clone();
            }
            self.layer_updates[i] += layer.updates;
            summary.reseeded_units[i] += layer.reseeded.len();
        }
        let report = &result.report;
        add_report(summary, report);
        let reconstruction = mean(&result.layers[0].reconstruction);
        self.updates.push(report.updates());
        self.reconstruction.push(reconstruction);
        self.csv.push_str(&format!(
            "{k},{rate},{},{},{},{:?},{reconstruction}\n",
            report.updates(),
            report.messages,
            report.max_residual,
            report.outcome
        ));
    }

    /// Writes the aggregates into the summary and returns the trained network.
    fn finish(self, summary: &mut Summary, alpha: Vec<f32>) -> Network<f32> {
        let relaxations = self.updates.len().max(1) as f64;
        summary.updates_mean = mean_usize(&self.updates);
        summary.updates_max = self.updates.iter().copied().max().unwrap_or(0);
        summary.layer_updates_mean = self
            .layer_updates
            .iter()
            .map(|&u| u as f64 / relaxations)
            .collect();
        if !self.reconstruction.is_empty() {
            let tenth = (self.reconstruction.len() / 10).max(1);
            let last = self.reconstruction.len() - tenth;
            summary.reconstruction_first = Some(mean(&self.reconstruction[..tenth]));
            summary.reconstruction_last = Some(mean(&self.reconstruction[last..]));
        }
        summary.training_csv = self.csv;
        Network {
            weights: self.weights,
            alpha,
        }
    }
}

fn add_report(summary: &mut Summary, report: &RelaxReport) {
    summary.relaxations += 1;
    summary.messages_total += report.messages;
    summary.max_residual = summary.max_residual.max(report.max_residual);
    summary.max_constraint_violation = summary
        .max_constraint_violation
        .max(report.max_constraint_violation);
    summary.rows_above_tolerance += report.rows_above_tolerance;
    summary.blank_images += report.blank_rows;
    if report.outcome == Outcome::Capped {
        summary.relaxations_at_cap += 1;
    }
}
