//! The actors of block and unit granularity: input blocks, the lambda actor
//! and blocks of hidden units. A block owns its units' states and their
//! columns of `W_i`. Every other value it uses arrived in a message from a
//! neighbour.
//!
//! The protocol:
//!
//! - a block sends each block below the part of the prediction its units
//!   make there, `x_B W[C, B]ᵀ`, and receives back the residual of those
//!   units, `r̃_C`, which the block below forms from its own state (or the
//!   clamped input) and the sum of the partial predictions it holds;
//! - an input block also needs lambda's scale `1 + lambda/‖p_1‖` to form
//!   `r̃_1`, and sends its share of `‖p_1‖²` to the lambda actor, which
//!   steps lambda by `‖p_1‖ − 1` and sends the new scale back.
//!
//! A residual carries an acknowledgement: the sequence number of the newest
//! partial prediction from the receiver that went into it. A block steps
//! only when every block below has answered its newest partial prediction,
//! so it never steps twice on a residual that does not yet reflect its own
//! last step; the lambda actor likewise waits until every input block has
//! answered its newest scale. Without that, a unit would keep stepping along
//! a stale gradient and overshoot.
//!
//! Invariant (as for layer actors): the settled flag turns false only when an
//! actor takes a data message, and a settled actor sends nothing.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array1, Array2, Axis, NdFloat, s};

use super::actor::Wiring;
use super::message::{ActorReport, BlockSummary, Control, DataMessage, Reply};
use super::topology::{ActorId, MessageKind};
use crate::model::{cast, normalize_columns, projected_residual, tiny};
use crate::relaxation::{Outcome, RelaxConfig};

/// Lambda stops as capped after this many times `relax.max_steps` steps in
/// a row without layer 1 moving.
const UNMOVED_STEPS: usize = 4;

/// The newest message on one incoming wire.
struct Slot<A> {
    from: ActorId,
    kind: MessageKind,
    /// The sender's units.
    units: Range<usize>,
    sequence: u64,
    ack: u64,
    payload: Option<Arc<Array2<A>>>,
}

/// Every incoming wire's newest message, for the current relaxation.
struct Inbox<A> {
    slots: Vec<Slot<A>>,
    index: HashMap<(ActorId, MessageKind), usize>,
    batch: u64,
}

impl<A> Inbox<A> {
    fn new(incoming: Vec<(ActorId, MessageKind, Range<usize>)>) -> Self {
        let mut index = HashMap::new();
        let slots = incoming
            .into_iter()
            .enumerate()
            .map(|(i, (from, kind, units))| {
                index.insert((from, kind), i);
                Slot {
                    from,
                    kind,
                    units,
                    sequence: 0,
                    ack: 0,
                    payload: None,
                }
            })
            .collect();
        Inbox {
            slots,
            index,
            batch: 0,
        }
    }

    fn reset(&mut self, batch: u64) {
        self.batch = batch;
        for slot in &mut self.slots {
            slot.sequence = 0;
            slot.ack = 0;
            slot.payload = None;
        }
    }

    /// Keeps `message` if it is the newest of its wire in this relaxation;
    /// returns whether it did.
    fn accept(&mut self, message: DataMessage<A>) -> bool {
        if message.batch != self.batch {
            return false;
        }
        let Some(&i) = self.index.get(&(message.from, message.kind)) else {
            return false;
        };
        let slot = &mut self.slots[i];
        if slot.sequence >= message.sequence {
            return false;
        }
        slot.sequence = message.sequence;
        slot.ack = message.ack;
        slot.payload = Some(message.payload);
        true
    }

    fn of(&self, kind: MessageKind) -> impl Iterator<Item = &Slot<A>> {
        self.slots.iter().filter(move |s| s.kind == kind)
    }

    /// Returns whether every wire of `kind` has delivered a message.
    fn complete(&self, kind: MessageKind) -> bool {
        self.of(kind).all(|s| s.payload.is_some())
    }

    fn get(&self, from: ActorId, kind: MessageKind) -> Option<&Slot<A>> {
        self.index.get(&(from, kind)).map(|&i| &self.slots[i])
    }

