//! The asynchronous actor runtime: actors wired from a [`Topology`], relaxing
//! with no barrier, no shared step counter and no global clock. At layer
//! granularity there is one tokio task per layer plus one for the clamped
//! input; at block and unit granularity one per block of units, one per
//! block of input units and one for lambda (see [`topology`]).
//!
//! # Guarantees
//!
//! - **Locality.** An actor reads its own state and synapses and the newest
//!   data message on each incoming wire, nothing else. A layer actor gets
//!   `x_{i−1}` from below and `p_{i+1}` from above, and layer 1 owns the
//!   per-image lambdas. A block gets the residuals of the units below it is
//!   joined to and the partial predictions of the units above, and the
//!   lambda actor gets the input blocks' shares of `‖p_1‖²`. Equation 1 and
//!   column renormalisation run inside the actor that owns the synapses.
//!   With [`RuntimeConfig::audit`] every actor records the sender of each
//!   message value it used, so [`crate::trace::audit`] can check this.
//! - **Parameters.** Step sizes, tolerances and learning rates are settings
//!   the driver sends in control messages. At block granularity the driver
//!   also sends each actor its starting state and its layer's bound on
//!   `‖W_i‖²` at the start of a relaxation, so that every granularity starts
//!   from the same feed-forward state and uses the same step.
//! - **Ordering.** Each mailbox is a tokio unbounded channel, FIFO per
//!   sender. Data messages carry a per-wire sequence number, so with injected
//!   delays (which can reorder) a receiver still keeps the newest.
//! - **Control first.** An actor handles every queued control message before
//!   taking data, and between any two updates, so probes and shutdown are not
//!   starved by data traffic.
//! - **Settled.** An actor is settled when its last evaluation had every
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
mod block;
pub mod message;
pub mod topology;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use dashmap::DashMap;
use ndarray::{Array1, Array2, Axis, NdFloat, s};
use thiserror::Error;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tracing::{Instrument, debug, debug_span};

pub use actor::{ActorStats, DelayConfig, EdgeCount, LiveStats, Traffic};
pub use message::{ActorReport, FirstChange, LayerSummary};
pub use topology::{ActorId, Connectivity, Edge, Granularity, MessageKind, Role, Topology};

use actor::{LayerActor, Mailboxes, Outgoing, Shared, Wiring};
use block::{BlockActor, BlockParts, BlockSynapses, InputBlockActor, LambdaActor};
use message::{BlockStart, BlockSummary, Control, Reply};

use crate::model::{Layer, Network, cast};
use crate::quiescence::{Detection, Detector, DetectorError};
use crate::relaxation::{Outcome, RelaxConfig, RelaxReport};
use crate::solver::{build_layers, summarize};
use crate::trace::TraceRecorder;

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
    #[error("input unit {unit} does not exist (the input has {units} units)")]
    NoSuchUnit { unit: usize, units: usize },
}

/// Settings of the actor runtime.
#[derive(Clone)]
pub struct RuntimeConfig {
    pub relax: RelaxConfig,
    /// Wall-clock limit for one relaxation to become quiescent.
    pub timeout: Duration,
    /// Tokio worker threads.
    pub workers: usize,
    pub delay: Option<DelayConfig>,
    /// How many units each actor owns.
    pub granularity: Granularity,
    /// Per layer, which synapses exist; missing entries are dense.
    pub connectivity: Vec<Connectivity>,
    /// Record where every message value used in an update came from.
    pub audit: bool,
    pub trace: Option<Arc<TraceRecorder>>,
    /// Wires added outside the topology. They exist only so that a test can
    /// show the audit catching a read from a non-neighbour.
    pub planted: Vec<Edge>,
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("relax", &self.relax)
            .field("timeout", &self.timeout)
            .field("workers", &self.workers)
            .field("delay", &self.delay)
            .field("granularity", &self.granularity)
            .field("connectivity", &self.connectivity)
            .field("audit", &self.audit)
            .field("trace", &self.trace.is_some())
            .field("planted", &self.planted)
            .finish()
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            relax: RelaxConfig::default(),
            timeout: Duration::from_secs(60),
            workers: 2,
            delay: None,
            granularity: Granularity::Layer,
            connectivity: Vec::new(),
            audit: false,
            trace: None,
            planted: Vec::new(),
        }
    }
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
    /// Every actor's report, by actor id.
    pub actors: Vec<ActorReport>,
    /// Lambda per image at the output state.
    pub lambda: Array1<A>,
}

