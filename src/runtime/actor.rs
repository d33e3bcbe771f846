//! The actor tasks: one per layer and one for the clamped input. A layer actor
//! owns its [`Layer`] (state, synapses, lambda) and reads the rest of the
//! network only from the data messages in its mailbox.
//!
//! Invariant: an actor's settled flag turns false only when it takes a data
//! message out of its mailbox, and a settled actor sends nothing. The
//! quiescence detector's correctness rests on both.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use dashmap::DashMap;
use ndarray::{Array2, NdFloat};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tracing::{debug, trace};

use super::message::{
    ActorReport, Control, DataMessage, DetectorEvent, FirstChange, LayerSummary, ProbeReply, Reply,
    UNTOUCHED,
};
use super::topology::{ActorId, Edge, MessageKind};
use crate::learn::{UsageWindow, reseed_unused};
use crate::model::{Layer, LayerEval, cast, prediction};
use crate::relaxation::{Outcome, RelaxConfig};
use crate::trace::TraceRecorder;

/// Live per-actor counters, readable while a run is going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActorStats {
    pub updates: u64,
    pub sent: u64,
    pub received: u64,
    pub settled: bool,
}

/// Shared live counters of every actor.
pub type LiveStats = Arc<DashMap<ActorId, ActorStats>>;

/// Random per-message delays, for testing the detector and for studying
/// asynchrony: each message waits a uniform time in `[0, max]` before it is
/// delivered.
#[derive(Clone, Copy, Debug)]
pub struct DelayConfig {
    pub max: Duration,
    pub seed: u64,
}

/// Messages and payload bytes sent on one wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeCount {
    pub messages: u64,
    pub bytes: u64,
}

/// Live per-wire traffic, keyed by wire index (the topology's edges first,
/// then any wire planted outside it), readable while a run is going.
pub type Traffic = Arc<DashMap<usize, EdgeCount>>;

/// One outgoing edge: where it goes and the sending end of the receiver's
/// mailbox. Dropping it does not close the mailbox while other senders exist.
pub(super) struct Outgoing<A> {
    pub edge: Edge,
    /// Index of the wire in the traffic counters.
    pub wire: usize,
    pub data_tx: UnboundedSender<DataMessage<A>>,
    pub sequence: u64,
}

/// The receiving ends an actor owns.
pub(super) struct Mailboxes<A> {
    pub data_rx: UnboundedReceiver<DataMessage<A>>,
    pub control_rx: UnboundedReceiver<Control<A>>,
}

/// Handles every actor gets: the detector's and the driver's channels, the
/// live counters, the delay model and the optional trace.
pub(super) struct Shared<A> {
    pub events_tx: Sender<DetectorEvent>,
    pub replies_tx: Sender<Reply<A>>,
    pub stats: LiveStats,
    pub traffic: Traffic,
    pub delay: Option<DelayConfig>,
    pub audit: bool,
    pub trace: Option<Arc<TraceRecorder>>,
    pub trace_ids: Arc<AtomicU64>,
}

/// Provenance of the message values an actor used: per sender and kind, how
/// many values went into its state and synapse updates.
#[derive(Clone, Debug, Default)]
pub(super) struct Audit {
    reads: HashMap<(ActorId, MessageKind), u64>,
}

impl Audit {
    pub fn record(&mut self, from: ActorId, kind: MessageKind) {
        *self.reads.entry((from, kind)).or_insert(0) += 1;
    }

    pub fn take(&mut self) -> Vec<(ActorId, MessageKind, u64)> {
        let mut reads: Vec<_> = self.reads.drain().map(|((f, k), n)| (f, k, n)).collect();
        reads.sort();
        reads
    }
}

/// Channels and counters every actor has.
pub(super) struct Wiring<A> {
    pub id: ActorId,
    /// Data messages from neighbours; when every sender is dropped the actor
    /// ends.
    pub data_rx: UnboundedReceiver<DataMessage<A>>,
    /// Control messages; handled before any queued data message.
    pub control_rx: UnboundedReceiver<Control<A>>,
    pub outgoing: Vec<Outgoing<A>>,
    /// Hints and probe replies to the detector.
    pub events_tx: Sender<DetectorEvent>,
    /// Readiness and summaries to the driver.
    pub replies_tx: Sender<Reply<A>>,
    pub stats: LiveStats,
    pub traffic: Traffic,
    pub delay: Option<(Duration, ChaCha8Rng)>,
    pub sent: u64,
    pub received: u64,
    /// `Some` when the locality audit is on.
    pub audit: Option<Audit>,
    pub trace: Option<Arc<TraceRecorder>>,
    trace_ids: Arc<AtomicU64>,
    /// Hops from the perturbed input unit to the newest information this
    /// actor holds; `None` before the perturbation reaches it.
    pub touched: Option<u32>,
    pub first_change: Option<FirstChange>,
}

