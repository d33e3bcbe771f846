//! The synchronous-versus-asynchronous experiment: the same images relaxed
//! under every schedule (synchronous clock, sequential sweep, free-running
//! tokio actors, seeded asynchronous simulation) for trained and random
//! weights, across message-latency spreads and step sizes. It writes
//! `convergence.csv` (one row per measured point), `convergence.png` and the
//! per-schedule medians that `summary.json` reports.
//!
//! Invariant: every schedule starts each image from the same feed-forward
//! state and is compared with the synchronous solver's fixed point for the
//! same weights and step size. Apart from the tokio rows and the wall-clock
//! column, the CSV is a function of the scenario and its seed alone.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ndarray::{Array2, s};
use serde::Serialize;
use tracing::info;

use super::{RunOptions, progress, unit_rows, write_atomic};
use crate::data::Dataset;
use crate::error::Error;
use crate::model::{Network, State, energies, random_network, restrict};
use crate::relaxation::{Outcome, RelaxConfig};
use crate::report::{PlotSpec, Series, write_line_plot};
use crate::runtime::{ActorNetwork, BatchOptions, DelayConfig, RuntimeConfig};
use crate::scenario::{ConvergenceSection, Scenario};
use crate::schedule::{ScheduleKind, SeededConfig, Verdict, run_schedule, run_seeded_traced};
use crate::solver::Solver;
use crate::trace::{Clock, TraceRecorder};

/// Header of `convergence.csv`.
pub const CSV_HEADER: &str = "schedule,seed,weights,image,latency_spread,step_size,update,messages,potential,residual,outcome,wall_seconds,distance,time";

/// Per schedule, how fast the runs that converged did so.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScheduleSummary {
    pub schedule: String,
    pub runs: usize,
    pub converged: usize,
    pub oscillating: usize,
    pub diverged: usize,
    pub capped: usize,
    /// Medians over the converged runs; null when none converged.
    pub median_updates: Option<f64>,
    pub median_messages: Option<f64>,
    pub median_wall_seconds: Option<f64>,
    /// Largest distance from the synchronous solver's fixed point over the
    /// converged runs.
    pub max_distance: Option<f64>,
}

/// One schedule run, as the CSV and the summary see it.
struct Record {
    schedule: &'static str,
    seed: Option<u64>,
    weights: &'static str,
    image: usize,
    spread: Option<f64>,
    step: f64,
    /// (update, messages, potential, residual, time) per measured point.
    points: Vec<(usize, u64, f64, f64, f64)>,
    outcome: &'static str,
    wall_seconds: f64,
    distance: Option<f64>,
}

