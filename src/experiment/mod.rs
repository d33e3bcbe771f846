//! The main job: train a network with the layer actors on MNIST, encode
//! training and test images at their fixed points, fit a linear readout on
//! the codes and on raw pixels, and write the run's outputs.
//!
//! Outputs in the run directory: `scenario.resolved.toml`, `summary.json`,
//! `training.csv` (one row per learning batch) and `projective_fields.png`.
//! Every exit path writes `summary.json` with a `status`, so a failed or
//! interrupted run still leaves what it measured.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array2, Axis, concatenate, s};
use serde::Serialize;
use tracing::{info, warn};

use crate::data::{Dataset, default_cache_dir, load_splits};
use crate::error::Error;
use crate::model::{Network, random_network, restrict, row_norms};
use crate::readout::{ReadoutConfig, SoftmaxReadout};
use crate::relaxation::{Outcome, RelaxReport};
use crate::report::write_projective_fields;
use crate::runtime::{ActorNetwork, BatchOptions, RuntimeConfig};
use crate::scenario::{EncodeSchedule, Scenario};
use crate::solver::Solver;
use crate::store::{MODEL_FILE, load_model, save_model};

mod convergence;
mod instruments;
mod train;

pub use convergence::ScheduleSummary;
pub use instruments::PerturbationSummary;
use train::train;

/// Tiles per row of the projective-field figure.
const FIGURE_TILES: usize = 32;

/// The end state of a run, as written to `summary.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Completed,
    Diverged,
    TooManyCapped,
    /// The run could not do its job for another reason, given in `message`.
    Failed,
    Interrupted,
}

/// Everything `summary.json` holds. Error fractions are in [0, 1].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub status: Option<Status>,
    pub ign_version: String,
    pub seed: u64,
    pub seconds: f64,
    pub train_images: usize,
    pub readout_images: usize,
    pub test_images: usize,
    pub test_error: Option<f64>,
    pub test_error_pixels: Option<f64>,
    pub relaxations: usize,
    pub updates_mean: f64,
    pub updates_max: usize,
    /// Mean updates of each layer per relaxation, layer 1 first.
    pub layer_updates_mean: Vec<f64>,
    pub max_residual: f64,
    pub max_constraint_violation: f64,
    pub messages_total: u64,
    pub relaxations_at_cap: usize,
    /// Rows (images) whose relaxation ended above the tolerance; they were
    /// still used for learning.
    pub rows_above_tolerance: usize,
    pub blank_images: usize,
    /// Per layer, units active for none of the readout images' codes.
    pub unused_units: Option<Vec<usize>>,
    /// Per layer, columns reseeded from data during training.
    pub reseeded_units: Vec<usize>,
    /// Mean `½‖x_0 − W_1 x_1‖²` over the first and the last tenth of training.
    pub reconstruction_first: Option<f64>,
    pub reconstruction_last: Option<f64>,
    /// Encoding measurements; null when the run stopped before encoding.
    pub encode_max_residual: Option<f64>,
    pub encode_rows_above_tolerance: Option<usize>,
    pub message: Option<String>,
    /// "layer", "unit" or "block of k", and how many actors that made.
    pub granularity: String,
    pub actors: usize,
    /// With `runtime.audit`: message values used in updates whose sender is
    /// not a neighbour (0 for a local network), and all values checked.
    pub non_local_reads: Option<u64>,
    pub audited_reads: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub non_local_examples: Vec<String>,
    /// Messages counted on the wires (`traffic.csv`) over the whole run.
    pub traffic_messages: u64,
    pub busiest_edge: Option<String>,
    pub perturbation: Option<PerturbationSummary>,
    /// Events kept in and dropped from the `--trace-file`, when one is written.
    pub trace_events: Option<usize>,
    pub trace_dropped: Option<usize>,
    /// The model file written (weights and the resolved scenario).
    pub model: Option<String>,
    /// With a `[convergence]` section: per schedule, how its runs ended and
    /// the median updates, messages and seconds to tolerance.
    pub convergence: Option<Vec<ScheduleSummary>>,
    /// The per-batch table written to `training.csv`.
    #[serde(skip)]
    pub training_csv: String,
}

/// Command-line settings of `ign run` besides the scenario's own keys.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub scenario: PathBuf,
    pub out: Option<PathBuf>,
    pub overrides: Vec<String>,
    pub progress: bool,
    /// Path of the Chrome trace of the training actors (or of the first
    /// seeded run, with a `[convergence]` section).
    pub trace_file: Option<PathBuf>,
}

