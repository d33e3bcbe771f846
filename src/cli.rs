//! Commands and flags, parsed with clap, and the dispatch to the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::builder::RangedU64ValueParser;
use clap::{Parser, Subcommand};

use crate::bench::{self, BenchError, ThroughputOptions};
use crate::encode::{self, EncodeOptions};
use crate::error::Error;
use crate::experiment::{RunOptions, run};
use crate::gradcheck::{self, GradientCheck};
use crate::scenario::GranularityKey;

/// Largest integer a TOML file can contain (a TOML integer is an i64). The
/// numeric flags become TOML overrides, so they are limited to it.
const TOML_INTEGER_MAX: u64 = i64::MAX as u64;

#[derive(Debug, Parser)]
#[command(
    name = "ign",
    version,
    about = "Simulate intrinsic gradient networks as asynchronous actors"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train, encode and classify as a scenario file describes.
    Run {
        /// The scenario, a TOML file (see docs/scenarios.md).
        scenario: PathBuf,
        /// Output directory [default: runs/<scenario file stem>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seed of every random choice, at most 2^63 - 1; overrides the
        /// scenario's `seed`.
        #[arg(long, value_parser = RangedU64ValueParser::<u64>::new().range(..=TOML_INTEGER_MAX))]
        seed: Option<u64>,
        /// Directory of the four MNIST-format IDX files, gzipped or raw;
        /// overrides `data.dir`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Training images used for learning; overrides `data.train_images`.
        #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(..=TOML_INTEGER_MAX))]
        train_images: Option<usize>,
        /// Sets any scenario key, e.g. `--set train.learning_rate=4`
        /// (repeatable; the value is TOML).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Hides the progress bars.
        #[arg(long)]
        no_progress: bool,
        /// Writes a Chrome trace-event JSON of the training actors here (opens
        /// in Perfetto or chrome://tracing; size capped by
        /// `runtime.trace_limit`).
        #[arg(long, value_name = "PATH")]
        trace_file: Option<PathBuf>,
    },
    /// Compute the fixed-point codes of a dataset with a saved model, as .npy files.
    Encode {
        /// The model file that `ign run` writes (model.npz in its output directory).
        #[arg(long)]
        model: PathBuf,
        /// Directory of the four MNIST-format IDX files [default: the model
        /// scenario's data.dir].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output directory, created if missing.
        #[arg(long)]
        out: PathBuf,
        /// Images encoded per split, the first ones [default: all].
        #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
        images: Option<usize>,
        /// Hides the progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Measure actor message throughput against a bare channel.
    Bench {
        /// Layer sizes, input first.
        #[arg(long, value_delimiter = ',', default_value = "784,128,64")]
        layers: Vec<usize>,
        /// Units per actor: "layer", "unit" or a block size.
        #[arg(long, default_value = "unit", allow_hyphen_values = true)]
        granularity: String,
        /// Per layer above the input, the window of units below each unit
        /// connects to (0 for every unit); one value applies to all.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        window: Vec<usize>,
        /// Images relaxed together.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Relaxations to time.
        #[arg(long, default_value_t = 3)]
        relaxations: usize,
        /// Residual tolerance of each relaxation.
        #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
        tolerance: f64,
        /// Tokio worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Compare equation 1 with finite differences of L on a random network.
    CheckGradient {
        /// Layer sizes, input first, e.g. 8,6,5.
        #[arg(long, value_delimiter = ',', required = true)]
        layers: Vec<usize>,
        /// Seed of the random weights and input.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Sparsity weight of every layer.
        #[arg(long, default_value_t = 0.02)]
        alpha: f64,
    },
}

/// Runs a parsed command line and returns the process exit code's error, if
/// any.
pub fn dispatch(cli: Cli, interrupted: Arc<AtomicBool>) -> Result<(), Error> {
    match cli.command {
        Command::Run {
            scenario,
            out,
            seed,
            data,
            train_images,
            mut overrides,
            no_progress,
            trace_file,
        } => {
            if let Some(seed) = seed {
                overrides.push(format!("seed={seed}"));
            }
            if let Some(dir) = data {
                overrides.push(format!(
                    "data.dir={}",
                    toml_string(&dir.display().to_string())
                ));
            }
            if let Some(n) = train_images {
                overrides.push(format!("data.train_images={n}"));
            }
            let options = RunOptions {
                scenario,
                out,
                overrides,
                progress: !no_progress,
                trace_file,
            };
            let summary = run(&options, interrupted)?;
            print_line(&serde_json::to_string_pretty(&summary).unwrap_or_default())?;
            Ok(())
        }
        Command::Encode {
            model,
            data,
            out,
            images,
            no_progress,
        } => {
            let options = EncodeOptions {
                model,
                data,
                out,
                images,
                progress: !no_progress,
            };
            let summary = encode::encode(&options, &interrupted)?;
            print_line(&serde_json::to_string_pretty(&summary).unwrap_or_default())?;
            Ok(())
        }
        Command::Bench {
            layers,
            granularity,
            window,
            batch,
            relaxations,
            tolerance,
            workers,
            seed,
        } => {
            let key = match granularity.parse::<usize>() {
                Ok(k) => GranularityKey::Units(k),
                Err(_) => GranularityKey::Name(granularity.clone()),
            };
            let Some(granularity) = key.granularity() else {
                return Err(Error::Mismatch(format!(
                    "--granularity {granularity}: expected \"layer\", \"unit\" or a block size of at least 1"
                )));
            };
            if workers == 0 {
                return Err(Error::Mismatch(
                    "--workers 0: expected at least 1".to_owned(),
                ));
            }
            if !(tolerance.is_finite() && tolerance > 0.0) {
                return Err(Error::Mismatch(format!(
                    "--tolerance {tolerance}: expected a finite number > 0"
                )));
            }
            let options = ThroughputOptions {
                sizes: layers,
                granularity,
                window,
                batch,
                relaxations,
                tolerance,
                workers: workers.max(1),
                seed,
            };
            let report = bench::throughput(&options).map_err(|e| match e {
                BenchError::Runtime(e) => Error::Failed(e.to_string()),
                other => Error::Mismatch(other.to_string()),
            })?;
            print_line(&serde_json::to_string_pretty(&report).unwrap_or_default())?;
            Ok(())
        }
        Command::CheckGradient {
            layers,
            seed,
            alpha,
        } => {
            let check = GradientCheck {
                sizes: layers,
                seed,
                alpha,
                ..GradientCheck::default()
            };
            let report = gradcheck::run(&check)?;
            print_line(&report.to_string())?;
            if report.passed() {
                Ok(())
            } else {
                Err(Error::Failed(format!(
                    "max relative error {:.3e} is not below 1e-5",
                    report.max_relative_error
                )))
            }
        }
    }
}

/// Writes `text` and a newline to standard output; a closed or full
/// output is an error with a message, not a panic.
fn print_line(text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| Error::Output {
            path: PathBuf::from("standard output"),
            source,
        })
}

/// Quotes a string as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}
