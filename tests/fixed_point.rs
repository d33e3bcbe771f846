//! Claims about the synchronous solver's fixed points: it reproduces a fixed
//! point solved by an independent implementation, and satisfies the identity
//! `L = 2V − ½‖x_0‖² + ½` that makes equation 1 exact.

use ign::model::{Network, energies, weight_gradient};
use ign::relaxation::{Outcome, RelaxConfig};
use ign::solver::Solver;
use ndarray::{Array1, Array2};
use serde_json::Value;

fn matrix(value: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = serde_json::from_value(value.clone()).unwrap();
    let cols = rows[0].len();
    Array2::from_shape_vec((rows.len(), cols), rows.concat()).unwrap()
}

fn vector(value: &Value) -> Array1<f64> {
    Array1::from(serde_json::from_value::<Vec<f64>>(value.clone()).unwrap())
}

fn fixture() -> Value {
    let text = std::fs::read_to_string("tests/fixtures/fixed-point-8-6-5.json").unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tight() -> RelaxConfig {
    RelaxConfig {
        tolerance: 1e-13,
        max_steps: 200_000,
        step_scale: 1.0,
        divergence_factor: 1e6,
    }
}

#[test]
fn solver_reproduces_reference_fixed_point() {
    let f = fixture();
    let alpha = f["alpha"].as_f64().unwrap();
    let network = Network {
        weights: vec![matrix(&f["W1"]), matrix(&f["W2"])],
        alpha: vec![alpha; 2],
    };
    let x0 = vector(&f["x0"]).insert_axis(ndarray::Axis(0));
    let mut solver = Solver::new(&network, tight());
    let report = solver.relax(x0.view());
    assert_eq!(report.outcome, Outcome::Converged, "{report:?}");
    let state = solver.state();
    let x1 = vector(&f["x1"]);
    let x2 = vector(&f["x2"]);
    for (a, b) in state.x[1].row(0).iter().zip(&x1) {
        assert!((a - b).abs() < 1e-9, "x1 {a} vs {b}");
    }
    for (a, b) in state.x[2].row(0).iter().zip(&x2) {
        assert!((a - b).abs() < 1e-9, "x2 {a} vs {b}");
    }
    let lambda = f["lambda"].as_f64().unwrap();
    assert!(
        (state.lambda[0] - lambda).abs() < 1e-9,
        "lambda {}",
        state.lambda[0]
    );
    let e = energies(&network, &state);
    assert!(
        (e.potential[0] - f["V"].as_f64().unwrap()).abs() < 1e-9,
        "V {}",
        e.potential[0]
    );
    assert!(
        (e.loss[0] - f["L"].as_f64().unwrap()).abs() < 1e-9,
        "L {}",
        e.loss[0]
    );
    let g1 = weight_gradient(solver.evals[0].residual.view(), state.x[1].view());
    let expected = matrix(&f["dL_dW1"]);
    let worst = (&g1 - &expected)
        .mapv(f64::abs)
        .fold(0.0f64, |m, &v| m.max(v));
    assert!(worst < 1e-8, "equation 1 differs by {worst}");
}
