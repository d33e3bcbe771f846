//! The asynchronous actor runtime: one tokio task per layer plus one for the
//! clamped input, wired from a [`Topology`], relaxing with no barrier, no
//! shared step counter and no global clock.
//!
//! # Guarantees
//!
//! - **Locality.** A layer actor reads its own [`crate::model::Layer`] and the
//!   newest data message on each incoming edge, nothing else: `x_{i−1}` from
//!   below and `p_{i+1}` from above. Layer 1 owns the per-image lambdas.
//!   Equation 1 and column renormalisation run inside the actor that owns
//!   the synapses.
//! - **Ordering.** Each mailbox is a tokio unbounded channel, FIFO per
//!   sender. Data messages carry a per-edge sequence number, so with injected
//!   delays (which can reorder) a receiver still keeps the newest.
//! - **Control first.** An actor handles every queued control message before
//!   taking data, and between any two updates, so probes and shutdown are not
//!   starved by data traffic.
//! - **Settled.** A layer actor is settled when its last evaluation had every
//!   row below the tolerance (or it reached its step cap, or diverged) and it
//!   has taken no data message since. A settled actor sends nothing.
//! - **Quiescent.** Every actor settled and no data message in flight, as
//!   established by [`crate::quiescence::Detector`]. That state is stable, so
//!   the states read after detection are the output state.
//! - **Failure.** A panicking actor ends its task and drops its channels. The
//!   detector then reports it as lost, or times out, and the driver returns
//!   an error. No relaxation waits forever: the detector has a
//!   wall-clock limit.
//! - **Shutdown.** [`ActorNetwork::shutdown`] (also run on drop) sends `Stop`
//!   to every actor and shuts the tokio runtime down. Messages still queued
//!   are dropped with the mailboxes.

pub mod actor;
pub mod message;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, unbounded};
use dashmap::DashMap;
use ndarray::{Array2, NdFloat};
use thiserror::Error;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tracing::{Instrument, debug, debug_span};

pub use actor::{ActorStats, DelayConfig, LiveStats};
pub use message::LayerSummary;
pub use topology::{ActorId, Edge, MessageKind, Role, Topology};

use actor::{LayerActor, Mailboxes, Outgoing, Shared, Wiring};
use message::{Control, Reply};

use crate::model::Network;
use crate::quiescence::{Detection, Detector, DetectorError};
use crate::relaxation::{Outcome, RelaxConfig, RelaxReport};
use crate::solver::build_layers;

/// Errors of the actor runtime.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("failed to start the tokio runtime: {0}")]
    Start(#[from] std::io::Error),
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error("actor {actor} is gone (its task ended or panicked)")]
    ActorLost { actor: ActorId },
    #[error("no reply from the actors within {seconds:.1} s")]
    NoReply { seconds: f64 },
}

/// Settings of the actor runtime.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeConfig {
    pub relax: RelaxConfig,
    /// Wall-clock limit for one relaxation to become quiescent.
    pub timeout: Duration,
    /// Tokio worker threads.
    pub workers: usize,
    pub delay: Option<DelayConfig>,
}

/// Actions taken at the output state of a batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchOptions {
    /// Equation-1 learning rate; 0 relaxes without learning.
    pub rate: f64,
    /// Reseed units unused since the last reseeding.
    pub reseed: bool,
    /// Return every layer's state (the codes).
    pub return_state: bool,
}

/// The result of one batch.
#[derive(Debug)]
pub struct BatchResult<A> {
    pub report: RelaxReport,
    pub detection: Detection,
    /// Layer 1 first.
    pub layers: Vec<LayerSummary<A>>,
}

/// A network of running actors.
pub struct ActorNetwork<A> {
    runtime: Option<tokio::runtime::Runtime>,
    pub topology: Topology,
    control_txs: Arc<Vec<UnboundedSender<Control<A>>>>,
    replies_rx: Receiver<Reply<A>>,
    detector: Detector,
    stats: LiveStats,
    config: RuntimeConfig,
    batch: u64,
    /// Data messages counted by all detections so far; the detector's counts
    /// run from the actors' start, so a batch's own count is the difference.
    messages_before: u64,
}