impl<A: NdFloat> Wiring<A> {
    pub fn new(
        id: ActorId,
        mailboxes: Mailboxes<A>,
        outgoing: Vec<Outgoing<A>>,
        shared: &Shared<A>,
    ) -> Self {
        let seeded = |d: DelayConfig| (d.max, ChaCha8Rng::seed_from_u64(d.seed ^ (id as u64 + 1)));
        shared.stats.insert(id, ActorStats::default());
        for out in &outgoing {
            shared.traffic.insert(out.wire, EdgeCount::default());
        }
        Wiring {
            id,
            data_rx: mailboxes.data_rx,
            control_rx: mailboxes.control_rx,
            outgoing,
            events_tx: shared.events_tx.clone(),
            replies_tx: shared.replies_tx.clone(),
            stats: Arc::clone(&shared.stats),
            traffic: Arc::clone(&shared.traffic),
            delay: shared.delay.map(seeded),
            sent: 0,
            received: 0,
            audit: shared.audit.then(Audit::default),
            trace: shared.trace.clone(),
            trace_ids: Arc::clone(&shared.trace_ids),
            touched: None,
            first_change: None,
        }
    }

    /// Sends `payload` on every outgoing edge of kind `kind`.
    pub fn send(&mut self, kind: MessageKind, batch: u64, payload: &Arc<Array2<A>>)
    where
        A: Send + Sync + 'static,
    {
        for index in 0..self.outgoing.len() {
            if self.outgoing[index].edge.kind == kind {
                self.send_on(index, batch, payload, 0);
            }
        }
    }

    /// Sends `payload` on outgoing edge `index`, acknowledging `ack`.
    pub fn send_on(&mut self, index: usize, batch: u64, payload: &Arc<Array2<A>>, ack: u64)
    where
        A: Send + Sync + 'static,
    {
        let hops = self.touched.map_or(UNTOUCHED, |h| h.saturating_add(1));
        let trace_id = match &self.trace {
            Some(_) => self.trace_ids.fetch_add(1, Ordering::Relaxed) + 1,
            None => 0,
        };
        let out = &mut self.outgoing[index];
        out.sequence += 1;
        let message = DataMessage {
            from: self.id,
            kind: out.edge.kind,
            batch,
            sequence: out.sequence,
            ack,
            hops,
            trace_id,
            payload: Arc::clone(payload),
        };
        self.sent += 1;
        if let Some(mut stats) = self.stats.get_mut(&self.id) {
            stats.sent += 1;
        }
        if let Some(mut count) = self.traffic.get_mut(&out.wire) {
            count.messages += 1;
            count.bytes += (payload.len() * std::mem::size_of::<A>()) as u64;
        }
        if let Some(trace) = &self.trace {
            trace.send(self.id, trace_id, out.edge.kind.name(), Instant::now());
        }
        trace!(
            from = self.id,
            to = out.edge.to,
            kind = out.edge.kind.name(),
            batch,
            "message"
        );
        match &mut self.delay {
            Some((max, rng)) => {
                let wait = rng.random_range(0..=max.as_micros() as u64);
                let data_tx = out.data_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(wait)).await;
                    // A closed mailbox means the run is shutting down.
                    let _ = data_tx.send(message);
                });
            }
            None => {
                let _ = out.data_tx.send(message);
            }
        }
    }

    /// Counts a message taken out of the mailbox and notes how far the
    /// perturbation has come.
    pub fn count_received(&mut self, message: &DataMessage<A>) {
        self.received += 1;
        if let Some(mut stats) = self.stats.get_mut(&self.id) {
            stats.received += 1;
        }
        if message.hops != UNTOUCHED {
            self.touched = Some(self.touched.map_or(message.hops, |h| h.min(message.hops)));
        }
        if let Some(trace) = &self.trace {
            trace.receive(
                self.id,
                message.trace_id,
                message.kind.name(),
                Instant::now(),
            );
        }
    }

    /// Notes that the actor's state just changed.
    pub fn changed(&mut self) {
        if let (Some(hops), None) = (self.touched, self.first_change) {
            self.first_change = Some(FirstChange {
                hops,
                at: Instant::now(),
            });
        }
    }

    /// Forgets the perturbation record, for a new relaxation or perturbation.
    pub fn reset_perturbation(&mut self) {
        self.touched = None;
        self.first_change = None;
    }

    /// Records an update slice in the trace.
    pub fn traced(&self, start: Instant) {
        if let Some(trace) = &self.trace {
            trace.update(self.id, start, Instant::now());
        }
    }

    pub fn count_update(&self) {
        if let Some(mut stats) = self.stats.get_mut(&self.id) {
            stats.updates += 1;
        }
    }

    /// Builds the report every actor sends at the end of a relaxation.
    pub fn report(&mut self, updates: usize) -> ActorReport {
        ActorReport {
            actor: self.id,
            updates,
            reads: self.audit.as_mut().map(Audit::take).unwrap_or_default(),
            first_change: self.first_change,
        }
    }

    pub fn set_settled(&mut self, settled: bool) {
        if let Some(mut stats) = self.stats.get_mut(&self.id) {
            stats.settled = settled;
        }
    }

    pub fn answer_probe(&self, wave: u64, settled: bool) {
        let settled = settled && self.data_rx.is_empty();
        let reply = ProbeReply {
            actor: self.id,
            wave,
            sent: self.sent,
            received: self.received,
            settled,
        };
        let _ = self.events_tx.send(DetectorEvent::Reply(reply));
    }

    pub fn hint(&self) {
        let _ = self.events_tx.send(DetectorEvent::Hint(self.id));
    }
}

