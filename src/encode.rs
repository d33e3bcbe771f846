//! The encode job: load a model file, relax every image of a dataset to its
//! fixed point with the synchronous [`Solver`], and write the codes as numpy
//! `.npy` files.
//!
//! Outputs in the output directory:
//!
//! ```text
//! train_codes.npy   float32 images x (n_1 + … + n_L), layer 1's units first
//! train_labels.npy  uint8   images
//! test_codes.npy    float32
//! test_labels.npy   uint8
//! W1.npy … WL.npy   float32 n_{i-1} x n_i
//! encode.json       the EncodeSummary
//! ```
//!
//! Each image is scaled to unit L2 norm ([`unit_rows`]) and relaxed in
//! batches of the scenario's `encode.batch_size` from the feed-forward start,
//! as `ign run` encodes its readout images.
//!
//! Invariant: nothing is written until every image is encoded with finite
//! codes, and each file is replaced by a rename. So an interrupted, diverged
//! or failed job leaves the output directory as it was.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::ProgressBar;
use ndarray::{Array1, Array2, ArrayView2, Axis, concatenate, s};
use ndarray_npy::WriteNpyExt;
use serde::Serialize;
use tracing::{info, warn};

use crate::data::{Dataset, Splits, default_cache_dir, load_splits};
use crate::error::Error;
use crate::experiment::{progress, unit_rows};
use crate::model::LayerEval;
use crate::relaxation::Outcome;
use crate::scenario::Scenario;
use crate::solver::Solver;
use crate::store::{Model, load_model, write_atomic};

/// Settings of one encode job.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// The model file that `ign run` wrote.
    pub model: PathBuf,
    /// Directory of the four MNIST-format IDX files. `None` uses the
    /// scenario's `data.dir`, relative to the current directory.
    pub data: Option<PathBuf>,
    /// Output directory, created if missing.
    pub out: PathBuf,
    /// Images encoded per split (the first ones). `None` encodes all.
    pub images: Option<usize>,
    pub progress: bool,
}

/// Everything `encode.json` contains.
#[derive(Clone, Debug, Serialize)]
pub struct EncodeSummary {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub ign_version: String,
    /// Layer sizes, input first.
    pub layers: Vec<usize>,
    pub train: SplitSummary,
    pub test: SplitSummary,
    /// Wall-clock time of the whole job, loading and writing included.
    pub seconds: f64,
}

/// Measurements of encoding one split.
#[derive(Clone, Debug, Serialize)]
pub struct SplitSummary {
    pub images: usize,
    /// Columns of the codes: `n_1 + … + n_L`.
    pub code_width: usize,
    /// Largest row residual at the end of any batch's relaxation.
    pub max_residual: f64,
    /// Images whose relaxation stopped at `relax.max_steps` above the
    /// tolerance. Their codes are written but are not exact fixed points.
    pub rows_above_tolerance: usize,
    /// Wall-clock time of the relaxations of this split.
    pub seconds: f64,
}

