//! Claims about granularity: one actor per layer, per block of units or per
//! unit, the same network and input reach the synchronous solver's fixed
//! point, with dense and with windowed connectivity, and learn the same
//! weights.

use std::time::Duration;

use ign::model::{Network, WeightInit, random_network, restrict};
use ign::relaxation::{Outcome, RelaxConfig};
use ign::runtime::{
    ActorNetwork, BatchOptions, Connectivity, DelayConfig, Granularity, RuntimeConfig,
};
use ign::solver::Solver;
use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

fn inputs(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Array2::from_shape_simple_fn((rows, cols), || rng.random::<f64>());
    for mut row in x.rows_mut() {
        let norm = row.dot(&row).sqrt();
        row.mapv_inplace(|v| v / norm);
    }
    x
}

fn config(granularity: Granularity, connectivity: &[Connectivity]) -> RuntimeConfig {
    RuntimeConfig {
        relax: RelaxConfig {
            tolerance: 1e-9,
            max_steps: 100_000,
            step_scale: 0.9,
            divergence_factor: 1e6,
        },
        timeout: Duration::from_secs(20),
        workers: 2,
        granularity,
        connectivity: connectivity.to_vec(),
        ..Default::default()
    }
}

fn network(connectivity: &[Connectivity]) -> Network<f64> {
    let sizes = [16, 10, 6];
    let mut network = random_network(&sizes, &[0.02, 0.02], WeightInit::Uniform, 7);
    let masks: Vec<_> = connectivity
        .iter()
        .enumerate()
        .map(|(i, c)| c.mask(sizes[i], sizes[i + 1]))
        .collect();
    restrict(&mut network, &masks);
    network
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).mapv(f64::abs).fold(0.0, |m, &v| m.max(v))
}

const STATE: BatchOptions = BatchOptions {
    rate: 0.0,
    reseed: false,
    return_state: true,
};

/// Relaxes at `granularity` and returns the largest state difference from
/// the solver's fixed point.
fn distance_to_solver(granularity: Granularity, connectivity: &[Connectivity]) -> f64 {
    let network = network(connectivity);
    let x0 = inputs(5, 16, 3);
    let runtime = config(granularity, connectivity);
    let mut solver = Solver::new(&network, runtime.relax);
    assert_eq!(solver.relax(x0.view()).outcome, Outcome::Converged);
    let mut actors = ActorNetwork::spawn(&network, runtime).unwrap();
    let result = actors.run_batch(x0, STATE).unwrap();
    assert_eq!(
        result.report.outcome,
        Outcome::Converged,
        "{granularity}: {:?}",
        result.report
    );
    assert!(
        result.report.max_residual < 1e-9,
        "{granularity}: residual {}",
        result.report.max_residual
    );
    solver
        .layers
        .iter()
        .zip(&result.layers)
        .map(|(layer, summary)| max_abs_diff(&layer.x, summary.state.as_ref().unwrap()))
        .fold(0.0, f64::max)
}

#[test]
fn three_granularities_same_fixed_point() {
    let dense = [Connectivity::Dense, Connectivity::Dense];
    for granularity in [Granularity::Layer, Granularity::Block(3), Granularity::Unit] {
        let diff = distance_to_solver(granularity, &dense);
        assert!(diff < 1e-7, "{granularity}: state differs by {diff}");
    }
}

#[test]
fn windowed_units_same_fixed_point() {
    let windowed = [Connectivity::Window(6), Connectivity::Window(4)];
    for granularity in [Granularity::Layer, Granularity::Unit] {
        let diff = distance_to_solver(granularity, &windowed);
        assert!(diff < 1e-7, "{granularity}: state differs by {diff}");
    }
}

#[test]
fn delayed_units_same_fixed_point() {
    let dense = [Connectivity::Dense, Connectivity::Dense];
    let network = network(&dense);
    let x0 = inputs(2, 16, 11);
    let mut runtime = config(Granularity::Unit, &dense);
    // Every delayed message is a timer task, so a looser tolerance keeps the
    // relaxation short; the state still has to match to 1e-5.
    runtime.relax.tolerance = 1e-7;
    runtime.timeout = Duration::from_secs(120);
    runtime.delay = Some(DelayConfig {
        max: Duration::from_micros(100),
        seed: 5,
    });
    let mut solver = Solver::new(&network, runtime.relax);
    solver.relax(x0.view());
    let mut actors = ActorNetwork::spawn(&network, runtime).unwrap();
    let result = actors.run_batch(x0, STATE).unwrap();
    assert_eq!(result.report.outcome, Outcome::Converged);
    for (layer, summary) in solver.layers.iter().zip(&result.layers) {
        let diff = max_abs_diff(&layer.x, summary.state.as_ref().unwrap());
        assert!(diff < 1e-5, "layer {} differs by {diff}", layer.index);
    }
}

#[test]
fn units_learn_layer_weights() {
    let windowed = [Connectivity::Window(6), Connectivity::Dense];
    let network = network(&windowed);
    let masks = windowed[0].mask(16, 10);
    let options = BatchOptions {
        rate: 0.5,
        reseed: false,
        return_state: false,
    };
    let mut weights = Vec::new();
    for granularity in [Granularity::Layer, Granularity::Unit] {
        let mut actors = ActorNetwork::spawn(&network, config(granularity, &windowed)).unwrap();
        let mut last = None;
        for seed in 0..3 {
            let result = actors.run_batch(inputs(4, 16, 20 + seed), options).unwrap();
            assert_eq!(result.report.outcome, Outcome::Converged);
            last = Some(result.layers[0].weights.as_ref().unwrap().as_ref().clone());
        }
        weights.push(last.unwrap());
    }
    let diff = max_abs_diff(&weights[0], &weights[1]);
    assert!(diff < 1e-6, "weights differ by {diff}");
    let moved = max_abs_diff(&weights[0], &network.weights[0]);
    assert!(moved > 1e-3, "learning moved the weights by only {moved}");
    // Synapses outside the windows stay absent.
    for ((j, k), &allowed) in masks.indexed_iter() {
        if !allowed {
            assert_eq!(weights[1][[j, k]], 0.0, "synapse {j},{k} appeared");
        }
    }
}