/// Runs the experiment on the first `images` test images and writes its
/// files into `out`. Returns `None` when interrupted.
pub(super) fn run(
    scenario: &Scenario,
    settings: &ConvergenceSection,
    trained: &Network<f32>,
    test_set: &Dataset,
    out: &Path,
    interrupted: &AtomicBool,
    options: &RunOptions,
) -> Result<Option<Compared>, Error> {
    let show_progress = options.progress;
    let trace = options
        .trace_file
        .as_ref()
        .map(|_| TraceRecorder::with_clock(scenario.runtime.trace_limit, Clock::Virtual));
    let mut traced = false;
    let images = settings.images.min(test_set.len());
    if images < settings.images {
        tracing::warn!(
            key = "convergence.images",
            requested = settings.images,
            available = test_set.len(),
            "fewer test images than requested; using all"
        );
    }
    let x0 = unit_rows(&test_set.images.slice(s![..images, ..]).to_owned()).mapv(f64::from);
    let mut weights: Vec<(&'static str, Network<f64>)> = Vec::new();
    for name in &settings.weights {
        match name.as_str() {
            "trained" => weights.push(("trained", trained.cast())),
            _ => weights.push(("random", random_weights(scenario))),
        }
    }
    let kinds: Vec<&str> = settings.schedules.iter().map(String::as_str).collect();
    let cells = weights.len() * settings.step_size.len() * images;
    let bar = progress(show_progress, cells as u64, "compare");
    info!(
        images,
        schedules = kinds.len(),
        spreads = settings.latency_spread.len(),
        steps = settings.step_size.len(),
        "comparing schedules"
    );
    let mut records = Vec::new();
    for (label, network) in &weights {
        for &step in &settings.step_size {
            let relax = RelaxConfig {
                step_scale: step,
                ..scenario.relax.config()
            };
            let mut tokio_runs: Vec<Option<ActorNetwork<f64>>> = Vec::new();
            if kinds.contains(&"tokio") {
                for (k, &spread) in settings.latency_spread.iter().enumerate() {
                    let delay = (spread > 0.0).then(|| DelayConfig {
                        max: Duration::from_secs_f64(spread * settings.tokio_delay_us * 1e-6),
                        seed: scenario.seed + k as u64,
                    });
                    let config = RuntimeConfig {
                        relax,
                        timeout: Duration::from_secs_f64(settings.max_wall_seconds),
                        workers: scenario.runtime.workers,
                        delay,
                        ..Default::default()
                    };
                    tokio_runs.push(ActorNetwork::spawn(network, config).ok());
                }
            }
            for image in 0..images {
                if interrupted.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                let x = x0.slice(s![image..image + 1, ..]);
                let mut solver = Solver::new(network, relax);
                let reference = solver.relax(x);
                let fixed_point = (reference.outcome == Outcome::Converged).then(|| {
                    solver
                        .layers
                        .iter()
                        .map(|l| l.x.clone())
                        .collect::<Vec<_>>()
                });
                let distance = |state: &State<f64>| {
                    fixed_point.as_ref().map(|fixed| {
                        fixed
                            .iter()
                            .zip(&state.x[1..])
                            .map(|(a, b)| max_difference(a, b))
                            .fold(0.0, f64::max)
                    })
                };
                let cell = |schedule, seed, spread| Record {
                    schedule,
                    seed,
                    weights: label,
                    image,
                    spread,
                    step,
                    points: Vec::new(),
                    outcome: "capped",
                    wall_seconds: 0.0,
                    distance: None,
                };
                for &kind in &kinds {
                    let simulated = match kind {
                        "synchronous" => Some(ScheduleKind::Synchronous),
                        "sequential" => Some(ScheduleKind::Sequential),
                        "seeded" => Some(ScheduleKind::Seeded),
                        _ => None,
                    };
                    let Some(kind) = simulated else { continue };
                    let spreads: Vec<Option<f64>> = if kind == ScheduleKind::Seeded {
                        settings.latency_spread.iter().map(|&s| Some(s)).collect()
                    } else {
                        vec![None]
                    };
                    let seeds: Vec<Option<u64>> = if kind == ScheduleKind::Seeded {
                        (0..settings.seeds as u64)
                            .map(|k| Some(scenario.seed + k))
                            .collect()
                    } else {
                        vec![None]
                    };
                    for &spread in &spreads {
                        for &seed in &seeds {
                            let seeded = SeededConfig {
                                seed: seed.unwrap_or(scenario.seed),
                                latency_mean: settings.latency_mean,
                                latency_spread: spread.unwrap_or(0.0),
                                speeds: settings.speeds.clone(),
                                max_wall_seconds: settings.max_wall_seconds,
                            };
                            let run = match &trace {
                                Some(recorder) if kind == ScheduleKind::Seeded && !traced => {
                                    traced = true;
                                    run_seeded_traced(
                                        network,
                                        x,
                                        &relax,
                                        &seeded,
                                        settings.curve_every,
                                        recorder,
                                    )
                                }
                                _ => run_schedule(
                                    kind,
                                    network,
                                    x,
                                    &relax,
                                    &seeded,
                                    settings.curve_every,
                                ),
                            }
                            .map_err(|e| Error::Mismatch(format!("convergence: {e}")))?;
                            let mut record = cell(kind.name(), seed, spread);
                            record.points = run
                                .curve
                                .iter()
                                .map(|p| (p.update, p.messages, p.potential, p.residual, p.time))
                                .collect();
                            record.outcome = verdict_name(run.verdict);
                            record.wall_seconds = run.wall_seconds;
                            record.distance = distance(&run.state);
                            records.push(record);
                        }
                    }
                }
                for (k, actors) in tokio_runs.iter_mut().enumerate() {
                    let spread = settings.latency_spread[k];
                    let mut record = cell("tokio", None, Some(spread));
                    if let Some(actors) = actors {
                        tokio_run(actors, x.to_owned(), network, &mut record, &distance);
                    }
                    records.push(record);
                }
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    write_atomic(&out.join("convergence.csv"), csv(&records).as_bytes())?;
    write_plot(&out.join("convergence.png"), &records, settings)?;
    let mut written = None;
    if let (Some(recorder), Some(path)) = (&trace, &options.trace_file) {
        let names = ["input", "layer1", "layer2", "layer3", "layer4"];
        let names: Vec<String> = (0..scenario.network.layers.len())
            .map(|i| {
                names
                    .get(i)
                    .map_or_else(|| format!("layer{i}"), |n| (*n).to_owned())
            })
            .collect();
        if !traced {
            tracing::warn!("no seeded run was traced: convergence.schedules has no \"seeded\"");
        }
        if recorder.truncated() {
            tracing::warn!(
                kept = recorder.recorded(),
                dropped = recorder.dropped(),
                "trace reached runtime.trace_limit; later events were dropped"
            );
        }
        recorder
            .write(path, &names)
            .map_err(|e| Error::Mismatch(format!("trace file: {e}")))?;
        written = Some((recorder.recorded(), recorder.dropped()));
    }
    let summaries = summarize(&records, &kinds);
    for summary in &summaries {
        info!(
            schedule = %summary.schedule,
            converged = summary.converged,
            runs = summary.runs,
            median_updates = summary.median_updates,
            "schedule compared"
        );
    }
    Ok(Some((summaries, written)))
}

/// The per-schedule results, and the events kept and dropped in the trace
/// file when one was written.
pub(super) type Compared = (Vec<ScheduleSummary>, Option<(usize, usize)>);

/// Relaxes one image with the free-running actors and fills `record` with
/// its single, final point.
fn tokio_run(
    actors: &mut ActorNetwork<f64>,
    x: Array2<f64>,
    network: &Network<f64>,
    record: &mut Record,
    distance: &dyn Fn(&State<f64>) -> Option<f64>,
) {
    let options = BatchOptions {
        rate: 0.0,
        reseed: false,
        return_state: true,
    };
    let began = Instant::now();
    let input = x.clone();
    match actors.run_batch(x, options) {
        Ok(result) => {
            record.wall_seconds = began.elapsed().as_secs_f64();
            let mut states = vec![input];
            states.extend(
                result
                    .layers
                    .iter()
                    .filter_map(|l| l.state.as_ref().map(|s| (**s).clone())),
            );
            let state = State {
                x: states,
                lambda: result.lambda.clone(),
            };
            let potential = energies(network, &state).potential.sum();
            record.points = vec![(
                result.report.updates(),
                result.report.messages,
                potential,
                result.report.max_residual,
                f64::NAN,
            )];
            record.outcome = match result.report.outcome {
                Outcome::Converged => "converged",
                Outcome::Capped => "capped",
                Outcome::Diverged => "diverged",
            };
            if result.report.outcome == Outcome::Converged {
                record.distance = distance(&state);
            }
        }
        Err(_) => {
            // A relaxation that found no quiescence within the wall-clock
            // limit is reported as capped, with the time it used.
            record.wall_seconds = began.elapsed().as_secs_f64();
            record.outcome = "capped";
        }
    }
}

/// Returns the untrained weights the run started from, so "random" and
/// "trained" differ only by learning.
fn random_weights(scenario: &Scenario) -> Network<f64> {
    let sizes = &scenario.network.layers;
    let mut network = random_network(
        sizes,
        &scenario.alpha_per_layer(),
        scenario.network.init,
        scenario.seed,
    );
    let masks: Vec<_> = scenario
        .connectivity()
        .iter()
        .enumerate()
        .map(|(i, c)| c.mask(sizes[i], sizes[i + 1]))
        .collect();
    restrict(&mut network, &masks);
    network
}

fn max_difference(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    if a.dim() != b.dim() {
        return f64::INFINITY;
    }
    (a - b).iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Converged => "converged",
        Verdict::Oscillating => "oscillating",
        Verdict::Diverged => "diverged",
        Verdict::Capped | Verdict::TimedOut => "capped",
    }
}

/// Formats a measurement, leaving non-finite values empty so that no NaN
/// reaches the file.
fn number(value: f64) -> String {
    if value.is_finite() {
        value.to_string()
    } else {
        String::new()
    }
}

fn csv(records: &[Record]) -> String {
    let mut text = format!("{CSV_HEADER}\n");
    let optional = |v: Option<String>| v.unwrap_or_default();
    for record in records {
        let points = if record.points.is_empty() {
            vec![(0, 0, f64::NAN, f64::NAN, f64::NAN)]
        } else {
            record.points.clone()
        };
        for (update, messages, potential, residual, time) in points {
            let _ = writeln!(
                text,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                record.schedule,
                optional(record.seed.map(|s| s.to_string())),
                record.weights,
                record.image,
                optional(record.spread.map(number)),
                number(record.step),
                update,
                messages,
                number(potential),
                number(residual),
                record.outcome,
                number(record.wall_seconds),
                optional(record.distance.map(number)),
                number(time),
            );
        }
    }
    text
}

/// Plots the residual against updates for one case: the first weights,
/// step size and image, the largest latency spread and the first seed.
fn write_plot(path: &Path, records: &[Record], settings: &ConvergenceSection) -> Result<(), Error> {
    let spread = settings
        .latency_spread
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let first = records.first();
    let series: Vec<Series> = records
        .iter()
        .filter(|r| {
            first.is_some_and(|f| r.weights == f.weights && r.step == f.step)
                && r.image == 0
                && r.spread.is_none_or(|s| s == spread)
                && r.seed
                    .is_none_or(|s| Some(s) == records.iter().find_map(|x| x.seed))
                && r.points.len() > 1
        })
        .map(|r| Series {
            name: match r.spread {
                Some(s) => format!("{} (spread {s})", r.schedule),
                None => r.schedule.to_owned(),
            },
            points: r.points.iter().map(|p| (p.0 as f64, p.3)).collect(),
        })
        .collect();
    let title = match first {
        Some(f) => format!(
            "residual per schedule ({} weights, step {}, image 0)",
            f.weights, f.step
        ),
        None => "residual per schedule".to_owned(),
    };
    let spec = PlotSpec {
        title: &title,
        x_label: "layer updates",
        y_label: "max residual",
        log_y: true,
        width: 900,
        height: 600,
    };
    write_line_plot(path, &spec, &series).map_err(|e| Error::Mismatch(e.to_string()))
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn summarize(records: &[Record], kinds: &[&str]) -> Vec<ScheduleSummary> {
    kinds
        .iter()
        .map(|&kind| {
            let runs: Vec<&Record> = records.iter().filter(|r| r.schedule == kind).collect();
            let converged: Vec<&&Record> =
                runs.iter().filter(|r| r.outcome == "converged").collect();
            let last = |r: &Record| r.points.last().copied();
            let mut updates: Vec<f64> = converged
                .iter()
                .filter_map(|r| last(r).map(|p| p.0 as f64))
                .collect();
            let mut messages: Vec<f64> = converged
                .iter()
                .filter_map(|r| last(r).map(|p| p.1 as f64))
                .collect();
            let mut wall: Vec<f64> = converged.iter().map(|r| r.wall_seconds).collect();
            let count = |name: &str| runs.iter().filter(|r| r.outcome == name).count();
            ScheduleSummary {
                schedule: kind.to_owned(),
                runs: runs.len(),
                converged: converged.len(),
                oscillating: count("oscillating"),
                diverged: count("diverged"),
                capped: count("capped"),
                median_updates: median(&mut updates),
                median_messages: median(&mut messages),
                median_wall_seconds: median(&mut wall),
                max_distance: converged
                    .iter()
                    .filter_map(|r| r.distance)
                    .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d)))),
            }
        })
        .collect()
}
