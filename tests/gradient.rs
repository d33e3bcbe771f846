//! Claims about the gradient check: equation 1 agrees with central finite
//! differences of L through re-solved fixed points, the identity
//! `L = 2V − ½‖x_0‖² + ½` is exact at tight fixed points and not elsewhere, and
//! a wrong gradient fails the check.

use ign::gradcheck::{
    GradientCheck, GradientCheckError, GradientCheckReport, RELATIVE_ERROR_FLOOR,
    compare_gradients, equation_one, identity_residual, loss_differences, random_input, run,
    solve_tight,
};
use ign::model::{Network, WeightInit, energies, random_network, weight_gradient};
use ign::relaxation::RelaxConfig;
use ign::solver::Solver;
use ndarray::{Array1, Array2, Axis, concatenate};
use serde_json::Value;

fn check(sizes: &[usize], seed: u64) -> GradientCheck {
    GradientCheck {
        sizes: sizes.to_vec(),
        seed,
        ..Default::default()
    }
}

fn inactive_units(report: &GradientCheckReport) -> usize {
    report
        .active_units
        .iter()
        .map(|(active, size)| size - active)
        .sum()
}

fn assert_equation_one_agrees(sizes: &[usize], seed: u64, min_checked: usize) {
    let report = run(&check(sizes, seed)).unwrap();
    assert!(
        report.max_relative_error < 1e-5,
        "{sizes:?} seed {seed}: {report}"
    );
    assert!(
        report.entries_checked >= min_checked,
        "{sizes:?} seed {seed}: {report}"
    );
    assert!(
        report.fixed_point_residual < 1e-14,
        "{sizes:?} seed {seed}: {report}"
    );
    assert!(
        report.identity_error < 1e-12,
        "{sizes:?} seed {seed}: {report}"
    );
    // Some unit is off, so the active-set bookkeeping is exercised.
    assert!(
        inactive_units(&report) > 0,
        "{sizes:?} seed {seed}: {report}"
    );
    assert!(report.passed(), "{sizes:?} seed {seed}: {report}");
}

#[test]
fn equation_one_matches_differences_two_layers() {
    // 8·6 + 6·5 = 78 weight entries.
    for seed in [0, 1, 2] {
        assert_equation_one_agrees(&[8, 6, 5], seed, 74);
    }
}

#[test]
fn equation_one_matches_differences_three_layers() {
    // 8·6 + 6·5 + 5·4 = 98 weight entries.
    for seed in [1, 2, 3] {
        assert_equation_one_agrees(&[8, 6, 5, 4], seed, 93);
    }
}

#[test]
fn check_passes_for_first_hundred_seeds() {
    for sizes in [[8, 6, 5].as_slice(), [8, 6, 5, 4].as_slice()] {
        for seed in 0..100 {
            let report = run(&check(sizes, seed)).unwrap();
            assert!(report.passed(), "{sizes:?} seed {seed}: {report}");
        }
    }
}

#[test]
fn report_first_line_states_error_and_entries() {
    let report = run(&check(&[8, 6, 5], 0)).unwrap();
    let text = report.to_string();
    let first = text.lines().next().unwrap();
    let expected = format!(
        "max relative error: {:.3e} over 78 entries",
        report.max_relative_error
    );
    assert_eq!(first, expected);
    assert_eq!(report.entries_skipped, 0);
}

#[test]
fn report_names_layer_that_is_entirely_zero() {
    // Seed 0 of 8-6-5-4 switches off all 4 units of layer 3.
    let report = run(&check(&[8, 6, 5, 4], 0)).unwrap();
    assert_eq!(report.active_units[2], (0, 4));
    assert_eq!(report.empty_layers(), vec![3]);
    assert!(
        report.to_string().contains("layer 3 is entirely zero"),
        "{report}"
    );
    assert!(report.passed(), "{report}");
}

#[test]
fn perturbation_that_changes_active_set_is_skipped() {
    // At seed 220 of 8-6-5-4, unit 5 of layer 1 is on at 4.1e-5, so a step of
    // 1e-4 switches it off for some entries of W_1.
    let report = run(&GradientCheck {
        step: 1e-4,
        ..check(&[8, 6, 5, 4], 220)
    })
    .unwrap();
    assert!(report.entries_skipped > 0, "{report}");
    assert_eq!(report.entries_checked + report.entries_skipped, 98);
    assert!(report.max_relative_error < 1e-5, "{report}");
}

