//! Claims about the actor runtime: it reaches the synchronous solver's fixed
//! point, learns the same weights, and its quiescence detector never fires
//! while a message is in flight or an actor is unsettled.

use std::time::Duration;

use ign::model::{Network, WeightInit, random_network};
use ign::relaxation::{Outcome, RelaxConfig};
use ign::runtime::{ActorNetwork, BatchOptions, DelayConfig, RuntimeConfig};
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

fn config(tolerance: f64, delay: Option<DelayConfig>) -> RuntimeConfig {
    RuntimeConfig {
        relax: RelaxConfig {
            tolerance,
            max_steps: 100_000,
            step_scale: 0.9,
            divergence_factor: 1e6,
        },
        timeout: Duration::from_secs(10),
        workers: 2,
        delay,
        ..Default::default()
    }
}

fn network() -> Network<f64> {
    random_network(&[16, 10, 6], &[0.02, 0.02], WeightInit::Uniform, 7)
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).mapv(f64::abs).fold(0.0, |m, &v| m.max(v))
}

#[test]
fn actors_reach_solver_fixed_point() {
    let network = network();
    let x0 = inputs(6, 16, 3);
    let tolerance = 1e-9;
    let mut solver = Solver::new(&network, config(tolerance, None).relax);
    let report = solver.relax(x0.view());
    assert_eq!(report.outcome, Outcome::Converged);
    let mut actors = ActorNetwork::spawn(&network, config(tolerance, None)).unwrap();
    let options = BatchOptions {
        rate: 0.0,
        reseed: false,
        return_state: true,
    };
    let result = actors.run_batch(x0.clone(), options).unwrap();
    assert_eq!(
        result.report.outcome,
        Outcome::Converged,
        "{:?}",
        result.report
    );
    assert!(result.report.max_residual < tolerance);
    for (layer, summary) in solver.layers.iter().zip(&result.layers) {
        let state = summary.state.as_ref().unwrap();
        let diff = max_abs_diff(&layer.x, state);
        assert!(diff < 1e-7, "layer {} differs by {diff}", layer.index);
    }
}

#[test]
fn actors_learn_same_weights_as_solver() {
    let network = network();
    let tolerance = 1e-10;
    let mut solver = Solver::new(&network, config(tolerance, None).relax);
    let mut actors = ActorNetwork::spawn(&network, config(tolerance, None)).unwrap();
    let mut last = Vec::new();
    for batch in 0..4 {
        let x0 = inputs(5, 16, 100 + batch);
        solver.relax(x0.view());
        solver.learn(0.5);
        let options = BatchOptions {
            rate: 0.5,
            reseed: false,
            return_state: false,
        };
        last = actors.run_batch(x0, options).unwrap().layers;
    }
    for (layer, summary) in solver.layers.iter().zip(&last) {
        let w = summary.weights.as_ref().unwrap();
        let diff = max_abs_diff(&layer.w, w);
        assert!(diff < 1e-6, "W{} differs by {diff}", layer.index);
        assert!(
            max_abs_diff(&layer.w, &network.weights[layer.index - 1]) > 1e-3,
            "W did not move"
        );
    }
}

#[test]
fn detector_never_fires_with_messages_in_flight() {
    let network = network();
    let tolerance = 1e-6;
    let delay = DelayConfig {
        max: Duration::from_micros(300),
        seed: 11,
    };
    let mut actors = ActorNetwork::spawn(&network, config(tolerance, Some(delay))).unwrap();
    let stats = actors.stats();
    let mut sent_before = 0;
    for relaxation in 0..40 {
        let x0 = inputs(4, 16, 1000 + relaxation);
        let options = BatchOptions {
            rate: 0.0,
            reseed: false,
            return_state: false,
        };
        let result = match actors.run_batch(x0, options) {
            Ok(r) => r,
            Err(e) => {
                let v: Vec<_> = stats.iter().map(|e| (*e.key(), *e.value())).collect();
                panic!("relaxation {relaxation}: {e}; stats {v:?}");
            }
        };
        // Read the live counters the detector never reads: at detection every
        // message sent must have been taken and every actor settled.
        let sent: u64 = stats.iter().map(|e| e.sent).sum();
        let received: u64 = stats.iter().map(|e| e.received).sum();
        assert_eq!(
            sent, received,
            "relaxation {relaxation}: message in flight at detection"
        );
        assert!(
            stats.iter().all(|e| e.settled),
            "relaxation {relaxation}: unsettled actor"
        );
        assert_eq!(result.report.outcome, Outcome::Converged);
        assert!(
            result.report.max_residual < tolerance,
            "{}",
            result.report.max_residual
        );
        assert!(result.detection.waves >= 2);
        // The report counts this relaxation's messages only.
        assert_eq!(result.report.messages, sent - sent_before);
        assert!(result.report.messages >= 3);
        sent_before = sent;
    }
}
