//! Claims about the update schedules. Each reaches the solver's fixed point
//! from the solver's starting state, counts messages as the actor protocol
//! sends them and replays bit for bit from its seed. Every run ends with a
//! verdict (converged, oscillating, capped, diverged or timed out), and no
//! output contains a NaN.

use ign::model::{Network, WeightInit, energies, random_network};
use ign::relaxation::{Outcome, RelaxConfig};
use ign::schedule::{
    CurvePoint, ScheduleError, ScheduleKind, ScheduleRun, SeededConfig, Verdict, classify_cap,
    run_schedule,
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

fn network() -> Network<f64> {
    random_network(&[16, 10, 6], &[0.02, 0.02], WeightInit::Uniform, 7)
}

fn relax(step_scale: f64, max_steps: usize) -> RelaxConfig {
    RelaxConfig {
        tolerance: 1e-9,
        max_steps,
        step_scale,
        divergence_factor: 1e4,
    }
}

fn seeded(seed: u64, spread: f64) -> SeededConfig {
    SeededConfig {
        seed,
        latency_mean: 0.5,
        latency_spread: spread,
        speeds: Vec::new(),
        max_wall_seconds: 60.0,
    }
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).mapv(f64::abs).fold(0.0, |m, &v| m.max(v))
}

/// Returns the four schedules every claim is checked on: synchronous,
/// sequential, and seeded with constant and with widely spread latencies.
fn cases() -> Vec<(ScheduleKind, SeededConfig)> {
    vec![
        (ScheduleKind::Synchronous, seeded(0, 0.0)),
        (ScheduleKind::Sequential, seeded(0, 0.0)),
        (ScheduleKind::Seeded, seeded(5, 0.0)),
        (ScheduleKind::Seeded, seeded(5, 0.9)),
    ]
}

fn assert_finite_curve(run: &ScheduleRun) {
    for point in &run.curve {
        assert!(point.potential.is_finite(), "{:?}: {point:?}", run.kind);
        assert!(point.residual.is_finite(), "{:?}: {point:?}", run.kind);
        assert!(point.time.is_finite(), "{:?}: {point:?}", run.kind);
    }
}

#[test]
fn every_schedule_reaches_solver_fixed_point() {
    let network = network();
    let x0 = inputs(4, 16, 3);
    let config = relax(0.9, 100_000);
    let mut solver = Solver::new(&network, config);
    assert_eq!(solver.relax(x0.view()).outcome, Outcome::Converged);
    let expected = solver.state();

    let mut slow_top = seeded(9, 0.9);
    slow_top.speeds = vec![1.0, 3.0];
    // Latencies on [0.5, 9.5] let later messages overtake earlier ones.
    let mut overtaking = seeded(9, 0.9);
    overtaking.latency_mean = 5.0;
    let mut all = cases();
    all.push((ScheduleKind::Seeded, slow_top));
    all.push((ScheduleKind::Seeded, overtaking));
    for (kind, seeded) in all {
        let run = run_schedule(kind, &network, x0.view(), &config, &seeded, 50).unwrap();
        assert_eq!(run.verdict, Verdict::Converged, "{kind}");
        assert_eq!(run.report.outcome, Outcome::Converged, "{kind}");
        assert!(run.report.max_residual < 1e-9, "{kind}: {:?}", run.report);
        for i in 1..3 {
            let diff = max_abs_diff(&run.state.x[i], &expected.x[i]);
            assert!(diff < 1e-6, "{kind}: x_{i} differs by {diff}");
        }
        let lambda = (&run.state.lambda - &expected.lambda).mapv(f64::abs);
        assert!(lambda.iter().all(|&d| d < 1e-6), "{kind}: lambda {lambda}");
        let last = run.curve.last().unwrap();
        assert_eq!(last.update, run.updates, "{kind}");
        assert_eq!(last.messages, run.messages, "{kind}");
        assert!(last.residual < 1e-9, "{kind}: {last:?}");
        assert_finite_curve(&run);
    }
}

