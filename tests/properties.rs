//! Invariants over random networks and inputs: states stay non-negative and
//! finite, learning keeps every column at unit norm, and the identity
//! `L = 2V − ½‖x_0‖² + ½` holds wherever the solver converged tightly.

use ign::model::{WeightInit, energies, random_network};
use ign::relaxation::{Outcome, RelaxConfig};
use ign::solver::Solver;
use ndarray::Array2;
use proptest::prelude::*;

fn unit_rows(values: Vec<f64>, cols: usize) -> Array2<f64> {
    let mut x = Array2::from_shape_vec((values.len() / cols, cols), values).unwrap();
    for mut row in x.rows_mut() {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        }
    }
    x
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn relaxation_keeps_states_valid(
        seed in 0u64..1000,
        hidden in 2usize..8,
        top in 1usize..6,
        alpha in 0.0f64..0.2,
        pixels in prop::collection::vec(0.0f64..1.0, 3 * 10),
    ) {
        let network = random_network::<f64>(&[10, hidden, top], &[alpha, alpha], WeightInit::Gaussian, seed);
        let x0 = unit_rows(pixels, 10);
        let config = RelaxConfig { tolerance: 1e-10, max_steps: 50_000, step_scale: 0.9, divergence_factor: 1e8 };
        let mut solver = Solver::new(&network, config);
        let report = solver.relax(x0.view());
        prop_assert_ne!(report.outcome, Outcome::Diverged);
        for layer in &solver.layers {
            prop_assert!(layer.x.iter().all(|&v| v >= 0.0 && v.is_finite()));
        }
        if report.outcome == Outcome::Converged {
            let state = solver.state();
            let e = energies(&network, &state);
            for b in 0..x0.nrows() {
                if report.blank_rows > 0 {
                    continue;
                }
                let identity = 2.0 * e.potential[b] - 0.5 * x0.row(b).dot(&x0.row(b)) + 0.5;
                prop_assert!((e.loss[b] - identity).abs() < 1e-6, "row {}: L {} vs {}", b, e.loss[b], identity);
            }
        }
        solver.learn(0.5);
        for layer in &solver.layers {
            for column in layer.w.columns() {
                let norm = column.dot(&column).sqrt();
                prop_assert!((norm - 1.0).abs() < 1e-12, "column norm {}", norm);
            }
        }
    }
}
