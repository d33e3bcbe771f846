//! The seeded schedule: a deterministic discrete-event simulation of the
//! layer actors of [`crate::runtime`] in virtual time.
//!
//! Each layer actor keeps the newest message per incoming edge, `x_{i−1}` from
//! below and `p_{i+1}` from above. It starts from the first `x_{i−1}` it
//! receives and announces its starting state. Whenever it has both messages
//! (the top layer needs none from above) and is not settled, it evaluates
//! against them. Below the tolerance it settles. Otherwise it steps, and the
//! step takes `speeds[i]` units of virtual time, after which it sends its new
//! state up and its prediction down and evaluates again. Starting and
//! evaluating take no virtual time. A delivered message replaces the
//! receiver's copy only if its per-edge sequence number is newer, since
//! messages can overtake each other, and it unsettles the receiver.
//!
//! Each message is delivered after a latency uniform on
//! `[mean (1 − spread), mean (1 + spread)]`, drawn in send order from
//! `ChaCha8Rng::seed_from_u64(seed)`. Events are ordered by time, then by the
//! order in which they were scheduled, so ties resolve the same way in every
//! run. The run is quiescent exactly when the event queue is empty: no
//! message is in flight, no step is in progress, and every actor is settled.
//!
//! Invariant: the same inputs and seed give a bit-identical run, except for
//! its wall-clock time (and unless the wall-clock limit ends it).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tracing::debug;

use super::{Context, Progress, ScheduleKind, ScheduleRun, Verdict, guarded_step, start_layers};
use crate::model::{Layer, LayerEval, prediction};

/// The incoming edge, and so the receiver's slot, a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edge {
    /// `x_{i−1}`, from the layer below or the input.
    StateUp,
    /// `p_{i+1}`, from the layer above.
    PredictionDown,
}

impl Edge {
    /// Returns the message kind's name, as in traffic and trace files.
    fn name(self) -> &'static str {
        match self {
            Edge::StateUp => "state_up",
            Edge::PredictionDown => "prediction_down",
        }
    }
}

/// Trace microseconds per unit of virtual time (one step of duration 1).
const TRACE_MICROS: f64 = 1000.0;

/// The action of an event. Layers are numbered from 0 (layer 1).
enum Action {
    /// A message arrives at layer `to`.
    Deliver {
        to: usize,
        edge: Edge,
        sequence: u64,
        payload: Arc<Array2<f64>>,
        /// Identifier of the message in the trace, 0 when none is recorded.
        trace_id: u64,
    },
    /// Layer `layer` evaluates against the messages that unsettled it.
    Wake { layer: usize },
    /// Layer `layer` finishes its step, sends its messages and evaluates again.
    StepDone { layer: usize },
}

/// An action at a virtual time. `order` counts the events scheduled before,
/// so it breaks ties between equal times deterministically.
struct Event {
    time: f64,
    order: u64,
    action: Action,
}

impl Event {
    fn key_cmp(&self, other: &Self) -> Ordering {
        self.time
            .total_cmp(&other.time)
            .then(self.order.cmp(&other.order))
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.key_cmp(other) == Ordering::Equal
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    /// Reversed, so that the max-heap `BinaryHeap` pops the earliest event.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key_cmp(self)
    }
}

/// The newest message received on one edge.
struct Slot {
    sequence: u64,
    payload: Arc<Array2<f64>>,
}

/// The simulator's record of one layer actor, besides its [`Layer`].
struct Actor {
    /// Newest `x_{i−1}`, or `None` before the first arrives.
    below: Option<Slot>,
    /// Newest `p_{i+1}`, always `None` for the top layer.
    above: Option<Slot>,
    /// Whether the actor has received its first `x_{i−1}` and started.
    started: bool,
    /// Whether the last evaluation was below the tolerance and no newer
    /// message arrived since.
    settled: bool,
    /// Whether a `Wake` or `StepDone` of this actor is in the queue, so that
    /// a new message needs no extra wake-up.
    scheduled: bool,
    /// Sequence numbers of the last state sent up and prediction sent down.
    sent_up: u64,
    sent_down: u64,
    /// Max row residual of the actor's last evaluation.
    residual: f64,
}