impl<A> ActorNetwork<A>
where
    A: NdFloat + Send + Sync + 'static,
{
    /// Spawns one actor per role of the layered topology of `network`.
    pub fn spawn(network: &Network<A>, config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers.max(1))
            .thread_name("ign-actor")
            .enable_time()
            .build()?;
        let topology = Topology::layered(network.weights.len());
        let actors = topology.roles.len();
        let (events_tx, events_rx) = unbounded();
        let (replies_tx, replies_rx) = unbounded();
        let stats: LiveStats = Arc::new(DashMap::new());
        let shared = Shared {
            events_tx,
            replies_tx,
            stats: Arc::clone(&stats),
            delay: config.delay,
        };
        let mut data_txs = Vec::new();
        let mut data_rxs = Vec::new();
        let mut control_txs = Vec::new();
        let mut control_rxs = Vec::new();
        for _ in 0..actors {
            let (tx, rx) = unbounded_channel();
            data_txs.push(tx);
            data_rxs.push(Some(rx));
            let (tx, rx) = unbounded_channel();
            control_txs.push(tx);
            control_rxs.push(Some(rx));
        }

        let mut layers = build_layers(network, &config.relax).into_iter();
        for (id, role) in topology.roles.iter().enumerate() {
            let outgoing = topology
                .outgoing(id)
                .map(|&edge| Outgoing {
                    edge,
                    data_tx: data_txs[edge.to].clone(),
                    sequence: 0,
                })
                .collect();
            let mailboxes = Mailboxes {
                data_rx: data_rxs[id].take().expect("one mailbox per actor"),
                control_rx: control_rxs[id]
                    .take()
                    .expect("one control channel per actor"),
            };
            let wiring = Wiring::new(id, mailboxes, outgoing, &shared);
            let span = debug_span!("actor", id, role = %role);
            match role {
                Role::Input => {
                    runtime.spawn(actor::run_input(wiring).instrument(span));
                }
                Role::Layer(_) => {
                    let layer = layers.next().expect("one layer per layer role");
                    let actor = LayerActor::new(wiring, layer, config.relax);
                    runtime.spawn(actor.run().instrument(span));
                }
            }
        }

        // The actors own the senders of their neighbours' mailboxes, so the
        // driver drops its copies.
        drop(data_txs);
        drop(shared);
        let control_txs = Arc::new(control_txs);
        let probe_txs = Arc::clone(&control_txs);
        let probe = Box::new(move |actor: ActorId, wave: u64| {
            probe_txs[actor].send(Control::Probe { wave }).is_ok()
        });

        let detector = Detector::new(actors, events_rx, probe);
        Ok(ActorNetwork {
            runtime: Some(runtime),
            topology,
            control_txs,
            replies_rx,
            detector,
            stats,
            config,
            batch: 0,
            messages_before: 0,
        })
    }

    /// Returns the live counters, readable while a batch runs.
    pub fn stats(&self) -> LiveStats {
        Arc::clone(&self.stats)
    }

    /// Relaxes the network on `x0` (one image per row), waits for the
    /// quiescent output state, then lets every layer learn as `options` request.
    pub fn run_batch(
        &mut self,
        x0: Array2<A>,
        options: BatchOptions,
    ) -> Result<BatchResult<A>, RuntimeError> {
        self.batch += 1;
        let batch = self.batch;
        let layer_ids: Vec<ActorId> = (0..self.topology.roles.len())
            .filter(|&id| matches!(self.topology.roles[id], Role::Layer(_)))
            .collect();
        for &id in &layer_ids {
            self.control(id, Control::Start { batch, input: None })?;
        }
        for _ in &layer_ids {
            match self.reply()? {
                Reply::Ready(_) => {}
                Reply::Finished(_) => {}
            }
        }

        let input = Arc::new(x0);
        for (id, role) in self.topology.roles.iter().enumerate() {
            if *role == Role::Input {
                let start = Control::Start {
                    batch,
                    input: Some(Arc::clone(&input)),
                };
                if self.control_txs[id].send(start).is_err() {
                    return Err(RuntimeError::ActorLost { actor: id });
                }
            }
        }

        let detection = self.detector.wait(self.config.timeout)?;
        for &id in &layer_ids {
            let finish = Control::Finish {
                rate: options.rate,
                reseed: options.reseed,
                return_state: options.return_state,
            };
            self.control(id, finish)?;
        }

        let mut layers = Vec::new();
        while layers.len() < layer_ids.len() {
            if let Reply::Finished(summary) = self.reply()? {
                layers.push(*summary);
            }
        }
        layers.sort_by_key(|s| s.layer);

        let messages = detection.messages - self.messages_before;
        self.messages_before = detection.messages;
        let report = report_from(&layers, self.config.relax.tolerance, messages);
        debug!(batch, waves = detection.waves, messages, "batch done");
        Ok(BatchResult {
            report,
            detection,
            layers,
        })
    }

    fn control(&self, id: ActorId, control: Control<A>) -> Result<(), RuntimeError> {
        self.control_txs[id]
            .send(control)
            .map_err(|_| RuntimeError::ActorLost { actor: id })
    }

    fn reply(&self) -> Result<Reply<A>, RuntimeError> {
        self.replies_rx
            .recv_timeout(self.config.timeout)
            .map_err(|_| RuntimeError::NoReply {
                seconds: self.config.timeout.as_secs_f64(),
            })
    }

    /// Stops every actor and the tokio runtime.
    pub fn shutdown(&mut self) {
        for tx in self.control_txs.iter() {
            let _ = tx.send(Control::Stop);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl<A> Drop for ActorNetwork<A> {
    fn drop(&mut self) {
        for tx in self.control_txs.iter() {
            let _ = tx.send(Control::Stop);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Combines the layers' summaries into the report every schedule produces.
pub fn report_from<A>(layers: &[LayerSummary<A>], tolerance: f64, messages: u64) -> RelaxReport {
    let outcome = if layers.iter().any(|l| l.outcome == Outcome::Diverged) {
        Outcome::Diverged
    } else if layers.iter().any(|l| l.outcome == Outcome::Capped) {
        Outcome::Capped
    } else {
        Outcome::Converged
    };
    let rows = layers
        .iter()
        .map(|l| l.row_residual.len())
        .max()
        .unwrap_or(0);
    let rows_above_tolerance = (0..rows)
        .filter(|&b| {
            layers.iter().any(|l| {
                l.row_residual
                    .get(b)
                    .is_some_and(|&r| r >= tolerance || r.is_nan())
            })
        })
        .count();
    let max_residual = layers
        .iter()
        .flat_map(|l| l.row_residual.iter().copied())
        .fold(0.0f64, |m, r| if r.is_nan() { f64::NAN } else { m.max(r) });
    RelaxReport {
        outcome,
        layer_updates: layers.iter().map(|l| l.updates).collect(),
        max_residual,
        max_constraint_violation: layers.first().map_or(0.0, |l| l.max_constraint_violation),
        rows_above_tolerance,
        blank_rows: layers.first().map_or(0, |l| l.blank_rows),
        messages,
    }
}