    /// Notes, for the audit, one read of every message of `kind`.
    fn record_reads(&self, wiring: &mut Wiring<A>, kind: MessageKind) {
        if let Some(audit) = wiring.audit.as_mut() {
            for slot in self.of(kind).filter(|s| s.payload.is_some()) {
                audit.record(slot.from, slot.kind);
            }
        }
    }
}

/// The parts of a block-granularity actor besides its wiring.
pub(super) struct BlockParts {
    /// Per incoming wire: sender, kind and the sender's units.
    pub incoming: Vec<(ActorId, MessageKind, Range<usize>)>,
    /// Per outgoing wire (same order as the wiring's), the receiver's units.
    pub targets: Vec<Range<usize>>,
    pub units: Range<usize>,
    pub config: RelaxConfig,
}

/// Returns the sum of the payloads of every message of `kind`, or zeros of
/// shape `shape` when there are none.
fn sum_of<A: NdFloat>(inbox: &Inbox<A>, kind: MessageKind, shape: (usize, usize)) -> Array2<A> {
    let mut total = Array2::zeros(shape);
    for slot in inbox.of(kind) {
        if let Some(p) = &slot.payload
            && p.dim() == shape
        {
            total += &**p;
        }
    }
    total
}

/// Clamped input units: they form `r̃_1 = x_0 − s p_1` for their units.
pub(super) struct InputBlockActor<A> {
    wiring: Wiring<A>,
    inbox: Inbox<A>,
    units: Range<usize>,
    x0: Array2<A>,
    batch: u64,
    /// A message arrived (or the input changed) since the last residual.
    pending: bool,
    updates: usize,
    last_residual: Option<Array2<A>>,
    /// Partial predictions taken in this relaxation; sent with the norm so
    /// that the lambda actor can tell when layer 1 has moved.
    predictions_taken: u64,
}