struct Simulator<'a> {
    context: &'a Context<'a>,
    layers: Vec<Layer<f64>>,
    actors: Vec<Actor>,
    queue: BinaryHeap<Event>,
    /// Events scheduled so far.
    scheduled: u64,
    now: f64,
    rng: ChaCha8Rng,
    progress: Progress<'a>,
    /// Messages dropped because a newer one on the same edge had arrived
    /// first.
    stale: u64,
    /// Messages given a trace identifier so far.
    trace_ids: u64,
}

/// Simulates the actors until quiescence or until a stopping rule of the
/// module [`crate::schedule`] applies.
pub(super) fn run<'a>(context: &'a Context<'a>) -> ScheduleRun {
    // The layers hold their starting states from the outset, so that the
    // curve can be measured before every actor has started. An actor still
    // calls `Layer::start` on its first `x_{i−1}`, which is the starting
    // state of the layer below (that layer cannot step before this one has
    // started and sent it a prediction), so the restart changes nothing.
    let layers = start_layers(context);
    let (progress, evals) = Progress::new(context, ScheduleKind::Seeded, &layers);
    let mut simulator = Simulator::new(context, layers, &evals, progress);
    let x0 = Arc::new(context.x0.to_owned());
    simulator.send(0, Edge::StateUp, 1, x0);
    let verdict = simulator.simulate();
    debug!(
        events = simulator.scheduled,
        stale = simulator.stale,
        time = simulator.now,
        "simulated"
    );
    let Simulator {
        layers,
        progress,
        now,
        ..
    } = simulator;
    progress.finish(verdict, &layers, now)
}

impl<'a> Simulator<'a> {
    fn new(
        context: &'a Context<'a>,
        layers: Vec<Layer<f64>>,
        start: &[LayerEval<f64>],
        progress: Progress<'a>,
    ) -> Self {
        let actors = start
            .iter()
            .map(|eval| Actor {
                below: None,
                above: None,
                started: false,
                settled: false,
                scheduled: false,
                sent_up: 0,
                sent_down: 0,
                residual: eval.max_residual(),
            })
            .collect();
        Simulator {
            context,
            layers,
            actors,
            queue: BinaryHeap::new(),
            scheduled: 0,
            now: 0.0,
            rng: ChaCha8Rng::seed_from_u64(context.seeded.seed),
            progress,
            stale: 0,
            trace_ids: 0,
        }
    }

    /// Processes events in order until the queue is empty (converged) or a
    /// stopping rule applies.
    fn simulate(&mut self) -> Verdict {
        while let Some(event) = self.queue.pop() {
            self.now = event.time;
            if self.context.timed_out() {
                return Verdict::TimedOut;
            }
            let verdict = match event.action {
                Action::Deliver {
                    to,
                    edge,
                    sequence,
                    payload,
                    trace_id,
                } => {
                    if let Some(trace) = self.context.trace {
                        let time = self.now * TRACE_MICROS;
                        trace.receive_at(to + 1, trace_id, edge.name(), time);
                    }
                    self.deliver(to, edge, sequence, payload);
                    None
                }
                Action::Wake { layer } => {
                    self.actors[layer].scheduled = false;
                    self.decide(layer)
                }
                Action::StepDone { layer } => {
                    self.actors[layer].scheduled = false;
                    self.announce(layer);
                    self.decide(layer)
                }
            };
            if let Some(verdict) = verdict {
                return verdict;
            }
        }
        Verdict::Converged
    }

    fn schedule(&mut self, time: f64, action: Action) {
        self.queue.push(Event {
            time,
            order: self.scheduled,
            action,
        });
        self.scheduled += 1;
    }