#[test]
fn schedules_share_solver_start_point() {
    let network = network();
    let x0 = inputs(4, 16, 3);
    let config = relax(0.9, 100);
    let mut solver = Solver::new(&network, config);
    solver.input = x0.clone();
    solver.start();
    let potential = energies(&network, &solver.state()).potential.sum();

    let starts: Vec<CurvePoint> = cases()
        .into_iter()
        .map(|(kind, seeded)| {
            let run = run_schedule(kind, &network, x0.view(), &config, &seeded, 10).unwrap();
            run.curve[0]
        })
        .collect();
    for start in &starts {
        assert_eq!(start.update, 0);
        assert_eq!(start.messages, 0);
        assert_eq!(start.time, 0.0);
        assert!((start.potential - potential).abs() < 1e-12, "{start:?}");
        assert_eq!(start, &starts[0]);
    }
}

#[test]
fn messages_follow_layer_protocol() {
    // Layer 1 sends only its state up, the top layer only its prediction
    // down, and a middle layer both. Each layer sends once at the start and
    // once per update, and the input sends x_0 once.
    let networks = [
        (network(), vec![1, 1]),
        (
            random_network(&[16, 10, 6, 4], &[0.02; 3], WeightInit::Uniform, 7),
            vec![1, 2, 1],
        ),
    ];
    let x0 = inputs(4, 16, 3);
    let config = relax(0.9, 100_000);
    for (network, fanout) in networks {
        for (kind, seeded) in cases() {
            let run = run_schedule(kind, &network, x0.view(), &config, &seeded, 0).unwrap();
            assert_eq!(run.verdict, Verdict::Converged, "{kind}");
            let expected: u64 = 1 + run
                .report
                .layer_updates
                .iter()
                .zip(&fanout)
                .map(|(&updates, &out)| out * (1 + updates as u64))
                .sum::<u64>();
            assert_eq!(run.messages, expected, "{kind}: {:?}", run.report);
            assert_eq!(run.report.messages, run.messages, "{kind}");
            assert_eq!(run.updates, run.report.updates(), "{kind}");
            // With `curve_every` 0 only the start and the end are measured.
            assert_eq!(run.curve.len(), 2, "{kind}");
        }
    }
}

fn assert_same_run(a: &ScheduleRun, b: &ScheduleRun) {
    assert_eq!(a.kind, b.kind);
    assert_eq!(a.verdict, b.verdict);
    assert_eq!(a.updates, b.updates);
    assert_eq!(a.messages, b.messages);
    assert_eq!(a.curve, b.curve);
    assert_eq!(a.state.x, b.state.x);
    assert_eq!(a.state.lambda, b.state.lambda);
    assert_eq!(
        serde_json::to_string(&a.report).unwrap(),
        serde_json::to_string(&b.report).unwrap()
    );
}

#[test]
fn runs_replay_bit_for_bit() {
    let network = network();
    let x0 = inputs(4, 16, 3);
    let config = relax(0.9, 100_000);
    for (kind, seeded) in cases() {
        let first = run_schedule(kind, &network, x0.view(), &config, &seeded, 7).unwrap();
        let second = run_schedule(kind, &network, x0.view(), &config, &seeded, 7).unwrap();
        assert_same_run(&first, &second);
    }

    let first = run_schedule(
        ScheduleKind::Seeded,
        &network,
        x0.view(),
        &config,
        &seeded(11, 0.9),
        7,
    )
    .unwrap();
    let other = run_schedule(
        ScheduleKind::Seeded,
        &network,
        x0.view(),
        &config,
        &seeded(12, 0.9),
        7,
    )
    .unwrap();
    assert_ne!(first.curve, other.curve);
    assert_ne!(first.state.x, other.state.x);
}

#[test]
fn step_scale_five_diverges_without_nan() {
    // On the uniform-weight network the projection onto x >= 0 keeps the
    // Gauss-Seidel sweep bounded at this step, so divergence is shown on a
    // Gaussian-weight network.
    let network = random_network(&[16, 10, 6], &[0.02, 0.02], WeightInit::Gaussian, 7);
    let x0 = inputs(4, 16, 3);
    let config = relax(5.0, 100_000);
    for (kind, seeded) in cases() {
        let run = run_schedule(kind, &network, x0.view(), &config, &seeded, 1).unwrap();
        assert_eq!(run.verdict, Verdict::Diverged, "{kind}");
        assert_eq!(run.report.outcome, Outcome::Diverged, "{kind}");
        assert!(run.updates < 1000, "{kind}: {} updates", run.updates);
        assert_finite_curve(&run);
        assert!(run.report.max_residual.is_finite(), "{kind}");
        assert!(run.report.max_constraint_violation.is_finite(), "{kind}");
        for x in &run.state.x {
            assert!(x.iter().all(|v| v.is_finite()), "{kind}");
        }
        assert!(run.state.lambda.iter().all(|v| v.is_finite()), "{kind}");
    }
}

