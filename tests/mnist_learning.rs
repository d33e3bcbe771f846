//! A short run on real MNIST digits: the layer actors, learning only from
//! equation 1 at each detected output state, reduce the reconstruction error.

use std::path::Path;
use std::time::Duration;

use ign::data::load_splits;
use ign::experiment::unit_rows;
use ign::model::{Network, WeightInit, random_network};
use ign::relaxation::{Outcome, RelaxConfig};
use ign::runtime::{ActorNetwork, BatchOptions, RuntimeConfig};
use ndarray::s;

#[test]
fn actors_reduce_reconstruction_error_on_mnist() {
    let cache = tempfile::tempdir().unwrap();
    let splits = load_splits(Path::new("data/mnist"), cache.path()).unwrap();
    let network: Network<f32> =
        random_network(&[784, 100, 50], &[0.05, 0.01], WeightInit::Gaussian, 3);
    let config = RuntimeConfig {
        relax: RelaxConfig {
            tolerance: 1e-2,
            max_steps: 400,
            step_scale: 0.9,
            divergence_factor: 1e4,
        },
        timeout: Duration::from_secs(60),
        workers: 2,
        delay: None,
        ..Default::default()
    };
    let mut actors = ActorNetwork::spawn(&network, config).unwrap();
    let batch = 50;
    let mut errors = Vec::new();
    for b in 0..12 {
        let x0 = unit_rows(
            &splits
                .train
                .images
                .slice(s![b * batch..(b + 1) * batch, ..])
                .to_owned(),
        );
        let options = BatchOptions {
            rate: 4.0,
            reseed: false,
            return_state: false,
        };
        let result = actors.run_batch(x0, options).unwrap();
        assert_ne!(result.report.outcome, Outcome::Diverged);
        let reconstruction = &result.layers[0].reconstruction;
        errors.push(reconstruction.iter().sum::<f64>() / reconstruction.len() as f64);
    }
    let first = errors[0];
    let last = (errors[9] + errors[10] + errors[11]) / 3.0;
    assert!(
        last < 0.75 * first,
        "reconstruction error went from {first} to {last}: {errors:?}"
    );
}
