//! Learning bookkeeping that a layer does with its own data: counting which
//! units the images use, and reseeding units that no image used over a window
//! of mini-batches. The equation-1 step itself is [`crate::model::Layer::learn`].
//!
//! Invariant: a reseeded column is a residual row of the layer's own last
//! relaxation (what the layer failed to explain of the layer below), scaled
//! to unit norm. Reseeding is therefore as local as the equation-1 step, and
//! rows of zero norm are never used, so it never produces a zero column.

use ndarray::{Array1, ArrayView2, Axis, NdFloat};

use crate::model::Layer;

/// Per-unit activity counts since the window began.
#[derive(Clone, Debug)]
pub struct UsageWindow {
    pub counts: Array1<usize>,
    pub images: usize,
}

impl UsageWindow {
    pub fn new(units: usize) -> Self {
        UsageWindow {
            counts: Array1::zeros(units),
            images: 0,
        }
    }

    /// Adds one batch's per-unit counts of active rows.
    pub fn add(&mut self, usage: &Array1<usize>, images: usize) {
        self.counts += usage;
        self.images += images;
    }

    /// Returns the units no image used since the window began.
    pub fn unused(&self) -> Vec<usize> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == 0)
            .map(|(k, _)| k)
            .collect()
    }

    pub fn reset(&mut self) {
        self.counts.fill(0);
        self.images = 0;
    }
}

/// Replaces every unused unit's column of `W_i` by one of the largest rows of
/// `residual` (B x n_{i−1}), a different row per unit while rows last.
/// Returns the reseeded units; a unit is left as it is when no row with a
/// non-zero norm remains.
pub fn reseed_unused<A: NdFloat>(
    layer: &mut Layer<A>,
    residual: ArrayView2<A>,
    unused: &[usize],
) -> Vec<usize> {
    let norms = residual.map_axis(Axis(1), |row| row.dot(&row));
    let mut rows: Vec<usize> = (0..residual.nrows()).collect();
    rows.sort_by(|&a, &b| {
        norms[b]
            .partial_cmp(&norms[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut reseeded = Vec::new();
    for (&unit, &row) in unused.iter().zip(&rows) {
        if layer.reseed_column(unit, residual.row(row)) {
            reseeded.push(unit);
        }
    }
    if !reseeded.is_empty() {
        layer.refresh_bound();
    }
    reseeded
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn unused_units_take_largest_residual_rows() {
        let w = array![[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]];
        let mut layer = Layer::new(1, w, 0.1, false, 0.9);
        let residual = array![[0.0, 0.0], [3.0, 4.0], [0.0, 2.0]];
        let reseeded = reseed_unused(&mut layer, residual.view(), &[0, 2]);
        assert_eq!(reseeded, vec![0, 2]);
        assert_eq!(layer.w.column(0), array![0.6, 0.8]);
        assert_eq!(layer.w.column(2), array![0.0, 1.0]);
        assert_eq!(layer.w.column(1), array![0.0, 1.0]);
    }

    #[test]
    fn zero_residual_never_reseeds() {
        let w = array![[1.0], [0.0]];
        let mut layer = Layer::new(1, w, 0.1, false, 0.9);
        let residual = array![[0.0, 0.0]];
        assert!(reseed_unused(&mut layer, residual.view(), &[0]).is_empty());
        assert_eq!(layer.w.column(0), array![1.0, 0.0]);
    }
}
