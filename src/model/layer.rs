//! One layer of the sparse coder as a self-contained unit of computation: its
//! state `x_i`, its synapses `W_i`, its sparsity weight and, for the first
//! layer, the per-image multipliers `lambda`. Both the synchronous solver and
//! the layer actors drive relaxation through [`Layer::evaluate`] and
//! [`Layer::step`], so the two schedules run the same arithmetic.
//!
//! Invariant: a layer reads only its own fields and the two messages passed to
//! `evaluate`, the state `x_{i−1}` of the layer below and the prediction
//! `p_{i+1}` of the layer above.

use ndarray::{Array1, Array2, ArrayView2, Axis, NdFloat, Zip};

use super::{
    cast, normalize_columns, prediction, projected_residual, row_max_abs, row_norms,
    scaled_residual, spectral_norm_squared, state_gradient, tiny, weight_gradient,
};

/// Power-iteration steps for the step-size bound; the estimate is then
/// inflated by [`LIPSCHITZ_MARGIN`] because power iteration underestimates.
const POWER_ITERATIONS: usize = 30;
const LIPSCHITZ_MARGIN: f64 = 1.05;

/// A layer of the hierarchical sparse coder.
#[derive(Clone, Debug)]
pub struct Layer<A> {
    /// Layer number, 1 for the layer above the input.
    pub index: usize,
    /// `W_i`, n_{i−1} x n_i, columns of unit norm.
    pub w: Array2<A>,
    /// Sparsity weight `alpha_i` of the L1 term.
    pub alpha: A,
    /// State `x_i`, B x n_i, non-negative.
    pub x: Array2<A>,
    /// One Lagrange multiplier per image; present only on layer 1.
    pub lambda: Option<Array1<A>>,
    /// Whether a layer above sends predictions, so `r_{i+1}` enters the gradient.
    pub has_above: bool,
    /// Step size as a fraction of the stability bound `1 / (|c| ‖W_i‖² + 1)`.
    pub step_scale: A,
    /// Rows (images) excluded from relaxation because their input is all zero.
    pub blank: Vec<bool>,
    /// 1 where a synapse exists and 0 where the connectivity has none;
    /// `None` when every synapse exists. Learning keeps missing ones at zero.
    pub mask: Option<Array2<A>>,
    /// Upper estimate of `‖W_i‖₂²`, refreshed whenever `w` changes.
    lipschitz: A,
}

/// The result of evaluating a layer: the messages it sends and the residuals
/// that decide whether it is settled.
#[derive(Clone, Debug)]
pub struct LayerEval<A> {
    /// `p_i = x_i W_i^T`, sent down to layer i−1.
    pub prediction: Array2<A>,
    /// `r̃_i`, the (lambda-scaled, on layer 1) residual of the layer below.
    pub residual: Array2<A>,
    /// `∂V/∂x_i`.
    pub gradient: Array2<A>,
    /// `‖p_1‖` per row (layer 1 only).
    pub norms: Option<Array1<A>>,
    /// Per row: max of |projected-gradient residual| and, on layer 1,
    /// `|‖p_1‖ − 1|`. Blank rows are zero.
    pub row_residual: Array1<A>,
    /// Per row: `|‖p_1‖ − 1|` on layer 1, zeros elsewhere.
    pub constraint: Array1<A>,
}

impl<A: NdFloat> LayerEval<A> {
    /// Returns the evaluation restricted to the rows `keep`, in that order.
    pub fn select_rows(&self, keep: &[usize]) -> LayerEval<A> {
        LayerEval {
            prediction: self.prediction.select(Axis(0), keep),
            residual: self.residual.select(Axis(0), keep),
            gradient: self.gradient.select(Axis(0), keep),
            norms: self.norms.as_ref().map(|n| n.select(Axis(0), keep)),
            row_residual: self.row_residual.select(Axis(0), keep),
            constraint: self.constraint.select(Axis(0), keep),
        }
    }

    /// Returns the largest row residual.
    pub fn max_residual(&self) -> A {
        self.row_residual.fold(A::zero(), |m, &v| m.max(v))
    }

    /// Returns whether any computed value is NaN or infinite.
    pub fn is_finite(&self) -> bool {
        self.row_residual.iter().all(|v| v.is_finite())
            && self.prediction.iter().all(|v| v.is_finite())
    }
}

impl<A: NdFloat> Layer<A> {
    /// Creates a layer with an empty batch. `w` must already have unit columns.
    pub fn new(index: usize, w: Array2<A>, alpha: A, has_above: bool, step_scale: A) -> Self {
        let mut layer = Layer {
            index,
            x: Array2::zeros((0, w.ncols())),
            w,
            alpha,
            lambda: None,
            has_above,
            step_scale,
            blank: Vec::new(),
            mask: None,
            lipschitz: A::one(),
        };
        layer.refresh_bound();
        layer
    }

