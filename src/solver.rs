//! The batched synchronous relaxation: every layer evaluates against the
//! previous iterate of its neighbours, then all layers step together (a Jacobi
//! schedule with a global clock). It is the yardstick the actors are compared
//! with, and the fast path for encoding a dataset.
//!
//! Invariant: a row that is settled in every layer never moves again, so the
//! code of an image depends only on that image, not on its batch.

use ndarray::{Array1, Array2, ArrayView2, Axis, NdFloat};

use crate::model::{Layer, LayerEval, Network, State, cast};
use crate::relaxation::{Outcome, RelaxConfig, RelaxReport};

/// A network held as layers, relaxed and trained with a global clock.
#[derive(Clone, Debug)]
pub struct Solver<A> {
    pub layers: Vec<Layer<A>>,
    /// The clamped input of the last relaxation.
    pub input: ndarray::Array2<A>,
    /// Each layer's evaluation at the end of the last relaxation.
    pub evals: Vec<LayerEval<A>>,
    pub config: RelaxConfig,
}

/// Builds the layers of a network, layer 1 first.
pub fn build_layers<A: NdFloat>(network: &Network<A>, config: &RelaxConfig) -> Vec<Layer<A>> {
    let count = network.weights.len();
    network
        .weights
        .iter()
        .zip(&network.alpha)
        .enumerate()
        .map(|(i, (w, &alpha))| {
            Layer::new(
                i + 1,
                w.clone(),
                alpha,
                i + 1 < count,
                cast(config.step_scale),
            )
        })
        .collect()
}

impl<A: NdFloat> Solver<A> {
    pub fn new(network: &Network<A>, config: RelaxConfig) -> Self {
        Solver {
            layers: build_layers(network, &config),
            input: ndarray::Array2::zeros((0, network.weights[0].nrows())),
            evals: Vec::new(),
            config,
        }
    }

    /// Returns the current weights and sparsity weights.
    pub fn network(&self) -> Network<A> {
        Network {
            weights: self.layers.iter().map(|l| l.w.clone()).collect(),
            alpha: self.layers.iter().map(|l| l.alpha).collect(),
        }
    }

    /// Returns the state reached by the last relaxation.
    pub fn state(&self) -> State<A> {
        let mut x = vec![self.input.clone()];
        x.extend(self.layers.iter().map(|l| l.x.clone()));
        let lambda = self.layers[0]
            .lambda
            .clone()
            .unwrap_or_else(|| ndarray::Array1::zeros(0));
        State { x, lambda }
    }

    /// Relaxes the network on a batch `x0` (one image per row, unit norm or
    /// zero) from the feed-forward starting state.
    pub fn relax(&mut self, x0: ArrayView2<A>) -> RelaxReport {
        self.input = x0.to_owned();
        self.start();
        self.iterate()
    }

    /// Sets every layer's feed-forward starting state, bottom up.
    pub fn start(&mut self) {
        for i in 0..self.layers.len() {
            let below = if i == 0 {
                self.input.clone()
            } else {
                self.layers[i - 1].x.clone()
            };
            self.layers[i].start(below.view());
        }
    }

    /// Iterates from the current state until every layer is settled, a layer
    /// reaches the step cap, or the residual diverges.
    ///
    /// Rows settled in every layer never move again, so once they make up a
    /// quarter of the working set they are set aside and the remaining rows
    /// iterate in smaller matrices. They are put back before returning.
    pub fn iterate(&mut self) -> RelaxReport {
        let tolerance: A = cast(self.config.tolerance);
        let mut updates = vec![0; self.layers.len()];
        let full_input = self.input.clone();
        let mut done = SetAside::new(&self.layers);
        let mut rows: Vec<usize> = (0..self.input.nrows()).collect();

        let mut evals = self.evaluate_all();
        let start = max_residual(&evals).max(tolerance);
        let limit = start * cast(self.config.divergence_factor);
        let mut outcome = Outcome::Converged;
        loop {
            let residual = max_residual(&evals);
            if !evals.iter().all(LayerEval::is_finite) || residual > limit {
                outcome = Outcome::Diverged;
                break;
            }
            if residual < tolerance {
                break;
            }
            if updates.iter().any(|&u| u >= self.config.max_steps) {
                outcome = Outcome::Capped;
                break;
            }
            for (i, layer) in self.layers.iter_mut().enumerate() {
                if layer.step(&evals[i], tolerance) > 0 {
                    updates[i] += 1;
                }
            }
            evals = self.evaluate_all();

            let settled: Vec<usize> = (0..rows.len())
                .filter(|&b| evals.iter().all(|e| e.row_residual[b] < tolerance))
                .collect();
            if settled.len() * 4 >= rows.len() && settled.len() < rows.len() {
                let keep = done.take(&mut self.layers, &settled, &mut rows);
                self.input = self.input.select(Axis(0), &keep);
                evals = evals.iter().map(|e| e.select_rows(&keep)).collect();
            }
        }

        done.restore(&mut self.layers, &rows);
        self.input = full_input;
        let evals = self.evaluate_all();
        let report = summarize(&evals, outcome, updates, tolerance, &self.layers[0], 0);
        self.evals = evals;
        report
    }