#[test]
fn bounded_sweep_at_step_five_is_oscillating() {
    let network = network();
    let x0 = inputs(4, 16, 3);
    let config = relax(5.0, 3000);
    let run = run_schedule(
        ScheduleKind::Sequential,
        &network,
        x0.view(),
        &config,
        &seeded(0, 0.0),
        10,
    )
    .unwrap();
    assert_eq!(run.verdict, Verdict::Oscillating);
    assert_eq!(run.report.outcome, Outcome::Capped);
    assert_finite_curve(&run);
}

#[test]
fn jacobi_near_step_two_is_oscillating() {
    // At step_scale 1.95 the synchronous tick settles into a two-cycle:
    // the residual alternates between two values instead of falling.
    let network = network();
    let x0 = inputs(4, 16, 3);
    let config = relax(1.95, 2000);
    let run = run_schedule(
        ScheduleKind::Synchronous,
        &network,
        x0.view(),
        &config,
        &seeded(0, 0.0),
        2,
    )
    .unwrap();
    assert_eq!(run.verdict, Verdict::Oscillating);
    assert_eq!(run.report.layer_updates, vec![2000, 2000]);
    let tail: Vec<f64> = run.curve.iter().rev().take(4).map(|p| p.residual).collect();
    assert!((tail[0] - tail[2]).abs() < 1e-9, "{tail:?}");
    assert!((tail[0] - tail[1]).abs() > 0.1, "{tail:?}");
}

#[test]
fn slow_convergence_is_capped() {
    let network = network();
    let x0 = inputs(4, 16, 3);
    let config = relax(0.9, 500);
    for kind in [ScheduleKind::Synchronous, ScheduleKind::Sequential] {
        let run = run_schedule(kind, &network, x0.view(), &config, &seeded(0, 0.0), 10).unwrap();
        assert_eq!(run.verdict, Verdict::Capped, "{kind}");
        assert_eq!(run.report.outcome, Outcome::Capped, "{kind}");
        assert!(run.report.max_residual > 1e-9, "{kind}");
    }
}