    /// Recomputes the stability bound from the current weights.
    pub fn refresh_bound(&mut self) {
        let estimate = spectral_norm_squared(self.w.view(), POWER_ITERATIONS);
        self.lipschitz = estimate * cast(LIPSCHITZ_MARGIN);
    }

    /// Sets the feed-forward starting state for a new batch from the state of
    /// the layer below: `x_i = max(0, x_{i−1} W_i)`, rescaled per row.
    ///
    /// Layer 1 rescales so that `‖p_1‖ = 1` (starting at zero would make
    /// `lambda/‖p_1‖` singular) and starts `lambda` where complementary
    /// slackness would put it ignoring layer 2:
    /// `lambda = (p_1·x_0 − ‖p_1‖² − alpha ‖x_1‖₁) / ‖p_1‖`. A row whose
    /// feed-forward guess is all zero starts from the best-aligned column.
    /// Higher layers take the least-squares scale `x·p / p·p`. Rows whose
    /// input is all zero are marked blank, keep a zero code and never step.
    pub fn start(&mut self, below: ArrayView2<A>) {
        let mut x = below.dot(&self.w);
        x.mapv_inplace(|v| v.max(A::zero()));
        let below_norms = row_norms(below);
        self.blank = below_norms.iter().map(|&n| n <= tiny()).collect();
        if self.index == 1 {
            self.start_first_layer(below, &mut x);
        } else {
            let p = prediction(x.view(), self.w.view());
            for (b, mut row) in x.rows_mut().into_iter().enumerate() {
                let pp = p.row(b).dot(&p.row(b));
                let scale = if pp > tiny() {
                    below.row(b).dot(&p.row(b)) / pp
                } else {
                    A::zero()
                };
                row.mapv_inplace(|v| v * scale);
            }
        }
        self.x = x;
    }

    fn start_first_layer(&mut self, x0: ArrayView2<A>, x: &mut Array2<A>) {
        let batch = x0.nrows();
        let correlation = x0.dot(&self.w);
        for b in 0..batch {
            if self.blank[b] {
                x.row_mut(b).fill(A::zero());
                continue;
            }
            if x.row(b).iter().all(|&v| v <= A::zero()) {
                let best = argmax(correlation.row(b).iter().copied());
                x[[b, best]] = A::one();
            }
        }
        let p = prediction(x.view(), self.w.view());
        let norms = row_norms(p.view());
        let mut lambda = Array1::zeros(batch);
        for (b, mut row) in x.rows_mut().into_iter().enumerate() {
            if self.blank[b] || norms[b] <= tiny() {
                continue;
            }
            let norm = norms[b];
            row.mapv_inplace(|v| v / norm);
            let l1 = row.sum();
            let aligned = p.row(b).dot(&x0.row(b)) / norm;
            lambda[b] = aligned - A::one() - self.alpha * l1;
        }
        self.lambda = Some(lambda);
    }

    /// Evaluates the layer against the latest messages of its neighbours:
    /// `below` is `x_{i−1}` and `above` is `p_{i+1}` (required when
    /// `has_above`).
    pub fn evaluate(&self, below: ArrayView2<A>, above: Option<ArrayView2<A>>) -> LayerEval<A> {
        let p = prediction(self.x.view(), self.w.view());
        self.evaluate_with_prediction(below, above, p)
    }

    /// Evaluates like [`Layer::evaluate`] with the layer's own prediction
    /// `p = x W^T` already computed, as an actor has it after sending it.
    pub fn evaluate_with_prediction(
        &self,
        below: ArrayView2<A>,
        above: Option<ArrayView2<A>>,
        p: Array2<A>,
    ) -> LayerEval<A> {
        let batch = self.x.nrows();
        let (residual, norms) = match &self.lambda {
            Some(lambda) => {
                let norms = row_norms(p.view());
                (
                    scaled_residual(below, p.view(), norms.view(), lambda.view()),
                    Some(norms),
                )
            }
            None => (&below - &p, None),
        };
        let residual_above = above.map(|p_above| &self.x - &p_above);
        let gradient = state_gradient(
            residual.view(),
            self.w.view(),
            self.alpha,
            residual_above.as_ref().map(|r| r.view()),
        );
        let mut row_residual =
            row_max_abs(projected_residual(self.x.view(), gradient.view()).view());
        let mut constraint = Array1::zeros(batch);
        if let Some(norms) = &norms {
            Zip::from(&mut constraint)
                .and(norms)
                .for_each(|c, &n| *c = (n - A::one()).abs());
            Zip::from(&mut row_residual)
                .and(&constraint)
                .for_each(|r, &c| *r = r.max(c));
        }
        for (b, &blank) in self.blank.iter().enumerate() {
            if blank {
                row_residual[b] = A::zero();
                constraint[b] = A::zero();
            }
        }
        LayerEval {
            prediction: p,
            residual,
            gradient,
            norms,
            row_residual,
            constraint,
        }
    }