    /// Evaluates every layer against the current states of its neighbours.
    fn evaluate_all(&self) -> Vec<LayerEval<A>> {
        let count = self.layers.len();
        let mut evals: Vec<Option<LayerEval<A>>> = vec![None; count];
        for i in (0..count).rev() {
            let below = if i == 0 {
                self.input.view()
            } else {
                self.layers[i - 1].x.view()
            };
            let above = evals
                .get(i + 1)
                .and_then(|e| e.as_ref())
                .map(|e| e.prediction.view());
            evals[i] = Some(self.layers[i].evaluate(below, above));
        }
        evals.into_iter().flatten().collect()
    }

    /// Applies equation 1 to every layer at the last relaxation's end state.
    /// Returns, per layer, the columns whose norm was zero.
    pub fn learn(&mut self, rate: f64) -> Vec<Vec<usize>> {
        let rate: A = cast(rate);
        self.layers
            .iter_mut()
            .zip(&self.evals)
            .map(|(layer, eval)| layer.learn(eval, rate))
            .collect()
    }
}

/// Returns the largest row residual of all layers.
pub fn max_residual<A: NdFloat>(evals: &[LayerEval<A>]) -> A {
    evals.iter().fold(A::zero(), |m, e| m.max(e.max_residual()))
}

/// Builds the report of a finished relaxation from its final evaluations.
pub fn summarize<A: NdFloat>(
    evals: &[LayerEval<A>],
    outcome: Outcome,
    layer_updates: Vec<usize>,
    tolerance: A,
    first: &Layer<A>,
    messages: u64,
) -> RelaxReport {
    let to_f64 = |v: A| v.to_f64().unwrap_or(f64::NAN);
    let rows = first.x.nrows();
    let rows_above_tolerance = (0..rows)
        .filter(|&b| {
            evals
                .iter()
                .any(|e| e.row_residual[b] >= tolerance || e.row_residual[b].is_nan())
        })
        .count();
    let constraint = evals[0].constraint.fold(A::zero(), |m, &v| m.max(v));
    RelaxReport {
        outcome,
        layer_updates,
        max_residual: to_f64(max_residual(evals)),
        max_constraint_violation: to_f64(constraint),
        rows_above_tolerance,
        blank_rows: first.blank.iter().filter(|&&b| b).count(),
        messages,
    }
}

/// Full-batch copies of every layer's state, into which rows are written as
/// they are set aside.
struct SetAside<A> {
    x: Vec<Array2<A>>,
    lambda: Option<Array1<A>>,
    /// Every layer's blank-row flags, which do not change during iteration.
    blank: Vec<Vec<bool>>,
}

impl<A: NdFloat> SetAside<A> {
    fn new(layers: &[Layer<A>]) -> Self {
        SetAside {
            x: layers.iter().map(|l| l.x.clone()).collect(),
            lambda: layers[0].lambda.clone(),
            blank: layers.iter().map(|l| l.blank.clone()).collect(),
        }
    }

    /// Copies the working rows `settled` into the full arrays, removes them
    /// from the working set and from `rows` (working row to batch row), and
    /// returns the working rows kept.
    fn take(
        &mut self,
        layers: &mut [Layer<A>],
        settled: &[usize],
        rows: &mut Vec<usize>,
    ) -> Vec<usize> {
        self.copy_rows(layers, settled, rows);
        let keep: Vec<usize> = (0..rows.len()).filter(|b| !settled.contains(b)).collect();
        for layer in layers.iter_mut() {
            layer.select_rows(&keep);
        }
        *rows = keep.iter().map(|&b| rows[b]).collect();
        keep
    }

    /// Copies the remaining working rows back and gives the layers their
    /// full-batch state again.
    fn restore(mut self, layers: &mut [Layer<A>], rows: &[usize]) {
        let all: Vec<usize> = (0..rows.len()).collect();
        self.copy_rows(layers, &all, rows);
        for ((layer, x), blank) in layers.iter_mut().zip(self.x).zip(self.blank) {
            layer.x = x;
            layer.blank = blank;
        }
        layers[0].lambda = self.lambda;
    }

    fn copy_rows(&mut self, layers: &[Layer<A>], working: &[usize], rows: &[usize]) {
        for (full, layer) in self.x.iter_mut().zip(layers) {
            for &b in working {
                full.row_mut(rows[b]).assign(&layer.x.row(b));
            }
        }
        if let (Some(full), Some(lambda)) = (self.lambda.as_mut(), layers[0].lambda.as_ref()) {
            for &b in working {
                full[rows[b]] = lambda[b];
            }
        }
    }
}