/// Runs a scenario end to end and returns the summary written.
pub fn run(options: &RunOptions, interrupted: Arc<AtomicBool>) -> Result<Summary, Error> {
    let started = Instant::now();
    let scenario = Scenario::load(&options.scenario, &options.overrides)?;
    let out = output_dir(options);
    std::fs::create_dir_all(&out).map_err(|source| Error::OutputDir {
        path: out.clone(),
        source,
    })?;
    if let Some(path) = &options.trace_file {
        check_trace_path(path)?;
    }
    write_resolved(&out, &scenario)?;
    info!(scenario = %options.scenario.display(), out = %out.display(), "run started");

    let cache = if scenario.data.cache_dir.as_os_str().is_empty() {
        default_cache_dir()
    } else {
        scenario.data.cache_dir.clone()
    };
    let mut splits = load_splits(&scenario.data.dir, &cache)?;
    let side = scenario.data.downsample;
    if side > 0 {
        let (rows, cols) = (splits.train.rows, splits.train.cols);
        let small = splits
            .train
            .downsample(side)
            .zip(splits.test.downsample(side));
        let Some((train, test)) = small else {
            return Err(Error::Mismatch(format!(
                "{}: data.downsample = {side} is larger than the {rows}x{cols} images; use 0 \
                 (keep them) or 1 to {}",
                options.scenario.display(),
                rows.min(cols)
            )));
        };
        splits.train = train;
        splits.test = test;
    }
    check_sizes(&scenario, &splits.train, &splits.test)
        .map_err(|e| Error::Mismatch(format!("{}: {e}", options.scenario.display())))?;
    let mut summary = Summary {
        scenario: options.scenario.display().to_string(),
        ign_version: env!("CARGO_PKG_VERSION").to_owned(),
        seed: scenario.seed,
        train_images: scenario.data.train_images.min(splits.train.len()),
        readout_images: scenario.data.readout_images.min(splits.train.len()),
        test_images: scenario.data.test_images.min(splits.test.len()),
        ..Summary::default()
    };
    let requested = [
        (
            "data.train_images",
            scenario.data.train_images,
            splits.train.len(),
        ),
        (
            "data.readout_images",
            scenario.data.readout_images,
            splits.train.len(),
        ),
        (
            "data.test_images",
            scenario.data.test_images,
            splits.test.len(),
        ),
    ];
    for (key, wanted, available) in requested {
        if wanted > available {
            warn!(
                key,
                requested = wanted,
                available,
                "fewer images than requested; using all"
            );
        }
    }

    check_memory(&scenario.network.layers)?;
    let mut network: Network<f32> = random_network(
        &scenario.network.layers,
        &scenario.alpha_per_layer(),
        scenario.network.init,
        scenario.seed,
    );
    let sizes = &scenario.network.layers;
    let masks: Vec<_> = scenario
        .connectivity()
        .iter()
        .enumerate()
        .map(|(i, c)| c.mask(sizes[i], sizes[i + 1]))
        .collect();
    restrict(&mut network, &masks);
    let saved_model = scenario
        .convergence
        .as_ref()
        .map(|c| c.model.clone())
        .filter(|m| !m.as_os_str().is_empty());
    let trained = match &saved_model {
        Some(path) => {
            let model = load_model(path)?;
            if model.network.sizes() != *sizes {
                return Err(Error::Mismatch(format!(
                    "convergence.model {} has layers {:?} but network.layers is {:?}",
                    path.display(),
                    model.network.sizes(),
                    sizes
                )));
            }
            info!(model = %path.display(), "using saved weights; not training");
            summary.model = Some(path.display().to_string());
            Ok(Some(model.network))
        }
        None => {
            // With a comparison to follow, the trace file records the first
            // seeded run in virtual time instead of the training actors.
            let mut training = options.clone();
            if scenario.convergence.is_some() {
                training.trace_file = None;
            }
            train(
                &scenario,
                &splits.train,
                network,
                &mut summary,
                &interrupted,
                &training,
                &out,
            )?
        }
    };
    let (network, status) = match trained {
        Ok(network) => (network, None),
        Err((network, status, message)) => (network, Some((status, message))),
    };
    if let Some(network) = &network {
        write_figure(&out, network, None)?;
    }
    if let Some((status, message)) = status {
        return finish(&out, summary, started, status, Some(message));
    }
    let Some(network) = network else {
        return finish(
            &out,
            summary,
            started,
            Status::Diverged,
            Some("no weights".into()),
        );
    };
    if saved_model.is_none() {
        // The model is saved and read back, so the weights every later
        // phase uses are exactly those in the file.
        let path = out.join(MODEL_FILE);
        let saved = save_model(&path, &network, &scenario).and_then(|()| load_model(&path));
        match saved {
            Ok(model) if model.network.weights == network.weights => {
                summary.model = Some(path.display().to_string());
            }
            Ok(_) => {
                let message = format!("{} did not read back as written", path.display());
                return finish(&out, summary, started, Status::Failed, Some(message));
            }
            Err(e) => return finish(&out, summary, started, Status::Failed, Some(e.to_string())),
        }
    }

    if let Some(settings) = &scenario.convergence {
        let compared = convergence::run(
            &scenario,
            settings,
            &network,
            &splits.test,
            &out,
            &interrupted,
            options,
        )?;
        return match compared {
            Some((schedules, trace)) => {
                summary.convergence = Some(schedules);
                if let Some((events, dropped)) = trace {
                    summary.trace_events = Some(events);
                    summary.trace_dropped = Some(dropped);
                }
                finish(&out, summary, started, Status::Completed, None)
            }
            None => finish(&out, summary, started, Status::Interrupted, None),
        };
    }

    info!(
        images = summary.readout_images + summary.test_images,
        "encoding"
    );
    let train_part = splits.train.take(summary.readout_images);
    let test_part = splits.test.take(summary.test_images);
    let encoded = encode(
        &scenario,
        &network,
        &train_part,
        &test_part,
        &interrupted,
        options,
    );
    let (train_codes, test_codes, encode_report) = match encoded {
        Ok(Some(codes)) => codes,
        Ok(None) => return finish(&out, summary, started, Status::Interrupted, None),
        Err(message) => return finish(&out, summary, started, Status::Diverged, Some(message)),
    };
    summary.encode_max_residual = Some(encode_report.0);
    summary.encode_rows_above_tolerance = Some(encode_report.1);
    summary.unused_units = Some(unused_units(&train_codes, &scenario.network.layers));
    write_figure(&out, &network, Some(&train_codes))?;

    info!("fitting readouts");
    let config = readout_config(&scenario);
    let errors = (|| {
        let readout = SoftmaxReadout::fit(train_codes.view(), &train_part.labels, 10, &config)?;
        let codes = readout.try_error_rate(test_codes.view(), &test_part.labels)?;
        let images = train_part.images.view();
        let pixels = SoftmaxReadout::fit(images, &train_part.labels, 10, &config)?;
        let raw = pixels.try_error_rate(test_part.images.view(), &test_part.labels)?;
        Ok::<_, crate::readout::ReadoutError>((codes, raw))
    })();
    match errors {
        Ok((codes, raw)) => {
            summary.test_error = Some(codes);
            summary.test_error_pixels = Some(raw);
        }
        Err(e) => {
            let message = format!("readout failed: {e}");
            return finish(&out, summary, started, Status::Failed, Some(message));
        }
    }
    info!(
        test_error = summary.test_error,
        test_error_pixels = summary.test_error_pixels,
        "readouts fitted"
    );
    finish(&out, summary, started, Status::Completed, None)
}