/// One actor's row of a perturbation experiment.
#[derive(Clone, Debug)]
pub struct PerturbationRow {
    pub actor: ActorId,
    pub name: String,
    /// Message hops to the actor's first change; `None` if it never changed.
    pub hops: Option<u32>,
    /// Minimum number of edges from the perturbed unit's actor; `None` if
    /// no path leads there.
    pub graph_distance: Option<usize>,
    /// Microseconds from the perturbation to the first change.
    pub first_change_us: Option<f64>,
}

/// The result of [`ActorNetwork::perturb`].
#[derive(Clone, Debug)]
pub struct Perturbation {
    pub rows: Vec<PerturbationRow>,
    /// The relaxation from the old output state to the new one.
    pub report: RelaxReport,
}

/// A network of running actors.
pub struct ActorNetwork<A> {
    runtime: Option<tokio::runtime::Runtime>,
    pub topology: Topology,
    /// Every wire: the topology's edges, then the planted ones.
    pub wires: Vec<Edge>,
    control_txs: Arc<Vec<UnboundedSender<Control<A>>>>,
    replies_rx: Receiver<Reply<A>>,
    detector: Detector,
    stats: LiveStats,
    traffic: Traffic,
    config: RuntimeConfig,
    /// The current parameters, kept by the driver at block granularity to
    /// set starting states and to check output states.
    network: Network<A>,
    batch: u64,
    /// The clamped input of the current relaxation.
    input: Arc<Array2<A>>,
    /// Data messages counted by all detections so far; the detector's counts
    /// run from the actors' start, so a batch's own count is the difference.
    messages_before: u64,
}