#[test]
fn identity_holds_at_solved_fixed_points() {
    for sizes in [
        [8, 6, 5].as_slice(),
        [8, 6, 5, 4].as_slice(),
        [10, 7, 7].as_slice(),
    ] {
        for seed in 0..5 {
            let check = check(sizes, seed);
            let network = check.network().unwrap();
            let fixed = solve_tight(&network, check.input().view()).unwrap();
            let e = energies(&network, &fixed.state);
            let error = identity_residual(&fixed.state, &e.potential, &e.loss)[0];
            assert!(
                error < 1e-10,
                "{sizes:?} seed {seed}: identity error {error:e}"
            );
        }
    }
}

#[test]
fn identity_fails_at_feed_forward_start() {
    for sizes in [
        [8, 6, 5].as_slice(),
        [8, 6, 5, 4].as_slice(),
        [10, 7, 7].as_slice(),
    ] {
        for seed in 0..5 {
            let check = check(sizes, seed);
            let network = check.network().unwrap();
            let mut solver = Solver::new(&network, RelaxConfig::default());
            solver.input = check.input();
            solver.start();
            let state = solver.state();
            let e = energies(&network, &state);
            let error = identity_residual(&state, &e.potential, &e.loss)[0];
            assert!(
                error > 1e-3,
                "{sizes:?} seed {seed}: identity error {error:e}"
            );
        }
    }
}

#[test]
fn gradient_without_lambda_scaling_fails_check() {
    for (sizes, seed) in [([8, 6, 5].as_slice(), 0), ([8, 6, 5, 4].as_slice(), 2)] {
        let check = check(sizes, seed);
        let network = check.network().unwrap();
        let x0 = check.input();
        let fixed = solve_tight(&network, x0.view()).unwrap();
        let differences = loss_differences(&network, &fixed, check.step).unwrap();

        let right = compare_gradients(&differences, &equation_one(&fixed));
        assert!(right.max_relative_error < 1e-5, "{sizes:?}: {right:?}");

        // Equation 1 with the plain residual x_0 − p_1 in place of r̃_1.
        let mut wrong = equation_one(&fixed);
        let plain = &x0 - &fixed.evals[0].prediction;
        wrong[0] = weight_gradient(plain.view(), fixed.state.x[1].view());
        let planted = compare_gradients(&differences, &wrong);
        assert!(planted.max_relative_error > 0.5, "{sizes:?}: {planted:?}");
        assert_eq!(
            planted.worst.map(|(layer, _, _)| layer),
            Some(1),
            "{sizes:?}"
        );
    }
}

#[test]
fn gradient_of_wrong_sign_fails_check() {
    let check = check(&[8, 6, 5], 1);
    let network = check.network().unwrap();
    let fixed = solve_tight(&network, check.input().view()).unwrap();
    let differences = loss_differences(&network, &fixed, check.step).unwrap();
    let mut wrong = equation_one(&fixed);
    wrong[1].mapv_inplace(|g| -g);
    let planted = compare_gradients(&differences, &wrong);
    // |a − (−a)| / |a| = 2 on every non-zero entry of W_2.
    assert!(
        (planted.max_relative_error - 2.0).abs() < 1e-4,
        "{planted:?}"
    );
    assert_eq!(planted.worst.map(|(layer, _, _)| layer), Some(2));
}

#[test]
fn relative_error_floor_bounds_tiny_gradients() {
    let differences = vec![Array2::from_elem((1, 2), Some(3e-9))];
    let analytic = vec![Array2::from_shape_vec((1, 2), vec![1e-9, 2e-9]).unwrap()];
    let comparison = compare_gradients(&differences, &analytic);
    assert_eq!(comparison.entries_checked, 2);
    assert!((comparison.max_relative_error - 2e-9 / RELATIVE_ERROR_FLOOR).abs() < 1e-15);
    assert_eq!(comparison.worst, Some((1, 0, 0)));
}

#[test]
fn nan_difference_fails_check() {
    let differences =
        vec![Array2::from_shape_vec((1, 2), vec![Some(1.0), Some(f64::NAN)]).unwrap()];
    let analytic = vec![Array2::from_elem((1, 2), 1.0)];
    let comparison = compare_gradients(&differences, &analytic);
    assert!(comparison.max_relative_error.is_nan());
    assert_eq!(comparison.worst, Some((1, 0, 1)));
}

#[test]
fn missing_analytic_entry_fails_check() {
    let differences = vec![Array2::from_elem((2, 2), Some(1.0))];
    let analytic = vec![Array2::from_elem((1, 2), 1.0)];
    let comparison = compare_gradients(&differences, &analytic);
    assert_eq!(comparison.entries_checked, 4);
    assert!(comparison.max_relative_error.is_nan());
    assert_eq!(comparison.worst, Some((1, 1, 0)));
}