fn output_dir(options: &RunOptions) -> PathBuf {
    options.out.clone().unwrap_or_else(|| {
        let stem = options
            .scenario
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        PathBuf::from("runs").join(stem)
    })
}

/// Checks before any work that a trace file can be created at `path`.
fn check_trace_path(path: &Path) -> Result<(), Error> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let reason = if path.is_dir() {
        Some("it is a directory")
    } else if !parent.is_dir() {
        Some("its directory does not exist")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::Mismatch(format!(
            "--trace-file {}: cannot write there, {reason}",
            path.display()
        ))),
        None => Ok(()),
    }
}

fn check_sizes(scenario: &Scenario, train: &Dataset, test: &Dataset) -> Result<(), Error> {
    let pixels = train.rows * train.cols;
    if scenario.network.layers[0] != pixels {
        return Err(Error::Mismatch(format!(
            "network.layers starts with {} but the images have {} pixels ({}x{}); set the first \
             size to {}, or data.downsample to shrink the images",
            scenario.network.layers[0], pixels, train.rows, train.cols, pixels
        )));
    }
    if train.is_empty() || test.is_empty() {
        return Err(Error::Mismatch(
            "the data directory contains no images".into(),
        ));
    }
    Ok(())
}

/// Checks that the weight matrices can be allocated, so that a huge layer is
/// an error naming `network.layers` and not an abort.
fn check_memory(sizes: &[usize]) -> Result<(), Error> {
    for pair in sizes.windows(2) {
        let entries = pair[0].checked_mul(pair[1]);
        let mut probe: Vec<f32> = Vec::new();
        // Reserving address space touches no memory; the matrix itself is
        // allocated right after, so the probe is dropped at once.
        let fits = entries.is_some_and(|n| probe.try_reserve_exact(n).is_ok());
        if !fits {
            return Err(Error::Mismatch(format!(
                "network.layers: a {}x{} weight matrix ({} bytes) cannot be allocated; use smaller layers",
                pair[0],
                pair[1],
                entries.map_or_else(|| "too many".to_owned(), |n| (n as u128 * 4).to_string())
            )));
        }
    }
    Ok(())
}