    /// Sends a message to layer `to`, delivered after a random latency.
    fn send(&mut self, to: usize, edge: Edge, sequence: u64, payload: Arc<Array2<f64>>) {
        let seeded = self.context.seeded;
        let u: f64 = self.rng.random();
        let latency = seeded.latency_mean * (1.0 + seeded.latency_spread * (2.0 * u - 1.0));
        let mut trace_id = 0;
        if let Some(trace) = self.context.trace {
            self.trace_ids += 1;
            trace_id = self.trace_ids;
            // Trace actor 0 is the input and actor i is layer i, so the
            // sender of a state is `to` and of a prediction `to + 2`.
            let from = match edge {
                Edge::StateUp => to,
                Edge::PredictionDown => to + 2,
            };
            trace.send_at(from, trace_id, edge.name(), self.now * TRACE_MICROS);
        }
        let action = Action::Deliver {
            to,
            edge,
            sequence,
            payload,
            trace_id,
        };
        self.schedule(self.now + latency, action);
        self.progress.count_sent(1);
    }

    /// Sends layer `i`'s current state up and its prediction down, where a
    /// layer is there to receive them.
    fn announce(&mut self, i: usize) {
        if i + 1 < self.layers.len() {
            self.actors[i].sent_up += 1;
            let state = Arc::new(self.layers[i].x.clone());
            self.send(i + 1, Edge::StateUp, self.actors[i].sent_up, state);
        }
        if i > 0 {
            self.actors[i].sent_down += 1;
            let layer = &self.layers[i];
            let p = Arc::new(prediction(layer.x.view(), layer.w.view()));
            self.send(i - 1, Edge::PredictionDown, self.actors[i].sent_down, p);
        }
    }

    /// Takes a message into layer `to`'s slot if it is the newest on its edge,
    /// starts the layer on its first `x_{i−1}`, and wakes it.
    fn deliver(&mut self, to: usize, edge: Edge, sequence: u64, payload: Arc<Array2<f64>>) {
        let actor = &mut self.actors[to];
        let slot = match edge {
            Edge::StateUp => &mut actor.below,
            Edge::PredictionDown => &mut actor.above,
        };
        if slot.as_ref().is_some_and(|s| s.sequence >= sequence) {
            self.stale += 1;
            return;
        }
        *slot = Some(Slot {
            sequence,
            payload: Arc::clone(&payload),
        });
        actor.settled = false;
        if edge == Edge::StateUp && !actor.started {
            actor.started = true;
            self.layers[to].start(payload.view());
            self.announce(to);
        }
        let actor = &self.actors[to];
        let ready = actor.started && (actor.above.is_some() || !self.layers[to].has_above);
        if ready && !actor.scheduled {
            self.actors[to].scheduled = true;
            self.schedule(self.now, Action::Wake { layer: to });
        }
    }