/// Encodes the train and test splits with the model in `options.model` and
/// writes the codes, labels and weights into `options.out`.
///
/// Errors: a bad model file, data directory or `--images` value, and a model
/// whose input size differs from the images, are bad input (exit code 2). A
/// diverged relaxation is [`Error::Failed`], naming the image. When
/// `interrupted` is set, the job stops before the next batch and returns
/// [`Error::InterruptedBeforeOutput`] without writing any file.
pub fn encode(options: &EncodeOptions, interrupted: &AtomicBool) -> Result<EncodeSummary, Error> {
    let started = Instant::now();
    if options.images == Some(0) {
        return Err(Error::Mismatch(
            "--images is 0; encode at least 1 image per split".to_owned(),
        ));
    }
    let model = load_model(&options.model)?;
    let data = options
        .data
        .clone()
        .unwrap_or_else(|| model.scenario.data.dir.clone());
    let splits = load_data(&model.scenario, &data, options.images)?;
    std::fs::create_dir_all(&options.out).map_err(|source| Error::OutputDir {
        path: options.out.clone(),
        source,
    })?;
    info!(
        model = %options.model.display(),
        data = %data.display(),
        out = %options.out.display(),
        train = splits.train.len(),
        test = splits.test.len(),
        "encode started"
    );

    let batch_size = model.scenario.encode.batch_size;
    let batches = splits.train.len().div_ceil(batch_size) + splits.test.len().div_ceil(batch_size);
    let mut encoder = SplitEncoder {
        solver: Solver::new(&model.network, model.scenario.relax.config()),
        batch_size,
        bar: progress(options.progress, batches as u64, "encode"),
        interrupted,
    };
    let (train_codes, train) = encoder.encode("train", &splits.train)?;
    let (test_codes, test) = encoder.encode("test", &splits.test)?;
    encoder.bar.finish_and_clear();
    if interrupted.load(Ordering::SeqCst) {
        return Err(Error::InterruptedBeforeOutput);
    }

    write_npy(&options.out, "train_codes.npy", &train_codes)?;
    write_npy(&options.out, "train_labels.npy", &labels(&splits.train))?;
    write_npy(&options.out, "test_codes.npy", &test_codes)?;
    write_npy(&options.out, "test_labels.npy", &labels(&splits.test))?;
    write_weights(&options.out, &model)?;

    let summary = EncodeSummary {
        model: options.model.clone(),
        data,
        out: options.out.clone(),
        ign_version: env!("CARGO_PKG_VERSION").to_owned(),
        layers: model.scenario.network.layers.clone(),
        train,
        test,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_summary(&options.out, &summary)?;
    info!(
        seconds = summary.seconds,
        train_rows_above_tolerance = summary.train.rows_above_tolerance,
        test_rows_above_tolerance = summary.test.rows_above_tolerance,
        "encode finished"
    );
    Ok(summary)
}

/// Loads both splits, block-averaged to the scenario's `data.downsample`
/// side when it is above 0, checks that the images have the model's input
/// size, and keeps the first `images` of each split.
fn load_data(scenario: &Scenario, dir: &Path, images: Option<usize>) -> Result<Splits, Error> {
    let cache = if scenario.data.cache_dir.as_os_str().is_empty() {
        default_cache_dir()
    } else {
        scenario.data.cache_dir.clone()
    };
    let mut splits = load_splits(dir, &cache)?;
    let side = scenario.data.downsample;
    if side > 0 {
        let (rows, cols) = (splits.train.rows, splits.train.cols);
        let small = splits
            .train
            .downsample(side)
            .zip(splits.test.downsample(side));
        let Some((train, test)) = small else {
            return Err(Error::Mismatch(format!(
                "data.downsample = {side} in the model's scenario is larger than the {rows}x{cols} \
                 images in {}; pass --data with the data the model was trained on",
                dir.display()
            )));
        };
        splits.train = train;
        splits.test = test;
    }

    let pixels = splits.train.rows * splits.train.cols;
    let inputs = scenario.network.layers[0];
    if inputs != pixels {
        return Err(Error::Mismatch(format!(
            "the model's first layer has {inputs} inputs but the images in {} have {pixels} \
             pixels ({}x{}); pass --data with the data the model was trained on",
            dir.display(),
            splits.train.rows,
            splits.train.cols
        )));
    }

    if let Some(n) = images {
        for (name, split) in [("train", &splits.train), ("test", &splits.test)] {
            if n > split.len() {
                warn!(
                    split = name,
                    requested = n,
                    available = split.len(),
                    "fewer images than requested; encoding all"
                );
            }
        }
        splits.train = splits.train.take(n);
        splits.test = splits.test.take(n);
    }
    Ok(splits)
}

/// Relaxes the images of one split batch by batch.
struct SplitEncoder<'a> {
    solver: Solver<f32>,
    batch_size: usize,
    bar: ProgressBar,
    interrupted: &'a AtomicBool,
}

impl SplitEncoder<'_> {
    /// Returns the codes of every image of `set` (one row each) and the
    /// split's measurements.
    fn encode(&mut self, split: &str, set: &Dataset) -> Result<(Array2<f32>, SplitSummary), Error> {
        let started = Instant::now();
        let width: usize = self.solver.layers.iter().map(|l| l.w.ncols()).sum();
        let mut parts = Vec::with_capacity(set.len().div_ceil(self.batch_size));
        let mut max_residual = 0.0f64;
        let mut rows_above_tolerance = 0;
        for start in (0..set.len()).step_by(self.batch_size) {
            if self.interrupted.load(Ordering::SeqCst) {
                return Err(Error::InterruptedBeforeOutput);
            }
            let end = (start + self.batch_size).min(set.len());
            let x0 = unit_rows(&set.images.slice(s![start..end, ..]).to_owned());
            let report = self.solver.relax(x0.view());
            if report.outcome == Outcome::Diverged {
                let (row, residual) = worst_row(&self.solver.evals);
                return Err(Error::Failed(format!(
                    "encoding diverged at {split} image {} (0-based; residual {residual:.3e}); lower \
                     relax.step_scale in the model's scenario",
                    start + row
                )));
            }
            let states: Vec<ArrayView2<f32>> =
                self.solver.layers.iter().map(|l| l.x.view()).collect();
            let codes = concatenate(Axis(1), &states).map_err(|e| Error::Failed(e.to_string()))?;
            check_finite(&codes, split, start)?;
            max_residual = max_residual.max(report.max_residual);
            rows_above_tolerance += report.rows_above_tolerance;
            parts.push(codes);
            self.bar.inc(1);
        }

        let views: Vec<ArrayView2<f32>> = parts.iter().map(|p| p.view()).collect();
        let codes = if views.is_empty() {
            Array2::zeros((0, width))
        } else {
            concatenate(Axis(0), &views).map_err(|e| Error::Failed(e.to_string()))?
        };
        let summary = SplitSummary {
            images: set.len(),
            code_width: width,
            max_residual,
            rows_above_tolerance,
            seconds: started.elapsed().as_secs_f64(),
        };
        info!(
            split,
            images = summary.images,
            max_residual,
            rows_above_tolerance,
            "split encoded"
        );
        Ok((codes, summary))
    }
}

