//! The messages that cross actor boundaries: data messages between
//! neighbours, control messages from the driver and the detector, and the
//! replies actors send back.

use std::sync::Arc;

use ndarray::Array2;

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
    pub payload: Arc<Array2<A>>,
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
    },
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
    pub weights: Option<Arc<Array2<A>>>,
}

/// Replies to the driver.
#[derive(Debug)]
pub enum Reply<A> {
    Ready(ActorId),
    Finished(Box<LayerSummary<A>>),
}