impl<A> InputBlockActor<A>
where
    A: NdFloat + Send + Sync + 'static,
{
    pub fn new(wiring: Wiring<A>, parts: BlockParts) -> Self {
        let width = parts.units.len();
        InputBlockActor {
            wiring,
            inbox: Inbox::new(parts.incoming),
            units: parts.units,
            x0: Array2::zeros((0, width)),
            batch: 0,
            pending: false,
            updates: 0,
            last_residual: None,
            predictions_taken: 0,
        }
    }

    pub async fn run(mut self) {
        loop {
            while let Ok(control) = self.wiring.control_rx.try_recv() {
                if !self.handle_control(control) {
                    return;
                }
            }
            while let Ok(message) = self.wiring.data_rx.try_recv() {
                self.take(message);
            }
            if self.pending {
                self.process();
                self.wiring.set_settled(true);
                self.wiring.hint();
            }
            tokio::select! {
                biased;
                control = self.wiring.control_rx.recv() => match control {
                    Some(control) => if !self.handle_control(control) { return },
                    None => return,
                },
                message = self.wiring.data_rx.recv() => match message {
                    Some(message) => self.take(message),
                    None => return,
                },
            }
        }
    }

    fn take(&mut self, message: DataMessage<A>) {
        self.wiring.count_received(&message);
        let kind = message.kind;
        if self.inbox.accept(message) {
            if kind == MessageKind::PredictionDown {
                self.predictions_taken += 1;
            }
            self.pending = true;
            self.wiring.set_settled(false);
        }
    }

    fn handle_control(&mut self, control: Control<A>) -> bool {
        match control {
            Control::Start { batch, start, .. } => {
                self.batch = batch;
                self.inbox.reset(batch);
                self.wiring.reset_perturbation();
                self.predictions_taken = 0;
                if let Some(start) = start {
                    self.x0 = start.values;
                }
                self.pending = false;
                self.updates = 0;
                self.last_residual = None;
                self.wiring.set_settled(true);
                let _ = self.wiring.replies_tx.send(Reply::Ready(self.wiring.id));
            }
            Control::Perturb { change } => {
                self.wiring.reset_perturbation();
                self.updates = 0;
                if let Some((unit, delta)) = change
                    && unit < self.x0.ncols()
                {
                    self.x0
                        .column_mut(unit)
                        .mapv_inplace(|v| v + cast::<A>(delta));
                    self.wiring.touched = Some(0);
                    self.wiring.changed();
                    self.pending = true;
                    self.process();
                }
                self.wiring.hint();
            }
            Control::Probe { wave } => self.wiring.answer_probe(wave, !self.pending),
            Control::Finish { .. } => {
                let report = self.wiring.report(self.updates);
                let summary = BlockSummary {
                    report,
                    outcome: Outcome::Converged,
                    layer: 0,
                    units: self.units.clone(),
                    values: None,
                    weights: None,
                    row_residual: Array1::zeros(0),
                    zero_columns: Vec::new(),
                };
                let _ = self
                    .wiring
                    .replies_tx
                    .send(Reply::BlockFinished(Box::new(summary)));
            }
            Control::Go => {}
            Control::Stop => return false,
        }
        true
    }

    /// Sends the norm share and, once lambda's scale is known, the residual.
    fn process(&mut self) {
        self.pending = false;
        if !self.inbox.complete(MessageKind::PredictionDown) {
            return;
        }
        let began = Instant::now();
        let p = sum_of(&self.inbox, MessageKind::PredictionDown, self.x0.dim());
        // Column 0: this block's share of ‖p_1‖²; column 1: how many partial
        // predictions it has taken, the same in every row.
        let taken: A = cast(self.predictions_taken as f64);
        let mut norm = Array2::zeros((self.x0.nrows(), 2));
        for (b, row) in p.rows().into_iter().enumerate() {
            norm[[b, 0]] = row.dot(&row);
            norm[[b, 1]] = taken;
        }
        let norm = Arc::new(norm);
        let batch = self.batch;
        for index in 0..self.wiring.outgoing.len() {
            let edge = self.wiring.outgoing[index].edge;
            if edge.kind == MessageKind::Norm {
                let ack = self
                    .inbox
                    .get(edge.to, MessageKind::Scale)
                    .map_or(0, |s| s.sequence);
                self.wiring.send_on(index, batch, &norm, ack);
            }
        }
        let scale = self
            .inbox
            .of(MessageKind::Scale)
            .find_map(|s| s.payload.clone());
        let Some(scale) = scale else {
            return;
        };
        let mut residual = self.x0.clone();
        for (b, mut row) in residual.rows_mut().into_iter().enumerate() {
            let s = scale.get((b, 0)).copied().unwrap_or_else(A::one);
            row.scaled_add(-s, &p.row(b));
        }
        self.inbox
            .record_reads(&mut self.wiring, MessageKind::PredictionDown);
        self.inbox
            .record_reads(&mut self.wiring, MessageKind::Scale);
        self.updates += 1;
        self.wiring.count_update();
        if self.last_residual.as_ref() != Some(&residual) {
            self.wiring.changed();
        }
        let shared = Arc::new(residual.clone());
        self.last_residual = Some(residual);
        for index in 0..self.wiring.outgoing.len() {
            let edge = self.wiring.outgoing[index].edge;
            if edge.kind == MessageKind::ResidualUp {
                let ack = self
                    .inbox
                    .get(edge.to, MessageKind::PredictionDown)
                    .map_or(0, |s| s.sequence);
                self.wiring.send_on(index, batch, &shared, ack);
            }
        }
        self.wiring.traced(began);
    }
}

/// Checks a residual against the tolerance, the step cap and the divergence
/// limit, and returns the outcome when the actor should stop stepping.
///
/// The limit is the divergence factor times the first residual, but never
/// less than the factor itself: an actor may start exactly settled (lambda
/// starts with `‖p_1‖ = 1`), and residuals of unit-norm inputs are of order
/// one when a relaxation begins.
fn judge<A: NdFloat>(
    residual: A,
    finite: bool,
    updates: usize,
    limit: &mut Option<A>,
    config: &RelaxConfig,
) -> Option<Outcome> {
    let tolerance: A = cast(config.tolerance);
    let limit = *limit.get_or_insert(residual.max(A::one()) * cast(config.divergence_factor));
    if !finite || residual > limit {
        Some(Outcome::Diverged)
    } else if residual < tolerance {
        Some(Outcome::Converged)
    } else if updates >= config.max_steps {
        Some(Outcome::Capped)
    } else {
        None
    }
}

