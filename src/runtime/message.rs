//! The messages that cross actor boundaries: data messages between
//! neighbours, control messages from the driver and the detector, and the
//! replies actors send back.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array1, Array2};

use super::topology::{ActorId, MessageKind};
use crate::relaxation::Outcome;

/// A value sent along an edge of the topology. The payload contains a whole
/// mini-batch, one row per image, and is shared, never copied.
#[derive(Clone, Debug)]
pub struct DataMessage<A> {
    pub from: ActorId,
    pub kind: MessageKind,
    /// The relaxation this message belongs to.
    pub batch: u64,
    /// Position in the sender's stream on this edge; with injected delays
    /// messages can overtake each other, and a receiver keeps the newest.
    pub sequence: u64,
    /// The sequence number of the receiver's newest message on the reverse
    /// edge that the sender had taken into account when it formed this one;
    /// 0 when the protocol has no replies (layer granularity).
    pub ack: u64,
    /// Message hops from the perturbed input unit to the sender's
    /// information, plus one; [`UNTOUCHED`] when the perturbation has not
    /// reached the sender.
    pub hops: u32,
    /// Identifier in the trace file, 0 when no trace is recorded.
    pub trace_id: u64,
    pub payload: Arc<Array2<A>>,
}

/// The hop count of a message whose sender the perturbation has not reached.
pub const UNTOUCHED: u32 = u32::MAX;

/// The starting point of a block-granularity actor's relaxation: the driver sets
/// the same initial state at every granularity, so that they can be compared
/// (fixed points need not be unique).
#[derive(Clone, Debug)]
pub struct BlockStart<A> {
    /// The actor's starting values: its units' states for a block, its slice
    /// of `x_0` for an input block, lambda (one column) for the lambda actor.
    pub values: Array2<A>,
    /// Upper estimate of `‖W_i‖²` of the actor's layer, for the step size; a
    /// parameter like the learning rate, refreshed between relaxations.
    pub lipschitz: A,
    /// Rows whose input is all zero; they never step.
    pub blank: Arc<Vec<bool>>,
}

/// A request from the driver or the detector. Actors handle control messages
/// before any queued data message.
#[derive(Debug)]
pub enum Control<A> {
    /// Begins relaxation `batch`; layer actors forget their neighbour views
    /// and reply [`Reply::Ready`]. The input actor gets the batch's `x_0`
    /// and sends it.
    Start {
        batch: u64,
        input: Option<Arc<Array2<A>>>,
        start: Option<Box<BlockStart<A>>>,
    },
    /// Lets block-granularity actors send their first messages, once every
    /// actor has taken `Start` (so none drops them as belonging to an older
    /// relaxation).
    Go,
    /// Continues the current relaxation after changing one input unit:
    /// `change` is `(unit within the receiver's block, delta)` for the actor
    /// that owns the unit and `None` for the others, which only reset their
    /// record of when the change first reached them.
    Perturb { change: Option<(usize, f64)> },
    /// Asks for the actor's counters and settled flag for wave `wave`.
    Probe { wave: u64 },
    /// Applies equation 1 with this learning rate (0 to only report), then
    /// reseeds unused units when `reseed` is set, and replies with a summary.
    Finish {
        rate: f64,
        reseed: bool,
        return_state: bool,
    },
    /// Ends the actor's task.
    Stop,
}

/// An actor's reply to a detector probe: counts and a flag, no values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeReply {
    pub actor: ActorId,
    pub wave: u64,
    /// Data messages sent since the actor started.
    pub sent: u64,
    /// Data messages taken out of the actor's mailbox since it started.
    pub received: u64,
    /// The actor's last evaluation was below tolerance (or it stopped at its
    /// cap or on divergence) and it has received nothing since.
    pub settled: bool,
}

/// Events the detector listens to.
#[derive(Clone, Copy, Debug)]
pub enum DetectorEvent {
    /// An actor became settled, or stayed settled after handling a message;
    /// a reason to start a wave, never a verdict.
    Hint(ActorId),
    Reply(ProbeReply),
}

/// A layer's account of the relaxation that just ended.
#[derive(Clone, Debug)]
pub struct LayerSummary<A> {
    pub layer: usize,
    pub updates: usize,
    pub outcome: Outcome,
    /// Per row, the residual at the end (before any learning step).
    pub row_residual: Vec<f64>,
    pub max_constraint_violation: f64,
    /// Per unit, the rows in which it was active.
    pub usage: Vec<usize>,
    pub blank_rows: usize,
    /// Columns whose norm was zero after the equation-1 step.
    pub zero_columns: Vec<usize>,
    /// Columns replaced by data because no image used them over the window.
    pub reseeded: Vec<usize>,
    /// Per row, `½‖x_{i−1} − p_i‖²` (layer 1's is the reconstruction error).
    pub reconstruction: Vec<f64>,
    pub state: Option<Arc<Array2<A>>>,
    /// Lambda per image (layer 1, with the state).
    pub lambda: Option<Array1<A>>,
    pub weights: Option<Arc<Array2<A>>>,
    pub report: ActorReport,
}

/// When a perturbation first changed an actor's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstChange {
    /// Message hops from the perturbed input unit to this change.
    pub hops: u32,
    pub at: Instant,
}

/// The report every actor sends at the end of a relaxation, whatever its role.
#[derive(Clone, Debug, Default)]
pub struct ActorReport {
    pub actor: ActorId,
    /// Relaxation steps (input blocks: residuals formed).
    pub updates: usize,
    /// With the audit on: per sender and kind, how many message values the
    /// actor used in state and synapse updates.
    pub reads: Vec<(ActorId, MessageKind, u64)>,
    pub first_change: Option<FirstChange>,
}

/// A block-granularity actor's account of the relaxation that just ended.
#[derive(Clone, Debug)]
pub struct BlockSummary<A> {
    pub report: ActorReport,
    pub outcome: Outcome,
    /// The layer (0 for input blocks and lambda) and the units owned.
    pub layer: usize,
    pub units: Range<usize>,
    /// The units' states (blocks) or lambda (one column, lambda actor).
    pub values: Option<Array2<A>>,
    /// The block's columns of `W_layer` after any learning step.
    pub weights: Option<Array2<A>>,
    /// Per row, the residual the actor last saw (blocks and lambda).
    pub row_residual: Array1<f64>,
    /// Columns whose norm was zero after the equation-1 step.
    pub zero_columns: Vec<usize>,
}

/// Replies to the driver.
#[derive(Debug)]
pub enum Reply<A> {
    Ready(ActorId),
    Finished(Box<LayerSummary<A>>),
    BlockFinished(Box<BlockSummary<A>>),
    /// An actor that has nothing else to report (the layer-granularity input).
    Report(ActorReport),
}