#[test]
fn report_without_checked_entries_does_not_pass() {
    let report = GradientCheckReport {
        max_relative_error: 0.0,
        entries_checked: 0,
        entries_skipped: 78,
        worst: None,
        worst_values: None,
        fixed_point_residual: 0.0,
        constraint_violation: 0.0,
        identity_error: 0.0,
        active_units: vec![(3, 6), (2, 5)],
    };
    assert!(!report.passed());
    let nan = GradientCheckReport {
        max_relative_error: f64::NAN,
        entries_checked: 78,
        ..report
    };
    assert!(!nan.passed());
}

#[test]
fn bad_sizes_are_errors() {
    for sizes in [vec![], vec![8], vec![8, 0, 5], vec![0, 3]] {
        let result = run(&GradientCheck {
            sizes: sizes.clone(),
            ..Default::default()
        });
        match result {
            Err(GradientCheckError::InvalidSizes { sizes: found }) => assert_eq!(found, sizes),
            other => panic!("{sizes:?}: expected InvalidSizes, got {other:?}"),
        }
    }
}

#[test]
fn bad_alpha_and_step_are_errors() {
    let negative = run(&GradientCheck {
        alpha: -0.1,
        ..Default::default()
    });
    assert!(matches!(negative, Err(GradientCheckError::InvalidAlpha { alpha }) if alpha == -0.1));
    let nan = run(&GradientCheck {
        alpha: f64::NAN,
        ..Default::default()
    });
    assert!(
        matches!(nan, Err(GradientCheckError::InvalidAlpha { .. })),
        "{nan:?}"
    );
    let zero = run(&GradientCheck {
        step: 0.0,
        ..Default::default()
    });
    assert!(matches!(zero, Err(GradientCheckError::InvalidStep { step }) if step == 0.0));
}

#[test]
fn blank_or_misshapen_input_is_an_error() {
    let network = GradientCheck::default().network().unwrap();
    let blank = Array2::<f64>::zeros((2, 8));
    let result = solve_tight(&network, blank.view());
    assert!(
        matches!(result, Err(GradientCheckError::BlankInput { row: 0 })),
        "{result:?}"
    );
    let narrow = random_input(7, 0);
    let result = solve_tight(&network, narrow.view());
    let wrong_width = matches!(
        result,
        Err(GradientCheckError::InputShape {
            expected: 8,
            found: 7
        })
    );
    assert!(wrong_width, "{result:?}");
}

#[test]
fn differences_reject_batch_of_several_images() {
    let network = GradientCheck::default().network().unwrap();
    let rows = [random_input(8, 0), random_input(8, 1)];
    let x0 = concatenate(Axis(0), &[rows[0].view(), rows[1].view()]).unwrap();
    let fixed = solve_tight(&network, x0.view()).unwrap();
    let result = loss_differences(&network, &fixed, 1e-5);
    assert!(
        matches!(result, Err(GradientCheckError::NotSingleImage { rows: 2 })),
        "{result:?}"
    );
}

#[test]
fn batch_solve_matches_single_image_solves() {
    let network = GradientCheck::default().network().unwrap();
    let rows: Vec<Array2<f64>> = (0..3).map(|seed| random_input(8, seed)).collect();
    let views: Vec<_> = rows.iter().map(|row| row.view()).collect();
    let batch = concatenate(Axis(0), &views).unwrap();
    let together = solve_tight(&network, batch.view()).unwrap();
    assert!(
        together.residual < 1e-14,
        "residual {:e}",
        together.residual
    );
    for (b, row) in rows.iter().enumerate() {
        let alone = solve_tight(&network, row.view()).unwrap();
        for (layer, x) in alone.state.x.iter().enumerate().skip(1) {
            let gap = (&together.state.x[layer].row(b) - &x.row(0)).mapv(f64::abs);
            let worst = gap.fold(0.0f64, |m, &v| m.max(v));
            assert!(worst < 1e-13, "row {b} layer {layer}: {worst:e}");
        }
        let gap = (together.state.lambda[b] - alone.state.lambda[0]).abs();
        assert!(gap < 1e-13, "row {b} lambda: {gap:e}");
    }
}

fn matrix(value: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = serde_json::from_value(value.clone()).unwrap();
    let cols = rows[0].len();
    Array2::from_shape_vec((rows.len(), cols), rows.concat()).unwrap()
}

fn vector(value: &Value) -> Array1<f64> {
    Array1::from(serde_json::from_value::<Vec<f64>>(value.clone()).unwrap())
}