/// Returns whether every receiver of the newest message on wires of kind
/// `request` has replied with a message of kind `answer` acknowledging it.
fn answered<A>(
    wiring: &Wiring<A>,
    inbox: &Inbox<A>,
    request: MessageKind,
    answer: MessageKind,
) -> bool {
    wiring
        .outgoing
        .iter()
        .filter(|o| o.edge.kind == request)
        .all(|o| match inbox.get(o.edge.to, answer) {
            Some(slot) => slot.ack == o.sequence,
            None => true,
        })
}

/// The per-image multipliers lambda of the norm constraint `‖p_1‖ = 1`.
pub(super) struct LambdaActor<A> {
    wiring: Wiring<A>,
    inbox: Inbox<A>,
    config: RelaxConfig,
    /// Whether layer 1 has a layer above (adds 1 to the curvature bound).
    has_above: bool,
    lambda: Array1<A>,
    blank: Arc<Vec<bool>>,
    lipschitz: A,
    batch: u64,
    pending: bool,
    /// The scale last sent; `None` before the first.
    last_scale: Option<Array2<A>>,
    /// Per norm wire, the count of partial predictions its input block had
    /// taken at lambda's last step.
    progress: Vec<A>,
    /// Steps in a row taken while layer 1 had not moved.
    unmoved: usize,
    settled: bool,
    updates: usize,
    outcome: Outcome,
    limit: Option<A>,
    row_residual: Array1<A>,
}

