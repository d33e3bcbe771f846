//! `ign bench`: message throughput of the actor runtime at a chosen
//! granularity, next to the cost of a bare channel send and receive of the
//! same payload measured in the same process.
//!
//! Invariant: the bare-channel figure uses the same tokio runtime settings,
//! channel type and message type as the actors, so the ratio between the two
//! is the cost the actors add per message (bookkeeping, counters, the
//! arithmetic of the updates and scheduling).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use thiserror::Error;

use crate::model::{WeightInit, random_network, restrict};
use crate::relaxation::{Outcome, RelaxConfig};
use crate::runtime::message::{DataMessage, UNTOUCHED};
use crate::runtime::{
    ActorNetwork, BatchOptions, Connectivity, Granularity, MessageKind, RuntimeConfig, RuntimeError,
};

/// The network and settings to measure.
#[derive(Clone, Debug)]
pub struct ThroughputOptions {
    /// Layer sizes, input first.
    pub sizes: Vec<usize>,
    pub granularity: Granularity,
    /// Per layer above the input, the window of units below (0 for dense).
    pub window: Vec<usize>,
    /// Images relaxed together.
    pub batch: usize,
    pub relaxations: usize,
    pub tolerance: f64,
    pub workers: usize,
    pub seed: u64,
}

/// The measurements, printed as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    pub sizes: Vec<usize>,
    pub granularity: String,
    pub synapses: usize,
    pub actors: usize,
    pub wires: usize,
    pub relaxations: usize,
    pub converged: usize,
    pub messages: u64,
    pub updates: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub updates_per_second: f64,
    /// Mean payload of the actors' messages.
    pub payload_bytes: f64,
    pub actor_ns_per_message: f64,
    /// A bare tokio channel send and receive of a message of the same type
    /// and payload, between two tasks of a runtime with the same workers.
    pub channel_ns_per_message: f64,
    pub channel_messages: u64,
    /// `actor_ns_per_message / channel_ns_per_message`.
    pub overhead_ratio: f64,
}

/// Reasons a benchmark cannot run.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("--layers needs the input size and at least one layer, every size at least 1")]
    Sizes,
    #[error("--window needs 1 value or one per layer above the input, got {0}")]
    Window(usize),
    #[error("--batch and --relaxations must be at least 1")]
    Counts,
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs the benchmark.
pub fn throughput(options: &ThroughputOptions) -> Result<ThroughputReport, BenchError> {
    let sizes = &options.sizes;
    if sizes.len() < 2 || sizes.contains(&0) {
        return Err(BenchError::Sizes);
    }
    if options.batch == 0 || options.relaxations == 0 {
        return Err(BenchError::Counts);
    }
    let hidden = sizes.len() - 1;
    let windows = match options.window.as_slice() {
        [] => vec![0; hidden],
        [one] => vec![*one; hidden],
        many if many.len() == hidden => many.to_vec(),
        many => return Err(BenchError::Window(many.len())),
    };
    let connectivity: Vec<Connectivity> = windows
        .iter()
        .map(|&w| match w {
            0 => Connectivity::Dense,
            w => Connectivity::Window(w),
        })
        .collect();
    let mut network = random_network::<f32>(
        sizes,
        &vec![0.05; hidden],
        WeightInit::Gaussian,
        options.seed,
    );
    let masks: Vec<_> = connectivity
        .iter()
        .enumerate()
        .map(|(i, c)| c.mask(sizes[i], sizes[i + 1]))
        .collect();
    restrict(&mut network, &masks);
    let synapses = masks.iter().map(|m| m.iter().filter(|&&v| v).count()).sum();
    let config = RuntimeConfig {
        relax: RelaxConfig {
            tolerance: options.tolerance,
            ..RelaxConfig::default()
        },
        timeout: Duration::from_secs(600),
        workers: options.workers,
        granularity: options.granularity,
        connectivity,
        ..Default::default()
    };
    let mut actors = ActorNetwork::spawn(&network, config)?;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut converged = 0;
    let mut messages = 0;
    let started = Instant::now();
    for _ in 0..options.relaxations {
        let mut x0 =
            Array2::from_shape_simple_fn((options.batch, sizes[0]), || rng.random::<f32>());
        for mut row in x0.rows_mut() {
            let norm = row.dot(&row).sqrt();
            row.mapv_inplace(|v| v / norm);
        }
        let result = actors.run_batch(x0, BatchOptions::default())?;
        messages += result.report.messages;
        if result.report.outcome == Outcome::Converged {
            converged += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let updates: u64 = actors.stats().iter().map(|e| e.updates).sum();
    let (traffic, bytes) = actors
        .traffic_snapshot()
        .iter()
        .fold((0, 0), |(m, b), (_, c)| (m + c.messages, b + c.bytes));
    let wires = actors.wires.len();
    let count = actors.topology.roles.len();
    actors.shutdown();

    let payload_bytes = bytes as f64 / traffic.max(1) as f64;
    let floats = (payload_bytes / 4.0).round().max(1.0) as usize;
    let channel_messages = messages.clamp(100_000, 5_000_000);
    let channel_seconds = bare_channel(options.workers, channel_messages, floats)?;
    let actor_ns = seconds * 1e9 / messages.max(1) as f64;
    let channel_ns = channel_seconds * 1e9 / channel_messages as f64;
    Ok(ThroughputReport {
        sizes: sizes.clone(),
        granularity: options.granularity.to_string(),
        synapses,
        actors: count,
        wires,
        relaxations: options.relaxations,
        converged,
        messages,
        updates,
        seconds,
        messages_per_second: messages as f64 / seconds,
        updates_per_second: updates as f64 / seconds,
        payload_bytes,
        actor_ns_per_message: actor_ns,
        channel_ns_per_message: channel_ns,
        channel_messages,
        overhead_ratio: actor_ns / channel_ns,
    })
}

/// Times `count` messages of `floats` f32 values sent from one task to
/// another over a tokio unbounded channel, the actors' mailbox type.
fn bare_channel(workers: usize, count: u64, floats: usize) -> Result<f64, BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .build()
        .map_err(RuntimeError::Start)?;
    let seconds = runtime.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DataMessage<f32>>();
        let started = Instant::now();
        let consumer = tokio::spawn(async move {
            let mut total = 0.0f32;
            while let Some(message) = rx.recv().await {
                total += message.payload[[0, 0]];
            }
            total
        });
        let producer = tokio::spawn(async move {
            for sequence in 0..count {
                // A fresh payload per message, as an actor allocates one per send.
                let payload = Arc::new(Array2::<f32>::ones((floats, 1)));
                let message = DataMessage {
                    from: 0,
                    kind: MessageKind::PredictionDown,
                    batch: 1,
                    sequence,
                    ack: 0,
                    hops: UNTOUCHED,
                    trace_id: 0,
                    payload,
                };
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        let _ = producer.await;
        let _ = consumer.await;
        started.elapsed().as_secs_f64()
    });
    Ok(seconds)
}
