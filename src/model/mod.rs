//! The hierarchical sparse coder of Rolfe, Cook and LeCun, "Intrinsic gradient
//! networks" (2011): its potential, loss, gradients and the equation-1 weight
//! gradient. Pure math on ndarray arrays: no I/O, no async, no scheduling.
//!
//! Notation (batched, one row per image, `B` rows):
//!
//! ```text
//! x_0            clamped input, B x n_0, each row of unit L2 norm
//! x_i >= 0       layer i, B x n_i                            (i = 1 .. n)
//! W_i            n_{i-1} x n_i, maps layer i down onto layer i-1
//! p_i = W_i x_i  prediction of layer i-1, in rows: x_i W_i^T (B x n_{i-1})
//! lambda         one Lagrange multiplier per image (length B)
//!
//! V = lambda (‖p_1‖ − 1) + Σ_i [ ½‖x_{i−1} − p_i‖² + alpha_i ‖x_i‖₁ ]
//! L = ½‖x_0 − p_1‖² + Σ_i alpha_i ‖x_i‖₁ − lambda
//!
//! r_i  = x_{i−1} − p_i                                 (i > 1)
//! r̃_1  = x_0 − (1 + lambda / ‖p_1‖) p_1                (the lambda-scaled residual)
//! ∂V/∂x_i    = −r̃_i W_i + alpha_i + r_{i+1}            (r_{n+1} = 0)
//! ∂V/∂lambda = ‖p_1‖ − 1
//! dL/dW_i    = −2 r̃_i^T x_i / B                        (equation 1, batch mean)
//! ```
//!
//! Equation 1 is the total derivative of L at a stationary point of V: there,
//! complementary slackness telescopes through the layers to
//! `L = 2V − ½‖x_0‖² + ½`, and the envelope theorem turns `dV*/dW` into the
//! partial derivative `∂V/∂W`. Invariant: every function here is a function of
//! one layer's own arrays and its neighbours' messages (`x_{i−1}` from below,
//! `p_{i+1}` from above), which is what lets an actor own a layer.

pub mod init;
mod layer;

pub use init::{WeightInit, random_network, restrict};
pub use layer::{Layer, LayerEval};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, NdFloat, Zip};

/// Smallest norm treated as non-zero: a column or prediction below it is never
/// divided by.
pub fn tiny<A: NdFloat>() -> A {
    A::from(1e-12).unwrap_or_else(A::epsilon)
}

/// Converts an `f64` constant into the network's float type.
pub fn cast<A: NdFloat>(value: f64) -> A {
    A::from(value).unwrap_or_else(A::zero)
}

/// Computes the predictions `p = x W^T` (B x n_below) of a layer with state `x`
/// (B x n) and weights `w` (n_below x n).
pub fn prediction<A: NdFloat>(x: ArrayView2<A>, w: ArrayView2<A>) -> Array2<A> {
    x.dot(&w.t())
}

/// Computes the L2 norm of every row.
pub fn row_norms<A: NdFloat>(a: ArrayView2<A>) -> Array1<A> {
    a.map_axis(Axis(1), |row| row.dot(&row).sqrt())
}

/// Computes the lambda-scaled first residual `r̃_1 = x_0 − (1 + lambda/‖p_1‖) p_1`
/// from the input, the first layer's prediction and its norms. A zero-norm
/// prediction row gets the plain residual, since `lambda/‖p_1‖` is singular there.
pub fn scaled_residual<A: NdFloat>(
    x0: ArrayView2<A>,
    p1: ArrayView2<A>,
    p1_norms: ArrayView1<A>,
    lambda: ArrayView1<A>,
) -> Array2<A> {
    let mut residual = x0.to_owned();
    for (b, mut row) in residual.rows_mut().into_iter().enumerate() {
        let norm = p1_norms[b];
        let scale = if norm > tiny() {
            A::one() + lambda[b] / norm
        } else {
            A::one()
        };
        row.scaled_add(-scale, &p1.row(b));
    }
    residual
}

/// Computes `∂V/∂x_i = −r̃_i W_i + alpha_i + r_{i+1}` for one layer, where
/// `residual_above` is `r_{i+1} = x_i − p_{i+1}` (absent for the top layer).
pub fn state_gradient<A: NdFloat>(
    residual: ArrayView2<A>,
    w: ArrayView2<A>,
    alpha: A,
    residual_above: Option<ArrayView2<A>>,
) -> Array2<A> {
    let mut gradient = residual.dot(&w);
    gradient.mapv_inplace(|g| alpha - g);
    if let Some(above) = residual_above {
        gradient += &above;
    }
    gradient
}

/// Computes the projected-gradient residual `x − max(0, x − g)` of a
/// non-negative state: zero exactly at a stationary point of V over `x >= 0`.
pub fn projected_residual<A: NdFloat>(x: ArrayView2<A>, gradient: ArrayView2<A>) -> Array2<A> {
    let mut out = Array2::zeros(x.raw_dim());
    Zip::from(&mut out)
        .and(x)
        .and(gradient)
        .for_each(|o, &x, &g| {
            let stepped = x - g;
            *o = x - if stepped > A::zero() {
                stepped
            } else {
                A::zero()
            };
        });
    out
}

/// Computes the maximum absolute value of every row.
pub fn row_max_abs<A: NdFloat>(a: ArrayView2<A>) -> Array1<A> {
    a.map_axis(Axis(1), |row| row.fold(A::zero(), |m, &v| m.max(v.abs())))
}