    /// Evaluates layer `i` against its newest messages, then settles it or
    /// steps it. Returns a verdict when a stopping rule applies.
    fn decide(&mut self, i: usize) -> Option<Verdict> {
        let actor = &self.actors[i];
        let below = actor.below.as_ref()?;
        let above = actor.above.as_ref().map(|s| s.payload.view());
        let eval = self.layers[i].evaluate(below.payload.view(), above);
        if self.progress.diverged(&eval) {
            return Some(Verdict::Diverged);
        }
        let residual = eval.max_residual();
        self.actors[i].residual = residual;
        if residual < self.context.relax.tolerance {
            self.actors[i].settled = true;
            return None;
        }
        if self.progress.at_cap(i) {
            return Some(self.progress.cap_verdict());
        }
        let tolerance = self.context.relax.tolerance;
        if guarded_step(&mut self.layers[i], &eval, tolerance).is_none() {
            return Some(Verdict::Diverged);
        }
        self.progress.count_update(i);

        // The history takes the max of every actor's newest residual, because
        // the global residual would cost an evaluation of every layer per
        // update.
        let newest = self.actors.iter().fold(0.0, |m: f64, a| m.max(a.residual));
        self.progress.note_residual(newest);
        if self.progress.point_due() {
            self.progress.measure(&self.layers, self.now);
        }
        let duration = self.context.seeded.speeds.get(i).copied().unwrap_or(1.0);
        if let Some(trace) = self.context.trace {
            let start = self.now * TRACE_MICROS;
            trace.update_at(i + 1, start, start + duration * TRACE_MICROS);
        }
        self.actors[i].scheduled = true;
        self.schedule(self.now + duration, Action::StepDone { layer: i });
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ndarray::Array2;

    use super::*;
    use crate::model::{WeightInit, random_network};
    use crate::relaxation::RelaxConfig;
    use crate::schedule::{SeededConfig, evaluate_all};

    fn inputs() -> Array2<f64> {
        let mut x = Array2::from_shape_fn((3, 16), |(b, k)| ((b * 7 + k * 3) % 11) as f64 + 1.0);
        for mut row in x.rows_mut() {
            let norm = row.dot(&row).sqrt();
            row.mapv_inplace(|v| v / norm);
        }
        x
    }

    /// Latencies on [0.5, 9.5] against steps of one time unit, so that
    /// consecutive messages on an edge often arrive out of order.
    fn overtaking() -> SeededConfig {
        SeededConfig {
            seed: 3,
            latency_mean: 5.0,
            latency_spread: 0.9,
            ..SeededConfig::default()
        }
    }

    const RELAX: RelaxConfig = RelaxConfig {
        tolerance: 1e-9,
        max_steps: 100_000,
        step_scale: 0.9,
        divergence_factor: 1e4,
    };

    #[test]
    fn older_message_keeps_newer_copy() {
        let network = random_network(&[16, 10, 6], &[0.02, 0.02], WeightInit::Uniform, 7);
        let x0 = inputs();
        let seeded = overtaking();
        let context = Context {
            network: &network,
            x0: x0.view(),
            relax: &RELAX,
            seeded: &seeded,
            curve_every: 0,
            began: Instant::now(),
            trace: None,
        };
        let layers = start_layers(&context);
        let (progress, evals) = Progress::new(&context, ScheduleKind::Seeded, &layers);
        let mut simulator = Simulator::new(&context, layers, &evals, progress);
        let newer = Arc::new(Array2::from_elem((3, 16), 2.0));
        let older = Arc::new(Array2::from_elem((3, 16), 1.0));
        simulator.deliver(0, Edge::PredictionDown, 2, Arc::clone(&newer));
        simulator.deliver(0, Edge::PredictionDown, 1, older);
        let slot = simulator.actors[0].above.as_ref().unwrap();
        assert_eq!(slot.sequence, 2);
        assert_eq!(*slot.payload, *newer);
        assert_eq!(simulator.stale, 1);
    }

    #[test]
    fn overtaken_messages_still_converge() {
        let network = random_network(&[16, 10, 6], &[0.02, 0.02], WeightInit::Uniform, 7);
        let x0 = inputs();
        let seeded = overtaking();
        let context = Context {
            network: &network,
            x0: x0.view(),
            relax: &RELAX,
            seeded: &seeded,
            curve_every: 0,
            began: Instant::now(),
            trace: None,
        };
        let layers = start_layers(&context);
        let (progress, evals) = Progress::new(&context, ScheduleKind::Seeded, &layers);
        let mut simulator = Simulator::new(&context, layers, &evals, progress);
        simulator.send(0, Edge::StateUp, 1, Arc::new(x0.clone()));
        assert_eq!(simulator.simulate(), Verdict::Converged);
        assert!(simulator.stale > 100, "{} stale messages", simulator.stale);
        let end = evaluate_all(&simulator.layers, x0.view());
        assert!(end.iter().all(|e| e.max_residual() < RELAX.tolerance));
    }
}