impl<A> LambdaActor<A>
where
    A: NdFloat + Send + Sync + 'static,
{
    pub fn new(wiring: Wiring<A>, parts: BlockParts, has_above: bool) -> Self {
        LambdaActor {
            wiring,
            inbox: Inbox::new(parts.incoming),
            config: parts.config,
            has_above,
            lambda: Array1::zeros(0),
            blank: Arc::new(Vec::new()),
            lipschitz: A::one(),
            batch: 0,
            pending: false,
            last_scale: None,
            progress: Vec::new(),
            unmoved: 0,
            settled: true,
            updates: 0,
            outcome: Outcome::Converged,
            limit: None,
            row_residual: Array1::zeros(0),
        }
    }

    pub async fn run(mut self) {
        loop {
            while let Ok(control) = self.wiring.control_rx.try_recv() {
                if !self.handle_control(control) {
                    return;
                }
            }
            while let Ok(message) = self.wiring.data_rx.try_recv() {
                self.take(message);
            }
            if self.pending {
                self.process();
                if self.settled {
                    self.wiring.hint();
                }
            }
            tokio::select! {
                biased;
                control = self.wiring.control_rx.recv() => match control {
                    Some(control) => if !self.handle_control(control) { return },
                    None => return,
                },
                message = self.wiring.data_rx.recv() => match message {
                    Some(message) => self.take(message),
                    None => return,
                },
            }
        }
    }

    fn take(&mut self, message: DataMessage<A>) {
        self.wiring.count_received(&message);
        if self.inbox.accept(message) {
            self.pending = true;
            self.settled = false;
            self.wiring.set_settled(false);
        }
    }

    fn handle_control(&mut self, control: Control<A>) -> bool {
        match control {
            Control::Start { batch, start, .. } => {
                self.batch = batch;
                self.inbox.reset(batch);
                self.wiring.reset_perturbation();
                if let Some(start) = start {
                    self.lambda = start.values.column(0).to_owned();
                    self.lipschitz = start.lipschitz;
                    self.blank = start.blank;
                }
                self.row_residual = Array1::zeros(self.lambda.len());
                self.pending = false;
                self.last_scale = None;
                self.progress.clear();
                self.unmoved = 0;
                self.settled = false;
                self.updates = 0;
                self.outcome = Outcome::Converged;
                self.limit = None;
                self.wiring.set_settled(false);
                let _ = self.wiring.replies_tx.send(Reply::Ready(self.wiring.id));
            }
            Control::Perturb { .. } => {
                self.wiring.reset_perturbation();
                self.updates = 0;
            }
            Control::Probe { wave } => self.wiring.answer_probe(wave, self.settled),
            Control::Finish { .. } => {
                let report = self.wiring.report(self.updates);
                let summary = BlockSummary {
                    report,
                    outcome: self.outcome,
                    layer: 0,
                    units: 0..0,
                    values: Some(self.lambda.clone().insert_axis(Axis(1))),
                    weights: None,
                    row_residual: self.row_residual.mapv(|v| v.to_f64().unwrap_or(f64::NAN)),
                    zero_columns: Vec::new(),
                };
                let _ = self
                    .wiring
                    .replies_tx
                    .send(Reply::BlockFinished(Box::new(summary)));
            }
            Control::Go => {}
            Control::Stop => return false,
        }
        true
    }

    fn process(&mut self) {
        self.pending = false;
        if !self.inbox.complete(MessageKind::Norm) {
            return;
        }
        let rows = self.lambda.len();
        let mut squared = Array1::<A>::zeros(rows);
        let mut progress = Vec::new();
        for slot in self.inbox.of(MessageKind::Norm) {
            if let Some(share) = slot.payload.as_ref().filter(|p| p.dim() == (rows, 2)) {
                squared += &share.column(0);
                progress.push(share.get((0, 1)).copied().unwrap_or_else(A::zero));
            }
        }
        let norms = squared.mapv(|v| v.max(A::zero()).sqrt());
        self.row_residual = Array1::from_shape_fn(rows, |b| {
            if self.blank.get(b).copied().unwrap_or(false) {
                A::zero()
            } else {
                (norms[b] - A::one()).abs()
            }
        });
        let constraint = self.row_residual.clone();
        // Column 0: the scale 1 + lambda/‖p_1‖; column 1: |‖p_1‖ − 1|, which
        // layer 1 counts in its residual as a layer actor does, so that it
        // keeps stepping while the constraint is violated.
        let scale = |lambda: &Array1<A>| -> Array2<A> {
            let mut s = Array2::ones((rows, 2));
            for b in 0..rows {
                if norms[b] > tiny() {
                    s[[b, 0]] = A::one() + lambda[b] / norms[b];
                }
                s[[b, 1]] = constraint[b];
            }
            s
        };
        if self.last_scale.is_none() {
            self.send_scale(scale(&self.lambda));
            return;
        }
        if !answered(
            &self.wiring,
            &self.inbox,
            MessageKind::Scale,
            MessageKind::Norm,
        ) {
            return;
        }
        let residual = self.row_residual.fold(A::zero(), |m, &v| m.max(v));
        let finite = self.row_residual.iter().all(|v| v.is_finite());
        let current = scale(&self.lambda);
        if let Some(outcome) = judge(
            residual,
            finite,
            self.updates,
            &mut self.limit,
            &self.config,
        ) {
            self.outcome = outcome;
            // The scale depends on ‖p_1‖ too: when layer 1 moved since the
            // last one was sent, send it again so that the residual the
            // input blocks form matches the output state exactly.
            if self.last_scale.as_ref() != Some(&current) {
                self.inbox.record_reads(&mut self.wiring, MessageKind::Norm);
                self.send_scale(current);
                return;
            }
            self.settled = true;
            self.wiring.set_settled(true);
            return;
        }
        // Beside a layer actor, lambda steps once per step of layer 1. Here
        // it takes a full step when layer 1 has moved since its last step,
        // and otherwise a step halved for each such step in a row, so that a
        // slow layer 1 cannot let lambda wind up (a large enough scale would
        // drive x_1 to zero, where lambda has no effect) while a stuck one
        // still lets lambda run to its cap and stop.
        let moved = progress.len() != self.progress.len()
            || progress
                .iter()
                .zip(&self.progress)
                .any(|(now, then)| now > then);
        let damping: A = if moved {
            self.unmoved = 0;
            self.progress = progress;
            A::one()
        } else {
            self.unmoved += 1;
            if self.unmoved > UNMOVED_STEPS * self.config.max_steps.max(1) {
                self.outcome = Outcome::Capped;
                self.settled = true;
                self.wiring.set_settled(true);
                return;
            }
            cast(0.5f64.powi(self.unmoved.min(60) as i32))
        };
        let began = Instant::now();
        self.inbox.record_reads(&mut self.wiring, MessageKind::Norm);
        let tolerance: A = cast(self.config.tolerance);
        let step_scale: A = cast(self.config.step_scale);
        let identity = if self.has_above { A::one() } else { A::zero() };
        for b in 0..rows {
            if self.row_residual[b] < tolerance {
                continue;
            }
            let curvature = current[[b, 0]].abs().max(A::one());
            let eta = step_scale / (curvature * self.lipschitz + identity).max(A::one());
            self.lambda[b] += damping * eta * (norms[b] - A::one());
        }
        if moved {
            self.updates += 1;
        }
        self.wiring.count_update();
        self.wiring.changed();
        self.send_scale(scale(&self.lambda));
        self.wiring.traced(began);
    }

    /// Sends `scale` to the input and layer-1 blocks. The actor then waits
    /// for the input blocks' replies.
    fn send_scale(&mut self, scale: Array2<A>) {
        let batch = self.batch;
        let shared = Arc::new(scale);
        self.wiring.send(MessageKind::Scale, batch, &shared);
        self.last_scale = Some(Arc::unwrap_or_clone(shared));
    }
}