/// Runs the input actor: on each `Start` it sends the batch's `x_0` up and is
/// settled from then on.
pub(super) async fn run_input<A>(mut wiring: Wiring<A>)
where
    A: NdFloat + Send + Sync + 'static,
{
    wiring.set_settled(true);
    let mut batch = 0;
    let mut current: Option<Arc<Array2<A>>> = None;
    while let Some(control) = wiring.control_rx.recv().await {
        match control {
            Control::Start {
                batch: b, input, ..
            } => {
                batch = b;
                wiring.reset_perturbation();
                if let Some(x0) = input {
                    wiring.send(MessageKind::StateUp, batch, &x0);
                    current = Some(x0);
                }
                wiring.hint();
            }
            Control::Perturb { change } => {
                wiring.reset_perturbation();
                if let (Some((unit, delta)), Some(x0)) = (change, &current) {
                    let mut changed = (**x0).clone();
                    changed.column_mut(unit).mapv_inplace(|v| v + cast(delta));
                    let changed = Arc::new(changed);
                    wiring.touched = Some(0);
                    wiring.changed();
                    wiring.send(MessageKind::StateUp, batch, &changed);
                    current = Some(changed);
                }
                wiring.hint();
            }
            Control::Probe { wave } => wiring.answer_probe(wave, true),
            Control::Finish { .. } => {
                let report = wiring.report(0);
                let _ = wiring.replies_tx.send(Reply::Report(report));
            }
            Control::Go => {}
            Control::Stop => break,
        }
    }
}

/// A layer actor's own state besides its wiring.
pub(super) struct LayerActor<A> {
    pub wiring: Wiring<A>,
    pub layer: Layer<A>,
    pub config: RelaxConfig,
    /// Units' activity over the current reseeding window.
    pub window: UsageWindow,
    batch: u64,
    /// Newest `x_{i−1}`, its sequence number and sender; `None` before the
    /// first.
    below: Option<(u64, ActorId, Arc<Array2<A>>)>,
    /// Newest `p_{i+1}`, its sequence number and sender.
    above: Option<(u64, ActorId, Arc<Array2<A>>)>,
    started: bool,
    settled: bool,
    updates: usize,
    outcome: Outcome,
    /// Divergence limit, set from the first evaluation of each relaxation.
    limit: Option<A>,
    /// The prediction of the current state, as last sent down; the next
    /// evaluation reuses it. `None` whenever the state or weights changed
    /// without a new prediction being sent.
    sent_prediction: Option<Arc<Array2<A>>>,
}