#[test]
fn classify_cap_compares_last_and_middle_thirds() {
    // Thirds of six entries: [0, 2), [2, 4), [4, 6).
    assert_eq!(
        classify_cap(&[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),
        Verdict::Capped
    );
    assert_eq!(
        classify_cap(&[1.0, 2.0, 1.0, 2.0, 1.0, 2.0]),
        Verdict::Oscillating
    );
    assert_eq!(
        classify_cap(&[9.0, 9.0, 1.0, 5.0, 1.0, 5.0]),
        Verdict::Oscillating
    );
    assert_eq!(
        classify_cap(&[1.0, 1.0, 1.0, 1.0, 2.0, 3.0]),
        Verdict::Oscillating
    );
    // The boundary: a fall to exactly 0.9 times the middle minimum stalls.
    assert_eq!(
        classify_cap(&[1.0, 1.0, 1.0, 1.0, 0.9, 0.9]),
        Verdict::Oscillating
    );
    assert_eq!(
        classify_cap(&[1.0, 1.0, 1.0, 1.0, 0.89, 0.95]),
        Verdict::Capped
    );
    assert_eq!(classify_cap(&[1.0, 1.0]), Verdict::Capped);
    assert_eq!(classify_cap(&[]), Verdict::Capped);
}

#[test]
fn wall_clock_limit_ends_large_run() {
    let network = random_network(&[784, 500, 300], &[0.02, 0.02], WeightInit::Uniform, 3);
    let x0 = inputs(32, 784, 4);
    let config = RelaxConfig {
        tolerance: 1e-14,
        max_steps: 10_000_000,
        step_scale: 0.9,
        divergence_factor: 1e4,
    };
    for (kind, mut seeded) in cases() {
        seeded.max_wall_seconds = 1e-3;
        let run = run_schedule(kind, &network, x0.view(), &config, &seeded, 1000).unwrap();
        assert_eq!(run.verdict, Verdict::TimedOut, "{kind}");
        assert_eq!(run.report.outcome, Outcome::Capped, "{kind}");
        // A hang guard, not a benchmark: the limit is checked before every
        // tick, sweep or event, so the run ends within a few of them.
        assert!(run.wall_seconds < 30.0, "{kind}: {} s", run.wall_seconds);
        assert_finite_curve(&run);
    }
}

#[test]
fn one_layer_network_converges() {
    // The only layer sends nothing, so x_0 is the run's only message.
    let network = random_network(&[16, 6], &[0.02], WeightInit::Uniform, 7);
    let x0 = inputs(3, 16, 3);
    let config = relax(0.9, 100_000);
    let mut solver = Solver::new(&network, config);
    assert_eq!(solver.relax(x0.view()).outcome, Outcome::Converged);
    for (kind, seeded) in cases() {
        let run = run_schedule(kind, &network, x0.view(), &config, &seeded, 10).unwrap();
        assert_eq!(run.verdict, Verdict::Converged, "{kind}");
        assert_eq!(run.messages, 1, "{kind}");
        let diff = max_abs_diff(&run.state.x[1], &solver.state().x[1]);
        assert!(diff < 1e-6, "{kind}: x_1 differs by {diff}");
    }
}

#[test]
fn empty_batch_and_blank_rows_converge() {
    let network = network();
    let config = relax(0.9, 100_000);
    let mut blank = inputs(3, 16, 3);
    blank.row_mut(1).fill(0.0);
    for x0 in [Array2::zeros((0, 16)), blank] {
        for (kind, seeded) in cases() {
            let run = run_schedule(kind, &network, x0.view(), &config, &seeded, 10).unwrap();
            assert_eq!(run.verdict, Verdict::Converged, "{kind}");
            assert_eq!(run.state.x[1].nrows(), x0.nrows(), "{kind}");
            if x0.nrows() == 3 {
                assert_eq!(run.report.blank_rows, 1, "{kind}");
                assert!(run.state.x[1].row(1).iter().all(|&v| v == 0.0), "{kind}");
            }
            assert_finite_curve(&run);
        }
    }
}

#[test]
fn invalid_arguments_are_rejected() {
    let network = network();
    let x0 = inputs(2, 16, 3);
    let config = relax(0.9, 10);
    let run = |x: &Array2<f64>, seeded: &SeededConfig| {
        run_schedule(ScheduleKind::Seeded, &network, x.view(), &config, seeded, 1).map(|_| ())
    };

    let mut speeds = seeded(0, 0.5);
    speeds.speeds = vec![1.0];
    assert_eq!(
        run(&x0, &speeds),
        Err(ScheduleError::SpeedCount {
            expected: 2,
            found: 1
        })
    );
    speeds.speeds = vec![1.0, -2.0];
    assert_eq!(
        run(&x0, &speeds),
        Err(ScheduleError::InvalidSpeed {
            layer: 2,
            speed: -2.0
        })
    );
    assert_eq!(
        run(&x0, &seeded(0, 1.5)),
        Err(ScheduleError::InvalidLatency {
            mean: 0.5,
            spread: 1.5
        })
    );
    let mut wall = seeded(0, 0.5);
    wall.max_wall_seconds = 0.0;
    assert_eq!(
        run(&x0, &wall),
        Err(ScheduleError::InvalidWallLimit { seconds: 0.0 })
    );
    assert_eq!(
        run(&inputs(2, 15, 3), &seeded(0, 0.5)),
        Err(ScheduleError::InputWidth {
            expected: 16,
            found: 15
        })
    );
    let mut bad = x0.clone();
    bad[[1, 4]] = f64::NAN;
    assert!(matches!(
        run(&bad, &seeded(0, 0.5)),
        Err(ScheduleError::NonFiniteInput {
            row: 1,
            column: 4,
            ..
        })
    ));
}
