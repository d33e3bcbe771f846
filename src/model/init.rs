//! Random starting weights, seeded so that a run can be repeated exactly.

use ndarray::{Array2, NdFloat};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;

use super::{Network, cast, normalize_columns};

/// The distribution of the entries of a random `W_i` before its columns are
/// scaled to unit norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightInit {
    /// Independent standard normal entries: columns nearly orthogonal, so the
    /// step-size bound `‖W‖²` starts near `(√n_i + √n_{i−1})² / n_{i−1}`.
    Gaussian,
    /// Independent uniform entries on [0, 1): every column positive.
    Uniform,
}

/// Builds a network with layer sizes `sizes` (input first), one sparsity
/// weight per layer above the input and seeded random unit-norm columns.
pub fn random_network<A: NdFloat>(
    sizes: &[usize],
    alpha: &[f64],
    init: WeightInit,
    seed: u64,
) -> Network<A> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let weights = sizes
        .windows(2)
        .map(|pair| {
            let mut w = Array2::from_shape_simple_fn((pair[0], pair[1]), || {
                let value: f64 = match init {
                    WeightInit::Gaussian => rng.sample(StandardNormal),
                    WeightInit::Uniform => rng.random::<f64>(),
                };
                cast::<A>(value)
            });
            // A column of all zeros has probability zero for both distributions.
            normalize_columns(&mut w);
            w
        })
        .collect();
    Network {
        weights,
        alpha: alpha.iter().map(|&a| cast(a)).collect(),
    }
}

/// Removes the synapses that `masks` (one `n_{i−1} x n_i` mask per layer,
/// true where a synapse exists) does not allow, then rescales the columns to
/// unit norm. Returns the columns left with no synapse of non-zero weight.
pub fn restrict<A: NdFloat>(network: &mut Network<A>, masks: &[Array2<bool>]) -> Vec<Vec<usize>> {
    network
        .weights
        .iter_mut()
        .zip(masks)
        .map(|(w, mask)| {
            w.zip_mut_with(mask, |v, &keep| {
                if !keep {
                    *v = A::zero();
                }
            });
            normalize_columns(w)
        })
        .collect()
}