#[test]
fn tight_solve_reproduces_reference_fixed_point() {
    let text = std::fs::read_to_string("tests/fixtures/fixed-point-8-6-5.json").unwrap();
    let f: Value = serde_json::from_str(&text).unwrap();
    let alpha = f["alpha"].as_f64().unwrap();
    let network = Network {
        weights: vec![matrix(&f["W1"]), matrix(&f["W2"])],
        alpha: vec![alpha; 2],
    };
    let x0 = vector(&f["x0"]).insert_axis(Axis(0));
    let fixed = solve_tight(&network, x0.view()).unwrap();
    assert!(fixed.residual < 1e-14, "residual {:e}", fixed.residual);
    // The reference stops projected gradient when no step moves a value by
    // more than 1e-15, which leaves it about 2e-14 from stationarity and its
    // states about 2e-12 from the Newton solution.
    for (layer, key) in [(1, "x1"), (2, "x2")] {
        for (a, b) in fixed.state.x[layer].row(0).iter().zip(&vector(&f[key])) {
            assert!((a - b).abs() < 1e-11, "{key}: {a} vs {b}");
        }
    }
    let lambda = f["lambda"].as_f64().unwrap();
    assert!(
        (fixed.state.lambda[0] - lambda).abs() < 1e-11,
        "lambda {}",
        fixed.state.lambda[0]
    );
    let gradient = &equation_one(&fixed)[0];
    let gap = (gradient - &matrix(&f["dL_dW1"]))
        .mapv(f64::abs)
        .fold(0.0f64, |m, &v| m.max(v));
    assert!(gap < 1e-11, "equation 1 differs by {gap:e}");
}

/// Prints the measurements behind the defaults in the `gradcheck` module docs:
/// `cargo test --test gradient -- --ignored --nocapture` (about 20 s).
#[test]
#[ignore]
fn survey_of_first_thousand_seeds() {
    let alpha = 0.02;
    for sizes in [vec![8, 6, 5], vec![8, 6, 5, 4]] {
        let alphas = vec![alpha; sizes.len() - 1];
        for init in [WeightInit::Gaussian, WeightInit::Uniform] {
            let (mut mixed, mut full_first) = (0, 0);
            for seed in 0..200 {
                let network = random_network::<f64>(&sizes, &alphas, init, seed);
                let fixed = solve_tight(&network, random_input(sizes[0], seed).view()).unwrap();
                let on: Vec<usize> = fixed
                    .active
                    .iter()
                    .map(|a| a.iter().filter(|&&v| v).count())
                    .collect();
                let sizes_above = &sizes[1..];
                mixed += usize::from(on.iter().zip(sizes_above).all(|(&n, &s)| n > 0 && n < s));
                full_first += usize::from(on[0] == sizes[1]);
            }
            println!(
                "{sizes:?} {init:?}: mixed in every layer {mixed}/200, layer 1 all on {full_first}/200"
            );
        }
        for step in [1e-6, 1e-5] {
            let mut failed = [0, 0];
            let mut worst = [0.0f64, 0.0];
            for seed in 0..1000 {
                let network = random_network::<f64>(&sizes, &alphas, WeightInit::Gaussian, seed);
                let fixed = solve_tight(&network, random_input(sizes[0], seed).view()).unwrap();
                let analytic = equation_one(&fixed);
                let differences = loss_differences(&network, &fixed, step).unwrap();
                for (k, floor) in [1e-8, RELATIVE_ERROR_FLOOR].into_iter().enumerate() {
                    let mut max = 0.0f64;
                    for (numeric, exact) in differences.iter().zip(&analytic) {
                        for (d, &a) in numeric.iter().zip(exact) {
                            if let Some(d) = *d {
                                max = max.max((d - a).abs() / d.abs().max(a.abs()).max(floor));
                            }
                        }
                    }
                    worst[k] = worst[k].max(max);
                    failed[k] += usize::from(max.is_nan() || max >= 1e-5);
                }
            }
            println!(
                "{sizes:?} Gaussian h = {step:e}: floor 1e-8 failed {}/1000 (worst {:.2e}), \
                 floor {RELATIVE_ERROR_FLOOR:e} failed {}/1000 (worst {:.2e})",
                failed[0], worst[0], failed[1], worst[1]
            );
        }
    }
}

#[test]
fn oversized_network_is_rejected() {
    let check = GradientCheck {
        sizes: vec![3000, 2000],
        ..GradientCheck::default()
    };
    let error = ign::gradcheck::run(&check).unwrap_err();
    assert!(
        matches!(error, GradientCheckError::TooLarge { entries: 6_000_000 }),
        "{error:?}"
    );
}

#[test]
fn report_shows_worst_entry_values() {
    let check = GradientCheck {
        sizes: vec![8, 6, 5],
        seed: 3,
        ..GradientCheck::default()
    };
    let report = ign::gradcheck::run(&check).unwrap();
    let (exact, difference) = report.worst_values.unwrap();
    assert!((exact - difference).abs() <= 1e-5 * exact.abs().max(1e-8));
    let text = report.to_string();
    assert!(text.contains("equation 1 "), "{text}");
    assert!(text.contains("finite difference "), "{text}");
}