impl<A> ActorNetwork<A>
where
    A: NdFloat + Send + Sync + 'static,
{
    /// Spawns one actor per role of the topology of `network` at the
    /// configured granularity and connectivity.
    pub fn spawn(network: &Network<A>, config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.workers.max(1))
            .thread_name("ign-actor")
            .enable_time()
            .build()?;
        let sizes = network.sizes();
        let topology = Topology::new(&sizes, config.granularity, &config.connectivity);
        let mut wires = topology.edges.clone();
        wires.extend(config.planted.iter().copied());
        let actors = topology.roles.len();
        let (events_tx, events_rx) = unbounded();
        let (replies_tx, replies_rx) = unbounded();
        let stats: LiveStats = Arc::new(DashMap::new());
        let traffic: Traffic = Arc::new(DashMap::new());
        let shared = Shared {
            events_tx,
            replies_tx,
            stats: Arc::clone(&stats),
            traffic: Arc::clone(&traffic),
            delay: config.delay,
            audit: config.audit,
            trace: config.trace.clone(),
            trace_ids: Arc::new(AtomicU64::new(0)),
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

        let masks: Vec<Array2<bool>> = (1..sizes.len())
            .map(|i| topology.connectivity[i - 1].mask(sizes[i - 1], sizes[i]))
            .collect();
        let mut layers = build_layers(network, &config.relax).into_iter();
        for (id, role) in topology.roles.iter().enumerate() {
            let outgoing: Vec<Outgoing<A>> = wires
                .iter()
                .enumerate()
                .filter(|(_, e)| e.from == id)
                .map(|(wire, &edge)| Outgoing {
                    edge,
                    wire,
                    data_tx: data_txs[edge.to].clone(),
                    sequence: 0,
                })
                .collect();
            let parts = BlockParts {
                incoming: wires
                    .iter()
                    .filter(|e| e.to == id)
                    .map(|e| (e.from, e.kind, topology::units_of(&topology.roles[e.from])))
                    .collect(),
                targets: outgoing
                    .iter()
                    .map(|o| topology::units_of(&topology.roles[o.edge.to]))
                    .collect(),
                units: topology::units_of(role),
                config: config.relax,
            };
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
                Role::Layer(i) => {
                    let mut layer = layers.next().expect("one layer per layer role");
                    if topology.connectivity[i - 1] != Connectivity::Dense {
                        let mask = &masks[i - 1];
                        layer.mask = Some(mask.mapv(|m| if m { A::one() } else { A::zero() }));
                    }
                    let actor = LayerActor::new(wiring, layer, config.relax);
                    runtime.spawn(actor.run().instrument(span));
                }
                Role::InputBlock { .. } => {
                    let actor = InputBlockActor::new(wiring, parts);
                    runtime.spawn(actor.run().instrument(span));
                }
                Role::Lambda => {
                    let actor = LambdaActor::new(wiring, parts, sizes.len() > 2);
                    runtime.spawn(actor.run().instrument(span));
                }
                Role::Block { layer, units } => {
                    let w = network.weights[layer - 1].slice(s![.., units.clone()]);
                    let mask = masks[layer - 1].slice(s![.., units.clone()]);
                    let synapses = BlockSynapses {
                        layer: *layer,
                        w: w.to_owned(),
                        mask: mask.mapv(|m| if m { A::one() } else { A::zero() }),
                        alpha: network.alpha[layer - 1],
                        has_above: *layer + 1 < sizes.len(),
                    };
                    let actor = BlockActor::new(wiring, parts, synapses);
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
            wires,
            control_txs,
            replies_rx,
            detector,
            stats,
            traffic,
            config,
            network: network.clone(),
            batch: 0,
            input: Arc::new(Array2::zeros((0, sizes[0]))),
            messages_before: 0,
        })
    }

    /// Returns the live counters, readable while a batch runs.
    pub fn stats(&self) -> LiveStats {
        Arc::clone(&self.stats)
    }

    /// Returns the live per-wire traffic (keyed by index into
    /// [`ActorNetwork::wires`]), readable while a batch runs.
    pub fn traffic(&self) -> Traffic {
        Arc::clone(&self.traffic)
    }

    /// Relaxes the network on `x0` (one image per row), waits for the
    /// quiescent output state, then lets every layer learn as `options` request.
    pub fn run_batch(
        &mut self,
        x0: Array2<A>,
        options: BatchOptions,
    ) -> Result<BatchResult<A>, RuntimeError> {
        self.batch += 1;
        self.input = Arc::new(x0);
        if self.topology.granularity == Granularity::Layer {
            self.start_layers()?;
        } else {
            self.start_blocks()?;
        }
        let detection = self.detector.wait(self.config.timeout)?;
        self.finish(detection, options)
    }

    /// Changes input unit `unit` by `delta` in every image of the current
    /// batch and relaxes from the last output state to the new one, recording
    /// when and after how many message hops each actor first changed.
    /// Call it after [`ActorNetwork::run_batch`] with a learning rate of 0.
    pub fn perturb(&mut self, unit: usize, delta: f64) -> Result<Perturbation, RuntimeError> {
        let units = self.input.ncols();
        let owner = self
            .topology
            .input_owner(unit)
            .filter(|_| unit < units)
            .ok_or(RuntimeError::NoSuchUnit { unit, units })?;
        let local = unit - topology::units_of(&self.topology.roles[owner]).start;
        for id in (0..self.topology.roles.len()).filter(|&id| id != owner) {
            self.control(id, Control::Perturb { change: None })?;
        }
        let began = Instant::now();
        self.control(
            owner,
            Control::Perturb {
                change: Some((local, delta)),
            },
        )?;
        let mut changed = (*self.input).clone();
        changed
            .column_mut(unit)
            .mapv_inplace(|v| v + cast::<A>(delta));
        self.input = Arc::new(changed);
        let detection = self.detector.wait(self.config.timeout)?;
        let result = self.finish(detection, BatchOptions::default())?;
        let distance = self.topology.distances_from(owner);
        let names = self.topology.names();
        let rows = result
            .actors
            .iter()
            .map(|report| PerturbationRow {
                actor: report.actor,
                name: names[report.actor].clone(),
                hops: report.first_change.map(|c| c.hops),
                graph_distance: distance[report.actor],
                first_change_us: report
                    .first_change
                    .map(|c| c.at.saturating_duration_since(began).as_secs_f64() * 1e6),
            })
            .collect();
        Ok(Perturbation {
            rows,
            report: result.report,
        })
    }

    /// Starts a layer-granularity relaxation: layers first, then the input.
    fn start_layers(&mut self) -> Result<(), RuntimeError> {
        let batch = self.batch;
        let layer_ids: Vec<ActorId> = (0..self.topology.roles.len())
            .filter(|&id| matches!(self.topology.roles[id], Role::Layer(_)))
            .collect();
        for &id in &layer_ids {
            let start = Control::Start {
                batch,
                input: None,
                start: None,
            };
            self.control(id, start)?;
        }
        for _ in &layer_ids {
            self.reply()?;
        }
        for id in 0..self.topology.roles.len() {
            if self.topology.roles[id] == Role::Input {
                let start = Control::Start {
                    batch,
                    input: Some(Arc::clone(&self.input)),
                    start: None,
                };
                self.control(id, start)?;
            }
        }
        Ok(())
    }

    /// Starts a block-granularity relaxation from the feed-forward state of
    /// the current parameters, the same state a layer-granularity run starts
    /// from.
    fn start_blocks(&mut self) -> Result<(), RuntimeError> {
        let batch = self.batch;
        let mut layers = build_layers(&self.network, &self.config.relax);
        for i in 0..layers.len() {
            let below = if i == 0 {
                (*self.input).clone()
            } else {
                layers[i - 1].x.clone()
            };
            layers[i].start(below.view());
        }
        let blank = Arc::new(layers[0].blank.clone());
        let lambda = layers[0]
            .lambda
            .clone()
            .unwrap_or_else(|| Array1::zeros(self.input.nrows()));
        for (id, role) in self.topology.roles.iter().enumerate() {
            let (values, lipschitz) = match role {
                Role::InputBlock { units } => {
                    (self.input.slice(s![.., units.clone()]).to_owned(), A::one())
                }
                Role::Lambda => (lambda.clone().insert_axis(Axis(1)), layers[0].lipschitz()),
                Role::Block { layer, units } => (
                    layers[layer - 1].x.slice(s![.., units.clone()]).to_owned(),
                    layers[layer - 1].lipschitz(),
                ),
                Role::Input | Role::Layer(_) => continue,
            };
            let start = BlockStart {
                values,
                lipschitz,
                blank: Arc::clone(&blank),
            };
            let start = Control::Start {
                batch,
                input: None,
                start: Some(Box::new(start)),
            };
            self.control(id, start)?;
        }
        for _ in 0..self.topology.roles.len() {
            self.reply()?;
        }
        for id in 0..self.topology.roles.len() {
            self.control(id, Control::Go)?;
        }
        Ok(())
    }

    /// Collects every actor's account of the output state after `detection`
    /// and applies `options`.
    fn finish(
        &mut self,
        detection: Detection,
        options: BatchOptions,
    ) -> Result<BatchResult<A>, RuntimeError> {
        let actors = self.topology.roles.len();
        for id in 0..actors {
            let finish = Control::Finish {
                rate: options.rate,
                reseed: options.reseed,
                return_state: options.return_state,
            };
            self.control(id, finish)?;
        }
        let mut layers = Vec::new();
        let mut blocks = Vec::new();
        let mut reports = vec![ActorReport::default(); actors];
        for _ in 0..actors {
            match self.reply()? {
                Reply::Finished(summary) => {
                    let mut summary = *summary;
                    let report = std::mem::take(&mut summary.report);
                    let actor = report.actor;
                    reports[actor] = report;
                    layers.push(summary);
                }
                Reply::BlockFinished(summary) => {
                    let actor = summary.report.actor;
                    reports[actor] = summary.report.clone();
                    blocks.push(*summary);
                }
                Reply::Report(report) => {
                    let actor = report.actor;
                    reports[actor] = report;
                }
                Reply::Ready(_) => {}
            }
        }
        let messages = detection.messages - self.messages_before;
        self.messages_before = detection.messages;
        let (report, layers, lambda) = if self.topology.granularity == Granularity::Layer {
            layers.sort_by_key(|s| s.layer);
            let report = report_from(&layers, self.config.relax.tolerance, messages);
            let lambda = layers
                .first()
                .and_then(|l| l.lambda.clone())
                .unwrap_or_else(|| Array1::zeros(0));
            (report, layers, lambda)
        } else {
            self.assemble(&blocks, options, messages)
        };
        debug!(
            batch = self.batch,
            waves = detection.waves,
            messages,
            "batch done"
        );
        Ok(BatchResult {
            report,
            detection,
            layers,
            actors: reports,
            lambda,
        })
    }

    /// Puts the blocks' states together, measures the residuals of the whole
    /// output state with the layer arithmetic, and takes the blocks' new
    /// columns into the driver's copy of the parameters.
    fn assemble(
        &mut self,
        blocks: &[BlockSummary<A>],
        options: BatchOptions,
        messages: u64,
    ) -> (RelaxReport, Vec<LayerSummary<A>>, Array1<A>) {
        let rows = self.input.nrows();
        let sizes = self.network.sizes();
        let count = sizes.len() - 1;
        let mut x: Vec<Array2<A>> = sizes.iter().map(|&n| Array2::zeros((rows, n))).collect();
        x[0] = (*self.input).clone();
        let mut lambda = Array1::zeros(rows);
        let mut updates = vec![0; count];
        let mut outcomes = vec![Outcome::Converged; count];
        let mut zero_columns = vec![Vec::new(); count];
        let mut weights = self.network.weights.clone();
        for block in blocks {
            let Some(values) = &block.values else {
                continue;
            };
            if block.layer == 0 {
                lambda = values.column(0).to_owned();
                updates[0] = updates[0].max(block.report.updates);
                outcomes[0] = worse(outcomes[0], block.outcome);
                continue;
            }
            let i = block.layer - 1;
            let span: Range<usize> = block.units.clone();
            x[block.layer]
                .slice_mut(s![.., span.clone()])
                .assign(values);
            if let Some(w) = &block.weights {
                weights[i].slice_mut(s![.., span]).assign(w);
            }
            updates[i] = updates[i].max(block.report.updates);
            outcomes[i] = worse(outcomes[i], block.outcome);
            zero_columns[i].extend(block.zero_columns.iter().copied());
        }

        let mut layers: Vec<Layer<A>> = build_layers(&self.network, &self.config.relax);
        layers[0].start(self.input.view());
        for (i, layer) in layers.iter_mut().enumerate() {
            layer.x = x[i + 1].clone();
        }
        layers[0].lambda = Some(lambda.clone());
        let mut evals = Vec::with_capacity(count);
        for i in (0..count).rev() {
            let above = evals
                .last()
                .map(|e: &crate::model::LayerEval<A>| e.prediction.view());
            let eval = layers[i].evaluate(x[i].view(), above);
            evals.push(eval);
        }
        evals.reverse();
        let outcome = outcomes.iter().copied().fold(Outcome::Converged, worse);
        let tolerance: A = cast(self.config.relax.tolerance);
        let report = summarize(
            &evals,
            outcome,
            updates.clone(),
            tolerance,
            &layers[0],
            messages,
        );

        let to_f64 = |v: &A| v.to_f64().unwrap_or(f64::NAN);
        let mut summaries = Vec::with_capacity(count);
        for (i, eval) in evals.iter().enumerate() {
            let r = &x[i] - &eval.prediction;
            let reconstruction = r
                .rows()
                .into_iter()
                .map(|row| 0.5 * to_f64(&row.dot(&row)))
                .collect();
            summaries.push(LayerSummary {
                layer: i + 1,
                updates: updates[i],
                outcome: outcomes[i],
                row_residual: eval.row_residual.iter().map(to_f64).collect(),
                max_constraint_violation: to_f64(
                    &eval.constraint.fold(A::zero(), |m, &v| m.max(v)),
                ),
                usage: layers[i].usage().to_vec(),
                blank_rows: layers[i].blank.iter().filter(|&&b| b).count(),
                zero_columns: std::mem::take(&mut zero_columns[i]),
                reseeded: Vec::new(),
                reconstruction,
                state: options.return_state.then(|| Arc::new(x[i + 1].clone())),
                lambda: (i == 0 && options.return_state).then(|| lambda.clone()),
                weights: Some(Arc::new(weights[i].clone())),
                report: ActorReport::default(),
            });
        }
        self.network.weights = weights;
        (report, summaries, lambda)
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

    /// Returns the traffic of every wire that carried at least one message,
    /// by wire index.
    pub fn traffic_snapshot(&self) -> Vec<(Edge, EdgeCount)> {
        self.wires
            .iter()
            .enumerate()
            .map(|(wire, &edge)| {
                let count = self.traffic.get(&wire).map(|c| *c).unwrap_or_default();
                (edge, count)
            })
            .collect()
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

/// Returns the worse of two outcomes: diverged, then capped, then converged.
fn worse(a: Outcome, b: Outcome) -> Outcome {
    let rank = |o: Outcome| match o {
        Outcome::Converged => 0,
        Outcome::Capped => 1,
        Outcome::Diverged => 2,
    };
    if rank(b) > rank(a) { b } else { a }
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
