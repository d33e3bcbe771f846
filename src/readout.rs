//! Softmax-regression readout: a linear classifier that measures how linearly
//! separable a representation is (fixed-point codes or raw pixels).
//!
//! Each feature is standardised with the training mean `μ` and scale `σ`, and
//! the class probabilities are
//!
//! ```text
//! z = (x − μ) / σ                  x, μ, σ: one value per feature
//! p = softmax(z·W + b)             W: features × classes, b: one per class
//! L = mean_i(−log p[i, y_i]) + ½·λ·‖W‖²
//! ```
//!
//! `L` is minimised with mini-batch Adam (Kingma and Ba, "Adam: a method for
//! stochastic optimization", 2015) from zero weights. The step size decays
//! linearly to zero over the epochs, so the last epochs settle near the minimum
//! instead of jittering around it. Batches are drawn in an order shuffled by a
//! ChaCha8 generator seeded from the configuration, so a fit is deterministic
//! for a seed and a thread count.
//!
//! Invariant: every stored scale is finite and positive, so standardising never
//! divides by zero. Constant training features get scale 1.

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Training settings for [`SoftmaxReadout::fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReadoutConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Initial Adam step size. It decays linearly to zero over the epochs.
    pub learning_rate: f32,
    /// L2 penalty `λ` on the weights (not the bias), added to the mean loss.
    pub l2: f32,
    /// Samples per gradient step. The last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// Seed of the shuffling generator.
    pub seed: u64,
}

impl Default for ReadoutConfig {
    /// Settings that fit raw MNIST pixels (scaled to [0, 1]) in 30 epochs.
    /// Measured test error with seed 0: 8.2% from the first 20,000 training
    /// images, 9.1% from 10,000 and 7.4% from all 60,000.
    fn default() -> Self {
        Self {
            epochs: 30,
            learning_rate: 1e-3,
            l2: 1e-4,
            batch_size: 128,
            seed: 0,
        }
    }
}

/// Errors from fitting or applying a readout.
#[derive(Debug, thiserror::Error)]
pub enum ReadoutError {
    #[error("features are empty ({rows} rows x {columns} columns), expected at least one of each")]
    EmptyInput { rows: usize, columns: usize },

    #[error("got {labels} labels for {rows} feature rows, expected one label per row")]
    LabelCount { labels: usize, rows: usize },

    #[error("features have {found} columns but the readout was fitted on {expected}")]
    FeatureCount { expected: usize, found: usize },

    #[error("label {label} at row {row} is out of range for {classes} classes")]
    LabelOutOfRange {
        row: usize,
        label: u8,
        classes: usize,
    },

    #[error("invalid class count {classes}, expected 1 to 256 because labels are u8")]
    InvalidClassCount { classes: usize },

    #[error("feature at row {row}, column {column} is {value}, expected a finite number")]
    NonFiniteFeature {
        row: usize,
        column: usize,
        value: f32,
    },

    #[error("readout parameter {name} has length {found}, expected {expected}")]
    ParameterShape {
        name: &'static str,
        found: usize,
        expected: usize,
    },

    #[error("readout parameter {name} contains {value}, expected finite numbers")]
    NonFiniteParameter { name: &'static str, value: f32 },

    #[error("readout scale contains {value}, expected finite positive numbers")]
    NonPositiveScale { value: f32 },

    #[error("invalid readout setting {name} = {value}: {expected}")]
    InvalidConfig {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
}

/// A fitted multinomial logistic regression.
#[derive(Debug, Clone)]
pub struct SoftmaxReadout {
    /// Weights `W` on standardised features, features × classes.
    weights: Array2<f32>,
    /// Bias `b`, one per class.
    bias: Array1<f32>,
    /// Training mean `μ` of each feature.
    mean: Array1<f32>,
    /// Training standard deviation `σ` of each feature, or 1 for a constant one.
    scale: Array1<f32>,
}

impl SoftmaxReadout {
    /// Fits a readout on `features` (one row per sample) and `labels` (one
    /// class per row, each below `classes`).
    ///
    /// Returns an error for empty input, a label count that differs from the
    /// row count, a label out of range, a non-finite feature or an invalid
    /// setting in `config`.
    pub fn fit(
        features: ArrayView2<f32>,
        labels: &[u8],
        classes: usize,
        config: &ReadoutConfig,
    ) -> Result<Self, ReadoutError> {
        validate_config(config)?;
        validate_inputs(features, labels, classes)?;

        let (mean, scale) = feature_statistics(features);
        let standardised = standardise(features, &mean, &scale);
        let (weights, bias) = train(standardised.view(), labels, classes, config);

        Ok(Self {
            weights,
            bias,
            mean,
            scale,
        })
    }

    /// Builds a readout from known parameters: `weights` (features × classes)
    /// and `bias` act on features standardised with `mean` and `scale`.
    ///
    /// Returns an error when the shapes disagree, a value is not finite, a
    /// scale is not positive, or the class count is outside 1 to 256.
    pub fn from_parameters(
        weights: Array2<f32>,
        bias: Array1<f32>,
        mean: Array1<f32>,
        scale: Array1<f32>,
    ) -> Result<Self, ReadoutError> {
        let (features, classes) = weights.dim();
        if classes == 0 || classes > usize::from(u8::MAX) + 1 {
            return Err(ReadoutError::InvalidClassCount { classes });
        }
        check_length("bias", bias.len(), classes)?;
        check_length("mean", mean.len(), features)?;
        check_length("scale", scale.len(), features)?;
        check_parameter_finite("weights", weights.iter())?;
        check_parameter_finite("bias", bias.iter())?;
        check_parameter_finite("mean", mean.iter())?;
        if let Some(&value) = scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(ReadoutError::NonPositiveScale { value });
        }
        Ok(Self {
            weights,
            bias,
            mean,
            scale,
        })
    }

    /// Number of feature columns the readout was fitted on.
    pub fn feature_count(&self) -> usize {
        self.mean.len()
    }

    /// Number of classes the readout predicts.
    pub fn class_count(&self) -> usize {
        self.bias.len()
    }

    /// Predicts the most probable class of each row. Ties go to the lower class.
    ///
    /// # Panics
    ///
    /// Panics if the column count differs from the one the readout was fitted
    /// on. [`SoftmaxReadout::try_predict`] returns an error instead.
    pub fn predict(&self, features: ArrayView2<f32>) -> Vec<u8> {
        match self.try_predict(features) {
            Ok(predictions) => predictions,
            Err(error) => panic!("SoftmaxReadout::predict: {error}"),
        }
    }

    /// Predicts the most probable class of each row, or returns an error for a
    /// wrong column count or a non-finite feature.
    pub fn try_predict(&self, features: ArrayView2<f32>) -> Result<Vec<u8>, ReadoutError> {
        self.check_features(features)?;
        let logits = self.logits(features);
        let predictions = logits
            .rows()
            .into_iter()
            .map(|row| argmax(row.iter().copied()));
        Ok(predictions.collect())
    }

    /// Computes the class probabilities of each row, rows × classes, or returns
    /// an error for a wrong column count or a non-finite feature.
    pub fn probabilities(&self, features: ArrayView2<f32>) -> Result<Array2<f32>, ReadoutError> {
        self.check_features(features)?;
        let mut logits = self.logits(features);
        for mut row in logits.rows_mut() {
            let max = row.fold(f32::NEG_INFINITY, |acc, &v| acc.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row /= sum;
        }
        Ok(logits)
    }

    /// Returns the fraction of rows whose predicted class differs from the
    /// label, in [0, 1].
    ///
    /// # Panics
    ///
    /// Panics for empty input, a label count that differs from the row count,
    /// or a wrong column count. [`SoftmaxReadout::try_error_rate`] returns an
    /// error instead.
    pub fn error_rate(&self, features: ArrayView2<f32>, labels: &[u8]) -> f64 {
        match self.try_error_rate(features, labels) {
            Ok(rate) => rate,
            Err(error) => panic!("SoftmaxReadout::error_rate: {error}"),
        }
    }

    /// Returns the fraction of misclassified rows, or an error for empty input
    /// or mismatched shapes.
    pub fn try_error_rate(
        &self,
        features: ArrayView2<f32>,
        labels: &[u8],
    ) -> Result<f64, ReadoutError> {
        if features.nrows() == 0 {
            return Err(ReadoutError::EmptyInput {
                rows: features.nrows(),
                columns: features.ncols(),
            });
        }
        if labels.len() != features.nrows() {
            return Err(ReadoutError::LabelCount {
                labels: labels.len(),
                rows: features.nrows(),
            });
        }

        let predictions = self.try_predict(features)?;
        let wrong = predictions
            .iter()
            .zip(labels)
            .filter(|(p, y)| p != y)
            .count();
        Ok(wrong as f64 / labels.len() as f64)
    }

    fn check_features(&self, features: ArrayView2<f32>) -> Result<(), ReadoutError> {
        if features.ncols() != self.feature_count() {
            return Err(ReadoutError::FeatureCount {
                expected: self.feature_count(),
                found: features.ncols(),
            });
        }
        check_finite(features)
    }

    /// Computes `z·W + b` for raw features, rows × classes.
    fn logits(&self, features: ArrayView2<f32>) -> Array2<f32> {
        let standardised = standardise(features, &self.mean, &self.scale);
        let mut logits = standardised.dot(&self.weights);
        logits += &self.bias;
        logits
    }
}

fn check_length(name: &'static str, found: usize, expected: usize) -> Result<(), ReadoutError> {
    if found == expected {
        Ok(())
    } else {
        Err(ReadoutError::ParameterShape {
            name,
            found,
            expected,
        })
    }
}

fn check_parameter_finite<'a>(
    name: &'static str,
    mut values: impl Iterator<Item = &'a f32>,
) -> Result<(), ReadoutError> {
    match values.find(|v| !v.is_finite()) {
        Some(&value) => Err(ReadoutError::NonFiniteParameter { name, value }),
        None => Ok(()),
    }
}

fn validate_config(config: &ReadoutConfig) -> Result<(), ReadoutError> {
    if config.batch_size == 0 {
        return Err(ReadoutError::InvalidConfig {
            name: "batch_size",
            value: 0.0,
            expected: "expected at least 1",
        });
    }
    let rate = config.learning_rate;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(ReadoutError::InvalidConfig {
            name: "learning_rate",
            value: f64::from(rate),
            expected: "expected a finite positive number",
        });
    }
    if !(config.l2.is_finite() && config.l2 >= 0.0) {
        return Err(ReadoutError::InvalidConfig {
            name: "l2",
            value: f64::from(config.l2),
            expected: "expected a finite number >= 0",
        });
    }
    Ok(())
}

fn validate_inputs(
    features: ArrayView2<f32>,
    labels: &[u8],
    classes: usize,
) -> Result<(), ReadoutError> {
    let (rows, columns) = features.dim();
    if rows == 0 || columns == 0 {
        return Err(ReadoutError::EmptyInput { rows, columns });
    }
    if labels.len() != rows {
        return Err(ReadoutError::LabelCount {
            labels: labels.len(),
            rows,
        });
    }
    if classes == 0 || classes > usize::from(u8::MAX) + 1 {
        return Err(ReadoutError::InvalidClassCount { classes });
    }
    if let Some((row, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| usize::from(**l) >= classes)
    {
        return Err(ReadoutError::LabelOutOfRange {
            row,
            label,
            classes,
        });
    }
    check_finite(features)
}

/// Returns an error naming the first non-finite feature in row-major order.
fn check_finite(features: ArrayView2<f32>) -> Result<(), ReadoutError> {
    let found = features
        .indexed_iter()
        .find(|(_, value)| !value.is_finite());
    match found {
        Some(((row, column), &value)) => Err(ReadoutError::NonFiniteFeature { row, column, value }),
        None => Ok(()),
    }
}

/// Computes the mean and scale of each column, accumulating in f64.
///
/// A column whose standard deviation is at most 1e-6 times its magnitude (or
/// 1e-6 absolute) is treated as constant and gets scale 1, so rounding noise
/// in a constant column is never blown up.
fn feature_statistics(features: ArrayView2<f32>) -> (Array1<f32>, Array1<f32>) {
    let rows = features.nrows() as f64;
    let mut sum = Array1::<f64>::zeros(features.ncols());
    for row in features.rows() {
        Zip::from(&mut sum)
            .and(&row)
            .for_each(|s, &x| *s += f64::from(x));
    }
    let mean = sum / rows;

    // Two passes: summing squared deviations from the mean avoids the
    // cancellation of E[x²] − E[x]².
    let mut squares = Array1::<f64>::zeros(features.ncols());
    for row in features.rows() {
        Zip::from(&mut squares)
            .and(&row)
            .and(&mean)
            .for_each(|s, &x, &mu| {
                let deviation = f64::from(x) - mu;
                *s += deviation * deviation;
            });
    }

    let scale = Zip::from(&squares)
        .and(&mean)
        .map_collect(|&square_sum, &mu| {
            let std = (square_sum / rows).sqrt();
            if std > 1e-6 * mu.abs().max(1.0) {
                std as f32
            } else {
                1.0
            }
        });
    (mean.mapv(|v| v as f32), scale)
}

fn standardise(features: ArrayView2<f32>, mean: &Array1<f32>, scale: &Array1<f32>) -> Array2<f32> {
    let mut standardised = &features - mean;
    standardised /= scale;
    standardised
}

/// Moment estimates of Adam for one parameter array.
struct AdamState<D: ndarray::Dimension> {
    first: ndarray::Array<f32, D>,
    second: ndarray::Array<f32, D>,
}

impl<D: ndarray::Dimension> AdamState<D> {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPSILON: f32 = 1e-8;

    fn new(shape: D) -> Self {
        Self {
            first: ndarray::Array::zeros(shape.clone()),
            second: ndarray::Array::zeros(shape),
        }
    }

    /// Applies one Adam step of size `rate` at step number `step` (from 1).
    fn update(
        &mut self,
        parameter: &mut ndarray::Array<f32, D>,
        gradient: &ndarray::Array<f32, D>,
        rate: f32,
        step: i32,
    ) {
        let correction1 = 1.0 - Self::BETA1.powi(step);
        let correction2 = 1.0 - Self::BETA2.powi(step);
        Zip::from(parameter)
            .and(&mut self.first)
            .and(&mut self.second)
            .and(gradient)
            .for_each(|w, m, v, &g| {
                *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
                *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
                let m_hat = *m / correction1;
                let v_hat = *v / correction2;
                *w -= rate * m_hat / (v_hat.sqrt() + Self::EPSILON);
            });
    }
}

/// Minimises the regularised cross-entropy on standardised features and
/// returns `(W, b)`.
fn train(
    standardised: ArrayView2<f32>,
    labels: &[u8],
    classes: usize,
    config: &ReadoutConfig,
) -> (Array2<f32>, Array1<f32>) {
    let (rows, columns) = standardised.dim();
    let mut weights = Array2::<f32>::zeros((columns, classes));
    let mut bias = Array1::<f32>::zeros(classes);
    let mut weights_adam = AdamState::new(weights.raw_dim());
    let mut bias_adam = AdamState::new(bias.raw_dim());

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..rows).collect();
    let mut step: i32 = 0;

    for epoch in 0..config.epochs {
        order.shuffle(&mut rng);
        let rate = config.learning_rate * (1.0 - epoch as f32 / config.epochs as f32);
        let mut loss_sum = 0.0_f64;

        for batch in order.chunks(config.batch_size) {
            let inputs = standardised.select(Axis(0), batch);
            let batch_labels: Vec<u8> = batch.iter().map(|&i| labels[i]).collect();

            // Forward pass: the logits become the gradient of the mean
            // cross-entropy with respect to the logits, (p − onehot(y)) / B.
            let mut logits = inputs.dot(&weights);
            logits += &bias;
            loss_sum += softmax_cross_entropy_in_place(&mut logits, &batch_labels);
            logits /= batch.len() as f32;
            let logit_gradient = logits;

            let mut weights_gradient = inputs.t().dot(&logit_gradient);
            weights_gradient.scaled_add(config.l2, &weights);
            let bias_gradient = logit_gradient.sum_axis(Axis(0));

            // Adam's bias correction needs the step count. Saturating at
            // i32::MAX is harmless because the correction is 1 long before.
            step = step.saturating_add(1);
            weights_adam.update(&mut weights, &weights_gradient, rate, step);
            bias_adam.update(&mut bias, &bias_gradient, rate, step);
        }

        let penalty =
            0.5 * f64::from(config.l2) * weights.iter().map(|&w| f64::from(w * w)).sum::<f64>();
        let loss = loss_sum / rows as f64 + penalty;
        tracing::debug!(epoch, loss, "readout epoch finished");
    }
    (weights, bias)
}

/// Replaces each row of `logits` with `softmax(row) − onehot(label)` and
/// returns the summed cross-entropy `Σ −log p[label]` of the rows.
///
/// Uses `log Σ exp(a) = m + log Σ exp(a − m)` with `m` the row maximum, so no
/// exponential overflows.
fn softmax_cross_entropy_in_place(logits: &mut Array2<f32>, labels: &[u8]) -> f64 {
    let mut loss = 0.0_f64;
    for (mut row, &label) in logits.rows_mut().into_iter().zip(labels) {
        let max = row.fold(f32::NEG_INFINITY, |acc, &v| acc.max(v));
        let label_logit = row[usize::from(label)];
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        loss += f64::from(sum.ln() - (label_logit - max));
        row /= sum;
        row[usize::from(label)] -= 1.0;
    }
    loss
}

/// Returns the index of the first maximum. NaN never wins, so a row of NaN
/// gives 0.
fn argmax(values: impl Iterator<Item = f32>) -> u8 {
    let mut best_index = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (index, value) in values.enumerate() {
        if value > best_value {
            best_index = index;
            best_value = value;
        }
    }
    // The class count is at most 256, checked when fitting.
    best_index as u8
}