    /// Takes one projected-gradient step on every row whose residual is at
    /// least `tolerance` (rows below it stay frozen, so an image's code never
    /// depends on the other rows of its batch), plus a dual-ascent step
    /// `lambda += eta (‖p_1‖ − 1)` on layer 1. Returns how many rows moved.
    ///
    /// The per-row step is `eta = step_scale / (max(1, |c|) ‖W_i‖² + h)` with
    /// `c = 1 + lambda/‖p_1‖` on layer 1 and `c = 1` elsewhere. It is the
    /// inverse of a bound on the curvature of V in `x_i`. `h` is 1 when a
    /// layer above adds `½‖x_i − p_{i+1}‖²`, and 0 for the top layer.
    pub fn step(&mut self, eval: &LayerEval<A>, tolerance: A) -> usize {
        let mut moved = 0;
        let identity_term = if self.has_above { A::one() } else { A::zero() };
        for b in 0..self.x.nrows() {
            if self.blank.get(b).copied().unwrap_or(false) || eval.row_residual[b] < tolerance {
                continue;
            }
            moved += 1;
            let curvature_scale = match (&self.lambda, &eval.norms) {
                (Some(lambda), Some(norms)) if norms[b] > tiny() => {
                    (A::one() + lambda[b] / norms[b]).abs().max(A::one())
                }
                _ => A::one(),
            };
            let bound = (curvature_scale * self.lipschitz + identity_term).max(A::one());
            let eta = self.step_scale / bound;
            let gradient = eval.gradient.row(b);
            self.x
                .row_mut(b)
                .zip_mut_with(&gradient, |x, &g| *x = (*x - eta * g).max(A::zero()));
            if let (Some(lambda), Some(norms)) = (self.lambda.as_mut(), &eval.norms) {
                lambda[b] += eta * (norms[b] - A::one());
            }
        }
        moved
    }

    /// Applies equation 1 to the layer's own synapses,
    /// `W_i ← W_i − rate · (−2 r̃_i^T x_i / B)`, from the residual of the last
    /// evaluation and the layer's state, then renormalises the columns to unit
    /// norm. Returns the columns whose norm was zero (left unscaled).
    pub fn learn(&mut self, eval: &LayerEval<A>, rate: A) -> Vec<usize> {
        let mut gradient = weight_gradient(eval.residual.view(), self.x.view());
        if let Some(mask) = &self.mask {
            gradient *= mask;
        }
        self.w.scaled_add(-rate, &gradient);
        let zero_columns = normalize_columns(&mut self.w);
        self.refresh_bound();
        zero_columns
    }

    /// Replaces column `k` of `W_i` by `seed` scaled to unit norm. Returns
    /// false, leaving the column as it was, when the seed has zero norm.
    pub fn reseed_column(&mut self, k: usize, seed: ndarray::ArrayView1<A>) -> bool {
        let seed = match &self.mask {
            Some(mask) => &seed * &mask.column(k),
            None => seed.to_owned(),
        };
        let norm = seed.dot(&seed).sqrt();
        if norm <= tiny() || !norm.is_finite() {
            return false;
        }
        self.w.column_mut(k).assign(&seed.mapv(|v| v / norm));
        true
    }

    /// Keeps only the rows `keep` of the batch (state, lambda, blank flags),
    /// in that order.
    pub fn select_rows(&mut self, keep: &[usize]) {
        self.x = self.x.select(Axis(0), keep);
        if let Some(lambda) = &self.lambda {
            self.lambda = Some(lambda.select(Axis(0), keep));
        }
        if !self.blank.is_empty() {
            self.blank = keep.iter().map(|&b| self.blank[b]).collect();
        }
    }

    /// Counts, per unit, the rows in which it is active (`x > 0`).
    pub fn usage(&self) -> Array1<usize> {
        self.x
            .map(|&v| usize::from(v > A::zero()))
            .sum_axis(Axis(0))
    }

    /// Returns the upper estimate of `‖W_i‖₂²` used for the step size.
    pub fn lipschitz(&self) -> A {
        self.lipschitz
    }
}

fn argmax<A: NdFloat>(values: impl Iterator<Item = A>) -> usize {
    let mut best = (0, A::neg_infinity());
    for (k, v) in values.enumerate() {
        if v > best.1 {
            best = (k, v);
        }
    }
    best.0
}