/// Units `units` of hidden layer `layer`.
pub(super) struct BlockActor<A> {
    wiring: Wiring<A>,
    inbox: Inbox<A>,
    /// Per outgoing wire, the receiver's units.
    targets: Vec<Range<usize>>,
    config: RelaxConfig,
    layer: usize,
    units: Range<usize>,
    /// The block's columns of `W_layer` (n_{layer−1} x units).
    w: Array2<A>,
    /// 1 where a synapse exists, 0 elsewhere; the equation-1 step keeps
    /// missing synapses at zero.
    mask: Array2<A>,
    alpha: A,
    has_above: bool,
    x: Array2<A>,
    lipschitz: A,
    blank: Arc<Vec<bool>>,
    batch: u64,
    started: bool,
    pending: bool,
    /// A block above sent a partial prediction that has no reply yet.
    answer_above: bool,
    settled: bool,
    updates: usize,
    outcome: Outcome,
    limit: Option<A>,
    row_residual: Array1<A>,
}

/// A block's synapses and the settings of its layer.
pub(super) struct BlockSynapses<A> {
    pub layer: usize,
    pub w: Array2<A>,
    pub mask: Array2<A>,
    pub alpha: A,
    pub has_above: bool,
}

impl<A> BlockActor<A>
where
    A: NdFloat + Send + Sync + 'static,
{
    pub fn new(wiring: Wiring<A>, parts: BlockParts, synapses: BlockSynapses<A>) -> Self {
        let width = parts.units.len();
        BlockActor {
            wiring,
            inbox: Inbox::new(parts.incoming),
            targets: parts.targets,
            config: parts.config,
            layer: synapses.layer,
            units: parts.units,
            w: synapses.w,
            mask: synapses.mask,
            alpha: synapses.alpha,
            has_above: synapses.has_above,
            x: Array2::zeros((0, width)),
            lipschitz: A::one(),
            blank: Arc::new(Vec::new()),
            batch: 0,
            started: false,
            pending: false,
            answer_above: false,
            settled: true,
            updates: 0,
            outcome: Outcome::Converged,
            limit: None,
            row_residual: Array1::zeros(0),
        }
    }

    pub async fn run(mut self) {
        loop {
            while let Ok(control) = self.wiring.control_rx.try_recv() {
                if !self.handle_control(control) {
                    return;
                }
            }
            while let Ok(message) = self.wiring.data_rx.try_recv() {
                self.take(message);
            }
            if self.pending {
                self.process();
                if self.settled {
                    self.wiring.hint();
                }
            }
            tokio::select! {
                biased;
                control = self.wiring.control_rx.recv() => match control {
                    Some(control) => if !self.handle_control(control) { return },
                    None => return,
                },
                message = self.wiring.data_rx.recv() => match message {
                    Some(message) => self.take(message),
                    None => return,
                },
            }
        }
    }

    fn take(&mut self, message: DataMessage<A>) {
        self.wiring.count_received(&message);
        let kind = message.kind;
        if self.inbox.accept(message) {
            if kind == MessageKind::PredictionDown {
                self.answer_above = true;
            }
            self.pending = true;
            self.settled = false;
            self.wiring.set_settled(false);
        }
    }

    fn handle_control(&mut self, control: Control<A>) -> bool {
        match control {
            Control::Start { batch, start, .. } => {
                self.batch = batch;
                self.inbox.reset(batch);
                self.wiring.reset_perturbation();
                if let Some(start) = start {
                    self.x = start.values;
                    self.lipschitz = start.lipschitz;
                    self.blank = start.blank;
                }
                self.row_residual = Array1::zeros(self.x.nrows());
                self.started = false;
                self.pending = false;
                self.answer_above = false;
                self.settled = false;
                self.updates = 0;
                self.outcome = Outcome::Converged;
                self.limit = None;
                self.wiring.set_settled(false);
                let _ = self.wiring.replies_tx.send(Reply::Ready(self.wiring.id));
            }
            Control::Go => {
                self.started = true;
                self.send_predictions();
            }
            Control::Perturb { .. } => {
                self.wiring.reset_perturbation();
                self.updates = 0;
            }
            Control::Probe { wave } => self.wiring.answer_probe(wave, self.settled),
            Control::Finish { rate, .. } => self.finish(rate),
            Control::Stop => return false,
        }
        true
    }

    /// Sends every block below this block's part of its prediction.
    fn send_predictions(&mut self) {
        let batch = self.batch;
        for index in 0..self.wiring.outgoing.len() {
            if self.wiring.outgoing[index].edge.kind != MessageKind::PredictionDown {
                continue;
            }
            let below = self.targets[index].clone();
            let part = self.x.dot(&self.w.slice(s![below, ..]).t());
            self.wiring.send_on(index, batch, &Arc::new(part), 0);
        }
    }

    /// Sends every block above the residual `x − p` of this block's units,
    /// acknowledging its newest partial prediction.
    fn send_residuals(&mut self) {
        let above = sum_of(&self.inbox, MessageKind::PredictionDown, self.x.dim());
        let residual = Arc::new(&self.x - &above);
        let batch = self.batch;
        for index in 0..self.wiring.outgoing.len() {
            let edge = self.wiring.outgoing[index].edge;
            if edge.kind == MessageKind::ResidualUp {
                let ack = self
                    .inbox
                    .get(edge.to, MessageKind::PredictionDown)
                    .map_or(0, |s| s.sequence);
                self.wiring.send_on(index, batch, &residual, ack);
            }
        }
    }

    /// Returns the residual of the layer below, `r̃`, over all its units
    /// (zeros where no message covers them).
    fn residual_below(&self) -> Array2<A> {
        let below = self.w.nrows();
        let mut residual = Array2::zeros((self.x.nrows(), below));
        for slot in self.inbox.of(MessageKind::ResidualUp) {
            if let Some(r) = &slot.payload
                && slot.units.end <= below
                && r.dim() == (self.x.nrows(), slot.units.len())
            {
                residual.slice_mut(s![.., slot.units.clone()]).assign(&**r);
            }
        }
        residual
    }

    /// Returns `∂V/∂x` of the block's units, or `None` while a message it
    /// needs has not come.
    fn gradient(&self) -> Option<Array2<A>> {
        let complete = self.inbox.complete(MessageKind::ResidualUp)
            && self.inbox.complete(MessageKind::PredictionDown)
            && self.inbox.complete(MessageKind::Scale);
        if !complete {
            return None;
        }
        let mut gradient = self.residual_below().dot(&self.w);
        gradient.mapv_inplace(|g| self.alpha - g);
        if self.has_above {
            let above = sum_of(&self.inbox, MessageKind::PredictionDown, self.x.dim());
            gradient = gradient + &self.x - &above;
        }
        Some(gradient)
    }

    fn process(&mut self) {
        self.pending = false;
        if !self.started {
            return;
        }
        let began = Instant::now();
        let mut stepped = false;
        let ready = answered(
            &self.wiring,
            &self.inbox,
            MessageKind::PredictionDown,
            MessageKind::ResidualUp,
        );
        if let Some(gradient) = ready.then(|| self.gradient()).flatten() {
            let projected = projected_residual(self.x.view(), gradient.view());
            let mut rows =
                projected.map_axis(Axis(1), |r| r.fold(A::zero(), |m, &v| m.max(v.abs())));
            let scale = self
                .inbox
                .of(MessageKind::Scale)
                .find_map(|s| s.payload.clone());
            if let Some(scale) = &scale {
                for (b, r) in rows.iter_mut().enumerate() {
                    if let Some(&constraint) = scale.get((b, 1)) {
                        *r = r.max(constraint);
                    }
                }
            }
            for (b, &blank) in self.blank.iter().enumerate() {
                if blank && b < rows.len() {
                    rows[b] = A::zero();
                }
            }
            let residual = rows.fold(A::zero(), |m, &v| m.max(v));
            let finite = rows.iter().all(|v| v.is_finite());
            self.row_residual = rows;
            match judge(
                residual,
                finite,
                self.updates,
                &mut self.limit,
                &self.config,
            ) {
                Some(outcome) => {
                    self.outcome = outcome;
                    self.settled = true;
                }
                None => {
                    self.step(&gradient);
                    stepped = true;
                }
            }
        }
        if (stepped || self.answer_above) && self.inbox.complete(MessageKind::PredictionDown) {
            self.answer_above = false;
            self.send_residuals();
        }
        if stepped {
            self.send_predictions();
            self.wiring.traced(began);
        }
        self.wiring.set_settled(self.settled);
    }

    fn step(&mut self, gradient: &Array2<A>) {
        self.inbox
            .record_reads(&mut self.wiring, MessageKind::ResidualUp);
        self.inbox
            .record_reads(&mut self.wiring, MessageKind::PredictionDown);
        self.inbox
            .record_reads(&mut self.wiring, MessageKind::Scale);
        let tolerance: A = cast(self.config.tolerance);
        let step_scale: A = cast(self.config.step_scale);
        let identity = if self.has_above { A::one() } else { A::zero() };
        let scale = self
            .inbox
            .of(MessageKind::Scale)
            .find_map(|s| s.payload.clone());
        for b in 0..self.x.nrows() {
            if self.row_residual[b] < tolerance {
                continue;
            }
            let curvature = scale
                .as_ref()
                .and_then(|s| s.get((b, 0)).copied())
                .map_or(A::one(), |s| s.abs().max(A::one()));
            let eta = step_scale / (curvature * self.lipschitz + identity).max(A::one());
            let g = gradient.row(b);
            self.x
                .row_mut(b)
                .zip_mut_with(&g, |x, &g| *x = (*x - eta * g).max(A::zero()));
        }
        self.updates += 1;
        self.wiring.count_update();
        self.wiring.changed();
    }

    /// Reports the relaxation and, with `rate > 0`, applies equation 1 to the
    /// block's own columns, `W ← W + rate · 2 r̃ᵀ x / B` on existing synapses,
    /// then renormalises them.
    fn finish(&mut self, rate: f64) {
        let mut zero_columns = Vec::new();
        if rate > 0.0 && self.outcome != Outcome::Diverged && self.x.nrows() > 0 {
            self.inbox
                .record_reads(&mut self.wiring, MessageKind::ResidualUp);
            let residual = self.residual_below();
            let rows = cast::<A>(self.x.nrows() as f64);
            let mut gradient = residual.t().dot(&self.x) * (cast::<A>(-2.0) / rows);
            gradient *= &self.mask;
            self.w.scaled_add(-cast::<A>(rate), &gradient);
            zero_columns = normalize_columns(&mut self.w)
                .into_iter()
                .map(|k| k + self.units.start)
                .collect();
        }
        let report: ActorReport = self.wiring.report(self.updates);
        let summary = BlockSummary {
            report,
            outcome: self.outcome,
            layer: self.layer,
            units: self.units.clone(),
            values: Some(self.x.clone()),
            weights: Some(self.w.clone()),
            row_residual: self.row_residual.mapv(|v| v.to_f64().unwrap_or(f64::NAN)),
            zero_columns,
        };
        let _ = self
            .wiring
            .replies_tx
            .send(Reply::BlockFinished(Box::new(summary)));
    }
}