/// Computes equation 1, `dL/dW_i = −2 r̃_i^T x_i / B` (n_{i−1} x n_i), the batch
/// mean of the per-image weight gradients of L at a fixed point.
pub fn weight_gradient<A: NdFloat>(residual: ArrayView2<A>, x: ArrayView2<A>) -> Array2<A> {
    let batch = cast::<A>(x.nrows().max(1) as f64);
    residual.t().dot(&x) * (cast::<A>(-2.0) / batch)
}

/// Scales every column of `w` to unit L2 norm and returns the indices of the
/// columns left unchanged because their norm was below [`tiny`].
pub fn normalize_columns<A: NdFloat>(w: &mut Array2<A>) -> Vec<usize> {
    let mut zero_columns = Vec::new();
    for (k, mut column) in w.columns_mut().into_iter().enumerate() {
        let norm = column.dot(&column).sqrt();
        if norm > tiny() {
            column.mapv_inplace(|v| v / norm);
        } else {
            zero_columns.push(k);
        }
    }
    zero_columns
}

/// Estimates the squared spectral norm `‖W‖₂²` (the largest eigenvalue of
/// `W^T W`) by power iteration from the all-ones vector. The estimate never
/// exceeds the true value, so callers add a safety margin.
pub fn spectral_norm_squared<A: NdFloat>(w: ArrayView2<A>, iterations: usize) -> A {
    let mut v = Array1::<A>::ones(w.ncols());
    let mut estimate = A::zero();
    for _ in 0..iterations {
        let wv = w.dot(&v);
        let u = w.t().dot(&wv);
        let norm = u.dot(&u).sqrt();
        if norm <= tiny() {
            return A::zero();
        }
        estimate = wv.dot(&wv) / v.dot(&v);
        v = u / norm;
    }
    let wv = w.dot(&v);
    estimate.max(wv.dot(&wv))
}

/// A whole network's parameters: `weights[i]` is `W_{i+1}` (n_i x n_{i+1}) and
/// `alpha[i]` the sparsity weight of layer i+1.
#[derive(Clone, Debug)]
pub struct Network<A> {
    pub weights: Vec<Array2<A>>,
    pub alpha: Vec<A>,
}

impl<A: NdFloat> Network<A> {
    /// Returns the layer sizes, input first.
    pub fn sizes(&self) -> Vec<usize> {
        let mut sizes = vec![self.weights[0].nrows()];
        sizes.extend(self.weights.iter().map(|w| w.ncols()));
        sizes
    }

    /// Converts the parameters to another float type.
    pub fn cast<B: NdFloat>(&self) -> Network<B> {
        let convert = |v: &A| B::from(*v).unwrap_or_else(B::zero);
        Network {
            weights: self.weights.iter().map(|w| w.map(convert)).collect(),
            alpha: self.alpha.iter().map(convert).collect(),
        }
    }
}

/// The state of every layer for a batch: `x[0]` is the clamped input and
/// `x[i]` layer i; `lambda` has one entry per row.
#[derive(Clone, Debug)]
pub struct State<A> {
    pub x: Vec<Array2<A>>,
    pub lambda: Array1<A>,
}

/// Per-image values of V and L and the terms they share, computed from a state.
#[derive(Clone, Debug)]
pub struct Energies<A> {
    pub potential: Array1<A>,
    pub loss: Array1<A>,
}

/// Computes V and L for every image of a state.
pub fn energies<A: NdFloat>(network: &Network<A>, state: &State<A>) -> Energies<A> {
    let batch = state.lambda.len();
    let half = cast::<A>(0.5);
    let mut potential = Array1::zeros(batch);
    let mut loss = Array1::zeros(batch);
    for (i, w) in network.weights.iter().enumerate() {
        let x = &state.x[i + 1];
        let p = prediction(x.view(), w.view());
        let r = &state.x[i] - &p;
        let squared = r.map_axis(Axis(1), |row| row.dot(&row)) * half;
        let sparsity = x.sum_axis(Axis(1)) * network.alpha[i];
        potential = potential + &squared + &sparsity;
        loss += &sparsity;
        if i == 0 {
            loss = loss + &squared - &state.lambda;
            let constraint = row_norms(p.view()).mapv(|n| n - A::one());
            potential += &(&state.lambda * &constraint);
        }
    }
    Energies { potential, loss }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn projected_residual_inside_and_at_bound() {
        let x = array![[1.0, 0.0, 0.0]];
        let g = array![[0.25, 2.0, -0.5]];
        let r = projected_residual(x.view(), g.view());
        assert_eq!(r, array![[0.25, 0.0, -0.5]]);
    }

    #[test]
    fn zero_column_is_reported_not_divided() {
        let mut w = array![[3.0, 0.0], [4.0, 0.0]];
        let zero = normalize_columns(&mut w);
        assert_eq!(zero, vec![1]);
        assert_eq!(w, array![[0.6, 0.0], [0.8, 0.0]]);
    }

    #[test]
    fn spectral_norm_of_diagonal() {
        let w = array![[3.0, 0.0], [0.0, 1.0]];
        let s: f64 = spectral_norm_squared(w.view(), 50);
        assert!((s - 9.0).abs() < 1e-9, "{s}");
    }

    #[test]
    fn scaled_residual_with_zero_lambda_is_plain() {
        let x0 = array![[1.0, 0.0]];
        let p = array![[0.5, 0.5]];
        let norms = row_norms(p.view());
        let r = scaled_residual(x0.view(), p.view(), norms.view(), array![0.0].view());
        assert_eq!(r, array![[0.5, -0.5]]);
        let lambda = array![-(0.5f64.sqrt())];
        let r = scaled_residual(x0.view(), p.view(), norms.view(), lambda.view());
        assert!(
            (r[[0, 0]] - 1.0).abs() < 1e-12 && r[[0, 1]].abs() < 1e-12,
            "{r}"
        );
    }
}
