//! Cost of relaxing one mini-batch of 100 MNIST-sized inputs on a 784-400-400
//! network: one synchronous Jacobi step, a whole synchronous relaxation, and
//! a whole relaxation by the layer actors (with quiescence detection).
//! Inputs are random non-negative unit vectors, so no data files are needed.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ign::model::{Network, WeightInit, random_network};
use ign::relaxation::RelaxConfig;
use ign::runtime::{ActorNetwork, BatchOptions, RuntimeConfig};
use ign::solver::Solver;
use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

fn batch(rows: usize) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut x = Array2::from_shape_simple_fn((rows, 784), || {
        let v: f32 = rng.random();
        if v > 0.8 { v } else { 0.0 }
    });
    for mut row in x.rows_mut() {
        let norm = row.dot(&row).sqrt();
        row.mapv_inplace(|v| v / norm);
    }
    x
}

fn network() -> Network<f32> {
    random_network(&[784, 400, 400], &[0.05, 0.01], WeightInit::Gaussian, 1)
}

fn relax_config(max_steps: usize) -> RelaxConfig {
    RelaxConfig {
        tolerance: 1e-2,
        max_steps,
        step_scale: 0.9,
        divergence_factor: 1e4,
    }
}

fn bench_relaxation(c: &mut Criterion) {
    let network = network();
    let x0 = batch(100);
    let mut group = c.benchmark_group("784-400-400, batch 100");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("synchronous start and one step", |b| {
        let mut solver = Solver::new(&network, relax_config(1));
        b.iter(|| solver.relax(x0.view()))
    });
    group.bench_function("synchronous relaxation", |b| {
        let mut solver = Solver::new(&network, relax_config(400));
        b.iter(|| solver.relax(x0.view()))
    });
    group.bench_function("actor relaxation", |b| {
        let config = RuntimeConfig {
            relax: relax_config(400),
            timeout: Duration::from_secs(60),
            workers: 2,
            delay: None,
            ..Default::default()
        };
        let mut actors = ActorNetwork::spawn(&network, config).expect("tokio runtime");
        let options = BatchOptions {
            rate: 0.0,
            reseed: false,
            return_state: false,
        };
        b.iter(|| actors.run_batch(x0.clone(), options).expect("relaxation"))
    });
    group.finish();
}

criterion_group!(benches, bench_relaxation);
criterion_main!(benches);
