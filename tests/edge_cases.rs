//! Numerical edge cases: blank images, step sizes above the stability bound,
//! and codes that do not depend on the rest of their mini-batch.

use std::time::Duration;

use ign::model::{Network, WeightInit, random_network};
use ign::relaxation::{Outcome, RelaxConfig};
use ign::runtime::{ActorNetwork, BatchOptions, RuntimeConfig};
use ign::solver::Solver;
use ndarray::{Array2, s};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

fn inputs(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Array2::from_shape_simple_fn((rows, cols), || rng.random::<f32>());
    for mut row in x.rows_mut() {
        let norm = row.dot(&row).sqrt();
        row.mapv_inplace(|v| v / norm);
    }
    x
}

fn network() -> Network<f32> {
    random_network(&[64, 32, 16], &[0.05, 0.01], WeightInit::Gaussian, 5)
}

fn relax_config(step_scale: f64) -> RelaxConfig {
    RelaxConfig {
        tolerance: 1e-4,
        max_steps: 5000,
        step_scale,
        divergence_factor: 1e4,
    }
}

#[test]
fn blank_image_gets_zero_code_and_no_nan() {
    let mut x0 = inputs(3, 64, 1);
    x0.row_mut(1).fill(0.0);
    let mut solver = Solver::new(&network(), relax_config(0.9));
    let report = solver.relax(x0.view());
    assert_eq!(report.outcome, Outcome::Converged);
    assert_eq!(report.blank_rows, 1);
    for layer in &solver.layers {
        assert!(layer.x.iter().all(|v| v.is_finite()));
        assert!(
            layer.x.row(1).iter().all(|&v| v == 0.0),
            "layer {}",
            layer.index
        );
        assert!(
            layer.x.row(0).iter().any(|&v| v > 0.0),
            "layer {}",
            layer.index
        );
    }
    let lambda = solver.layers[0].lambda.as_ref().unwrap();
    assert_eq!(lambda[1], 0.0);
    let zero_columns = solver.learn(1.0);
    assert!(zero_columns.iter().all(Vec::is_empty));
    assert!(
        solver
            .layers
            .iter()
            .all(|l| l.w.iter().all(|v| v.is_finite()))
    );
}

#[test]
fn code_does_not_depend_on_batch() {
    let network = network();
    let images = inputs(12, 64, 2);
    let mut solver = Solver::new(&network, relax_config(0.9));
    solver.relax(images.view());
    let whole: Vec<Array2<f32>> = solver.layers.iter().map(|l| l.x.clone()).collect();
    // The same images in other company: alone, and in a batch of four with
    // other images around them.
    for (rows, extra_seed) in [(0..1, 10), (5..8, 11), (11..12, 12)] {
        let others = inputs(4, 64, extra_seed);
        let mut batch = others.clone();
        batch
            .slice_mut(s![1..1 + rows.len(), ..])
            .assign(&images.slice(s![rows.clone(), ..]));
        solver.relax(batch.view());
        for (layer, expected) in solver.layers.iter().zip(&whole) {
            let got = layer.x.slice(s![1..1 + rows.len(), ..]);
            let want = expected.slice(s![rows.clone(), ..]);
            let diff = (&got - &want).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
            assert!(
                diff <= 1e-6,
                "layer {} rows {rows:?} differ by {diff}",
                layer.index
            );
        }
    }
}

#[test]
fn solver_reports_divergence_above_stability_bound() {
    let mut solver = Solver::new(&network(), relax_config(5.0));
    let report = solver.relax(inputs(4, 64, 3).view());
    assert_eq!(report.outcome, Outcome::Diverged);
    assert!(report.max_residual.is_finite());
}

#[test]
fn actors_report_divergence_above_stability_bound() {
    let config = RuntimeConfig {
        relax: relax_config(5.0),
        timeout: Duration::from_secs(30),
        workers: 2,
        delay: None,
        ..Default::default()
    };
    let mut actors = ActorNetwork::spawn(&network(), config).unwrap();
    let options = BatchOptions {
        rate: 0.0,
        reseed: false,
        return_state: false,
    };
    let result = actors.run_batch(inputs(4, 64, 3), options).unwrap();
    assert_eq!(result.report.outcome, Outcome::Diverged);
}

#[test]
fn stable_step_converges_where_unstable_diverges() {
    let mut solver = Solver::new(&network(), relax_config(1.5));
    let report = solver.relax(inputs(4, 64, 3).view());
    assert_eq!(report.outcome, Outcome::Converged, "{report:?}");
}

#[test]
fn unused_unit_is_reseeded_from_data() {
    let mut network = network();
    // Unit 3 of layer 1 points away from every non-negative input, so no
    // image can use it.
    let dead = 3;
    let n = network.weights[0].nrows() as f32;
    network.weights[0].column_mut(dead).fill(-1.0 / n.sqrt());
    let config = RuntimeConfig {
        relax: relax_config(0.9),
        timeout: Duration::from_secs(30),
        workers: 2,
        delay: None,
        ..Default::default()
    };
    let mut actors = ActorNetwork::spawn(&network, config).unwrap();
    let quiet = BatchOptions {
        rate: 0.1,
        reseed: false,
        return_state: false,
    };
    let first = actors.run_batch(inputs(8, 64, 20), quiet).unwrap();
    assert_eq!(first.layers[0].usage[dead], 0);
    let reseed = BatchOptions {
        rate: 0.1,
        reseed: true,
        return_state: false,
    };
    let second = actors.run_batch(inputs(8, 64, 21), reseed).unwrap();
    assert!(
        second.layers[0].reseeded.contains(&dead),
        "{:?}",
        second.layers[0].reseeded
    );
    let w = second.layers[0].weights.as_ref().unwrap();
    let column = w.column(dead);
    let norm = column.dot(&column).sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "reseeded column norm {norm}");
    assert!(
        column.iter().any(|&v| v > 0.0),
        "reseeded column still points away from the data"
    );
}