/// Returns the batch row with the largest residual in any layer, a NaN
/// counting as the largest, and that residual.
fn worst_row(evals: &[LayerEval<f32>]) -> (usize, f32) {
    let rows = evals.first().map_or(0, |e| e.row_residual.len());
    let residual = |b: usize| {
        evals
            .iter()
            .map(|e| e.row_residual[b])
            .fold(0.0f32, |m, r| {
                if r.is_nan() || m.is_nan() {
                    f32::NAN
                } else {
                    m.max(r)
                }
            })
    };
    let key = |r: f32| if r.is_nan() { f32::INFINITY } else { r };
    (0..rows)
        .map(|b| (b, residual(b)))
        .fold(
            (0, 0.0),
            |best, (b, r)| if key(r) > key(best.1) { (b, r) } else { best },
        )
}

/// Rejects codes with a NaN or infinite entry, naming the image.
fn check_finite(codes: &Array2<f32>, split: &str, start: usize) -> Result<(), Error> {
    let bad = codes.indexed_iter().find(|(_, v)| !v.is_finite());
    match bad {
        Some(((row, column), value)) => Err(Error::Failed(format!(
            "the code of {split} image {} contains {value} in column {column}; lower \
             relax.step_scale in the model's scenario",
            start + row
        ))),
        None => Ok(()),
    }
}

fn labels(set: &Dataset) -> Array1<u8> {
    Array1::from(set.labels.clone())
}

fn write_weights(out: &Path, model: &Model) -> Result<(), Error> {
    for (i, w) in model.network.weights.iter().enumerate() {
        write_npy(out, &format!("W{}.npy", i + 1), w)?;
    }
    Ok(())
}

/// Writes one array as a `.npy` file through a temporary file and a rename.
fn write_npy<T: WriteNpyExt>(out: &Path, name: &str, array: &T) -> Result<(), Error> {
    let path = out.join(name);
    let written = write_atomic(&path, |file| {
        array
            .write_npy(file)
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    written.map_err(|source| Error::Output { path, source })
}

fn write_summary(out: &Path, summary: &EncodeSummary) -> Result<(), Error> {
    let path = out.join("encode.json");
    let json = serde_json::to_string_pretty(summary).map_err(|e| Error::Failed(e.to_string()))?;
    let written = write_atomic(&path, |file| {
        use std::io::Write;
        file.write_all(json.as_bytes())?;
        file.write_all(b"\n")
    });
    written.map_err(|source| Error::Output { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn eval_with_residuals(residuals: Array1<f32>) -> LayerEval<f32> {
        let rows = residuals.len();
        LayerEval {
            prediction: Array2::zeros((rows, 1)),
            residual: Array2::zeros((rows, 1)),
            gradient: Array2::zeros((rows, 1)),
            norms: None,
            row_residual: residuals,
            constraint: Array1::zeros(rows),
        }
    }

    #[test]
    fn worst_row_takes_max_over_layers() {
        let evals = [
            eval_with_residuals(array![0.5, 0.1, 2.0]),
            eval_with_residuals(array![0.25, 3.0, 0.0]),
        ];
        assert_eq!(worst_row(&evals), (1, 3.0));
    }

    #[test]
    fn worst_row_prefers_nan() {
        let evals = [eval_with_residuals(array![1e9, f32::NAN, 2.0])];
        let (row, residual) = worst_row(&evals);
        assert_eq!(row, 1);
        assert!(residual.is_nan());
    }

    #[test]
    fn non_finite_code_names_image() {
        let codes = array![[0.0, 1.0], [f32::INFINITY, 0.0]];
        let error = check_finite(&codes, "test", 250).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the code of test image 251 contains inf in column 0; lower relax.step_scale in \
             the model's scenario"
        );
    }
}