/// Scales every image to unit L2 norm; an all-zero image stays zero.
pub fn unit_rows(images: &Array2<f32>) -> Array2<f32> {
    let norms = row_norms(images.view());
    let mut out = images.clone();
    for (mut row, &n) in out.rows_mut().into_iter().zip(&norms) {
        if n > 0.0 {
            row.mapv_inplace(|v| v / n);
        }
    }
    out
}

type Codes = (Array2<f32>, Array2<f32>, (f64, usize));

/// Encodes the readout and test images; `None` when interrupted.
fn encode(
    scenario: &Scenario,
    network: &Network<f32>,
    train_part: &Dataset,
    test_part: &Dataset,
    interrupted: &AtomicBool,
    options: &RunOptions,
) -> Result<Option<Codes>, String> {
    let batch = scenario.encode.batch_size;
    let total = (train_part.len().div_ceil(batch) + test_part.len().div_ceil(batch)) as u64;
    let bar = progress(options.progress, total, "encode");
    let mut worst = (0.0f64, 0usize);
    let mut codes = Vec::new();
    let mut encoder = Encoder::new(scenario, network);
    for set in [train_part, test_part] {
        let mut parts = Vec::new();
        for start in (0..set.len()).step_by(batch) {
            if interrupted.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let end = (start + batch).min(set.len());
            let x0 = unit_rows(&set.images.slice(s![start..end, ..]).to_owned());
            let (code, report) = encoder.encode(x0)?;
            if report.outcome == Outcome::Diverged {
                return Err(format!(
                    "encoding diverged at image {start} (residual {:.3e}); lower relax.step_scale",
                    report.max_residual
                ));
            }
            worst.0 = worst.0.max(report.max_residual);
            worst.1 += report.rows_above_tolerance;
            parts.push(code);
            bar.inc(1);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        codes.push(concatenate(Axis(0), &views).unwrap_or_default());
    }
    bar.finish_and_clear();
    let test_codes = codes.pop().unwrap_or_default();
    let train_codes = codes.pop().unwrap_or_default();
    Ok(Some((train_codes, test_codes, worst)))
}

/// Computes fixed-point codes `[x_1 | x_2 | …]` with the configured schedule.
enum Encoder {
    Synchronous(Solver<f32>),
    Actors(Box<ActorNetwork<f32>>),
}

impl Encoder {
    fn new(scenario: &Scenario, network: &Network<f32>) -> Self {
        let relax = scenario.relax.config();
        if scenario.encode.schedule == EncodeSchedule::Actors {
            let config = RuntimeConfig {
                relax,
                timeout: Duration::from_secs_f64(scenario.relax.timeout_seconds),
                workers: scenario.runtime.workers,
                delay: None,
                ..Default::default()
            };
            if let Ok(actors) = ActorNetwork::spawn(network, config) {
                return Encoder::Actors(Box::new(actors));
            }
            warn!("could not start the actors for encoding; using the synchronous solver");
        }
        Encoder::Synchronous(Solver::new(network, relax))
    }

    fn encode(&mut self, x0: Array2<f32>) -> Result<(Array2<f32>, RelaxReport), String> {
        match self {
            Encoder::Synchronous(solver) => {
                let report = solver.relax(x0.view());
                let states: Vec<_> = solver.layers.iter().map(|l| l.x.view()).collect();
                let codes = concatenate(Axis(1), &states).map_err(|e| e.to_string())?;
                Ok((codes, report))
            }
            Encoder::Actors(actors) => {
                let options = BatchOptions {
                    rate: 0.0,
                    reseed: false,
                    return_state: true,
                };
                let result = actors.run_batch(x0, options).map_err(|e| e.to_string())?;
                let views: Vec<_> = result
                    .layers
                    .iter()
                    .filter_map(|l| l.state.as_ref().map(|s| s.view()))
                    .collect();
                let codes = concatenate(Axis(1), &views).map_err(|e| e.to_string())?;
                Ok((codes, result.report))
            }
        }
    }
}

fn unused_units(codes: &Array2<f32>, sizes: &[usize]) -> Vec<usize> {
    let mut offset = 0;
    sizes[1..]
        .iter()
        .map(|&n| {
            let block = codes.slice(s![.., offset..offset + n]);
            offset += n;
            block
                .columns()
                .into_iter()
                .filter(|c| c.iter().all(|&v| v <= 0.0))
                .count()
        })
        .collect()
}

fn readout_config(scenario: &Scenario) -> ReadoutConfig {
    ReadoutConfig {
        epochs: scenario.readout.epochs,
        learning_rate: scenario.readout.learning_rate as f32,
        l2: scenario.readout.l2 as f32,
        batch_size: scenario.readout.batch_size,
        seed: scenario.seed,
    }
}

/// Draws the 32 most used units of each layer (by the codes, when given).
fn write_figure(
    out: &Path,
    network: &Network<f32>,
    codes: Option<&Array2<f32>>,
) -> Result<(), Error> {
    let w1 = &network.weights[0];
    let mut bands = vec![w1.clone()];
    if let Some(w2) = network.weights.get(1) {
        bands.push(w1.dot(w2));
    }
    let mut offset = 0;
    let columns: Vec<Vec<usize>> = bands
        .iter()
        .map(|band| {
            let n = band.ncols();
            let mut order: Vec<usize> = (0..n).collect();
            if let Some(codes) = codes {
                let usage: Vec<f32> = (0..n).map(|k| codes.column(offset + k).sum()).collect();
                order.sort_by(|&a, &b| usage[b].total_cmp(&usage[a]));
            }
            offset += n;
            order.truncate(FIGURE_TILES);
            order
        })
        .collect();
    let side = (w1.nrows() as f64).sqrt() as usize;
    let views: Vec<_> = bands.iter().map(|b| b.view()).collect();
    let path = out.join("projective_fields.png");
    write_projective_fields(&path, &views, &columns, side, w1.nrows() / side.max(1), 2)?;
    Ok(())
}

fn finish(
    out: &Path,
    mut summary: Summary,
    started: Instant,
    status: Status,
    message: Option<String>,
) -> Result<Summary, Error> {
    summary.seconds = started.elapsed().as_secs_f64();
    summary.status = Some(status);
    summary.message = message;
    write_summary(out, &summary)?;
    info!(status = ?status, seconds = summary.seconds, out = %out.display(), "run finished");
    match status {
        Status::Completed => Ok(summary),
        Status::Interrupted => Err(Error::Interrupted),
        Status::Diverged | Status::TooManyCapped | Status::Failed => {
            Err(Error::Failed(summary.message.clone().unwrap_or_default()))
        }
    }
}

fn write_resolved(out: &Path, scenario: &Scenario) -> Result<(), Error> {
    let mut resolved = scenario.clone();
    resolved.ign_version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let text = toml::to_string_pretty(&resolved).map_err(|e| Error::Mismatch(e.to_string()))?;
    write_atomic(&out.join("scenario.resolved.toml"), text.as_bytes())
}

fn write_summary(out: &Path, summary: &Summary) -> Result<(), Error> {
    let json = serde_json::to_string_pretty(summary).map_err(|e| Error::Mismatch(e.to_string()))?;
    write_atomic(&out.join("summary.json"), json.as_bytes())?;
    write_atomic(&out.join("training.csv"), summary.training_csv.as_bytes())
}

/// Writes a file through a temporary name and a rename, so a reader never
/// sees half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    result.map_err(|source| Error::Output {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn progress(enabled: bool, total: u64, label: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix:>7} [{elapsed_precise}] {bar:30} {pos}/{len} batches, eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

pub(crate) fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

pub(crate) fn mean_usize(values: &[usize]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<usize>() as f64 / values.len() as f64
    }
}