impl<A> LayerActor<A>
where
    A: NdFloat + Send + Sync + 'static,
{
    pub fn new(wiring: Wiring<A>, layer: Layer<A>, config: RelaxConfig) -> Self {
        let window = UsageWindow::new(layer.w.ncols());
        LayerActor {
            wiring,
            layer,
            config,
            window,
            batch: 0,
            below: None,
            above: None,
            started: false,
            settled: true,
            updates: 0,
            outcome: Outcome::Converged,
            limit: None,
            sent_prediction: None,
        }
    }

    /// Runs until `Stop` or until its channels close.
    pub async fn run(mut self) {
        loop {
            while let Ok(control) = self.wiring.control_rx.try_recv() {
                if !self.handle_control(control) {
                    return;
                }
            }
            let mut took_message = false;
            while let Ok(message) = self.wiring.data_rx.try_recv() {
                self.accept(message);
                took_message = true;
            }
            if self.ready() && !self.settled {
                self.work();
                tokio::task::yield_now().await;
                continue;
            }
            if took_message && self.settled {
                self.wiring.hint();
            }
            tokio::select! {
                biased;
                control = self.wiring.control_rx.recv() => match control {
                    Some(control) => if !self.handle_control(control) { return },
                    None => return,
                },
                message = self.wiring.data_rx.recv() => match message {
                    Some(message) => {
                        self.accept(message);
                        if self.settled {
                            // A stale message changed nothing, so the actor is still settled.
                            self.wiring.hint();
                        }
                    }
                    None => return,
                },
            }
        }
    }

    fn ready(&self) -> bool {
        self.started && (self.above.is_some() || !self.layer.has_above)
    }

    /// Handles a control message; returns false on `Stop`.
    fn handle_control(&mut self, control: Control<A>) -> bool {
        match control {
            Control::Start { batch, .. } => {
                self.wiring.reset_perturbation();
                self.batch = batch;
                self.below = None;
                self.above = None;
                self.started = false;
                self.settled = false;
                self.updates = 0;
                self.outcome = Outcome::Converged;
                self.limit = None;
                self.sent_prediction = None;
                self.wiring.set_settled(false);
                let _ = self.wiring.replies_tx.send(Reply::Ready(self.wiring.id));
            }
            Control::Perturb { .. } => {
                // The input owns every input unit; a layer only restarts its
                // count of updates and its record of the perturbation.
                self.wiring.reset_perturbation();
                self.updates = 0;
            }
            Control::Probe { wave } => self.wiring.answer_probe(wave, self.settled),
            Control::Finish {
                rate,
                reseed,
                return_state,
            } => self.finish(rate, reseed, return_state),
            Control::Go => {}
            Control::Stop => return false,
        }
        true
    }

    /// Takes one data message: keeps it if it is the newest on its edge.
    fn accept(&mut self, message: DataMessage<A>) {
        self.wiring.count_received(&message);
        if message.batch != self.batch {
            return;
        }
        let slot = match message.kind {
            MessageKind::StateUp => &mut self.below,
            MessageKind::PredictionDown => &mut self.above,
            // Kinds of the block protocol never reach a layer actor.
            MessageKind::ResidualUp | MessageKind::Norm | MessageKind::Scale => return,
        };
        if slot
            .as_ref()
            .is_some_and(|(sequence, _, _)| *sequence >= message.sequence)
        {
            return;
        }
        *slot = Some((message.sequence, message.from, message.payload));
        self.settled = false;
        self.wiring.set_settled(false);
        if !self.started && message.kind == MessageKind::StateUp {
            self.start();
        }
    }

    /// Sets the feed-forward starting state and announces it.
    fn start(&mut self) {
        let Some((_, _, below)) = &self.below else {
            return;
        };
        self.layer.start(below.view());
        self.started = true;
        self.announce();
        debug!(layer = self.layer.index, batch = self.batch, "started");
    }

    /// Sends the current state up and the current prediction down.
    fn announce(&mut self) {
        let batch = self.batch;
        let state = Arc::new(self.layer.x.clone());
        self.wiring.send(MessageKind::StateUp, batch, &state);
        if self
            .wiring
            .outgoing
            .iter()
            .any(|o| o.edge.kind == MessageKind::PredictionDown)
        {
            let p = Arc::new(prediction(self.layer.x.view(), self.layer.w.view()));
            self.wiring.send(MessageKind::PredictionDown, batch, &p);
            self.sent_prediction = Some(p);
        }
    }

    fn evaluate(&self) -> Option<LayerEval<A>> {
        let (_, _, below) = self.below.as_ref()?;
        let above = self.above.as_ref().map(|(_, _, p)| p.view());
        let eval = match &self.sent_prediction {
            // Copying the batch's prediction is cheaper than recomputing it.
            Some(p) => self
                .layer
                .evaluate_with_prediction(below.view(), above, (**p).clone()),
            None => self.layer.evaluate(below.view(), above),
        };
        Some(eval)
    }

    /// Evaluates against the newest messages and either settles or steps once
    /// and sends the new state.
    fn work(&mut self) {
        let began = Instant::now();
        let Some(eval) = self.evaluate() else { return };
        let tolerance: A = cast(self.config.tolerance);
        let residual = eval.max_residual();
        let limit = *self
            .limit
            .get_or_insert(residual.max(tolerance) * cast(self.config.divergence_factor));
        let outcome = if !eval.is_finite() || residual > limit {
            Some(Outcome::Diverged)
        } else if residual < tolerance {
            Some(Outcome::Converged)
        } else if self.updates >= self.config.max_steps {
            Some(Outcome::Capped)
        } else {
            None
        };
        if let Some(outcome) = outcome {
            self.outcome = outcome;
            self.settled = true;
            self.wiring.set_settled(true);
            self.wiring.hint();
            return;
        }
        self.record_reads();
        self.layer.step(&eval, tolerance);
        self.updates += 1;
        self.wiring.count_update();
        self.wiring.changed();
        self.announce();
        self.wiring.traced(began);
    }

    /// Notes, for the audit, the senders of the messages an update uses.
    fn record_reads(&mut self) {
        let Some(audit) = self.wiring.audit.as_mut() else {
            return;
        };
        if let Some((_, from, _)) = &self.below {
            audit.record(*from, MessageKind::StateUp);
        }
        if let Some((_, from, _)) = &self.above {
            audit.record(*from, MessageKind::PredictionDown);
        }
    }

    /// Reports the relaxation just ended and, with `rate > 0`, applies
    /// equation 1 to this layer's synapses.
    fn finish(&mut self, rate: f64, reseed: bool, return_state: bool) {
        let Some(eval) = self.evaluate() else {
            let summary = self.empty_summary();
            let _ = self
                .wiring
                .replies_tx
                .send(Reply::Finished(Box::new(summary)));
            return;
        };
        let to_f64 = |v: &A| v.to_f64().unwrap_or(f64::NAN);
        let below = &self.below.as_ref().map(|(_, _, b)| Arc::clone(b));
        let reconstruction = match below {
            Some(below) => {
                let r = &**below - &eval.prediction;
                r.rows()
                    .into_iter()
                    .map(|row| 0.5 * to_f64(&row.dot(&row)))
                    .collect()
            }
            None => Vec::new(),
        };
        let usage = self.layer.usage();
        let mut summary = LayerSummary {
            layer: self.layer.index,
            updates: self.updates,
            outcome: self.outcome,
            row_residual: eval.row_residual.iter().map(to_f64).collect(),
            max_constraint_violation: to_f64(&eval.constraint.fold(A::zero(), |m, &v| m.max(v))),
            usage: usage.to_vec(),
            blank_rows: self.layer.blank.iter().filter(|&&b| b).count(),
            zero_columns: Vec::new(),
            reseeded: Vec::new(),
            reconstruction,
            state: return_state.then(|| Arc::new(self.layer.x.clone())),
            lambda: self.layer.lambda.clone().filter(|_| return_state),
            weights: None,
            report: ActorReport::default(),
        };
        // Learning and reseeding change W, so the sent prediction is stale.
        self.sent_prediction = None;
        if rate > 0.0 && self.outcome != Outcome::Diverged {
            self.record_reads();
            summary.zero_columns = self.layer.learn(&eval, cast(rate));
            self.window.add(&usage, self.layer.x.nrows());
            if reseed {
                let unused = self.window.unused();
                summary.reseeded = reseed_unused(&mut self.layer, eval.residual.view(), &unused);
                self.window.reset();
            }
        }
        summary.weights = Some(Arc::new(self.layer.w.clone()));
        summary.report = self.wiring.report(self.updates);
        let _ = self
            .wiring
            .replies_tx
            .send(Reply::Finished(Box::new(summary)));
    }

    fn empty_summary(&mut self) -> LayerSummary<A> {
        LayerSummary {
            layer: self.layer.index,
            updates: self.updates,
            outcome: self.outcome,
            row_residual: Vec::new(),
            max_constraint_violation: 0.0,
            usage: vec![0; self.layer.w.ncols()],
            blank_rows: 0,
            zero_columns: Vec::new(),
            reseeded: Vec::new(),
            reconstruction: Vec::new(),
            state: None,
            lambda: None,
            weights: Some(Arc::new(self.layer.w.clone())),
            report: self.wiring.report(self.updates),
        }
    }
}
