//! Quiescence detection by Mattern's counting method with two consecutive
//! waves (F. Mattern, "Algorithms for distributed termination detection",
//! Distributed Computing 2, 1987).
//!
//! The detector reads only counts and flags: each actor keeps the number of
//! data messages it has sent and the number it has taken out of its mailbox,
//! and replies to a probe with both and its settled flag. A wave probes every
//! actor and waits for all replies. Quiescence is declared after two
//! consecutive waves in which every actor replied settled with the same two
//! counts both times, and the sum of sent equals the sum of received.
//!
//! Why that is safe: the second wave's probes go out only after every reply
//! to the first has arrived, so some instant `T` lies between each actor's
//! two replies. An actor whose received count did not change over that
//! interval took no message in it, and a settled actor becomes unsettled only
//! by taking a message, so at `T` every actor was settled with exactly the
//! reported counts. Equal sums at `T` mean no message was in flight then.
//! Settled actors with empty channels never send again, so the state at `T`
//! is the state at detection: every actor settled and no message in flight.
//!
//! Waves are started by hints that actors send when they settle. Hints only
//! trigger waves and are never trusted, so a stale hint costs at most an
//! extra wave.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use thiserror::Error;
use tracing::{debug, trace};

use crate::runtime::message::{DetectorEvent, ProbeReply};
use crate::runtime::topology::ActorId;

/// Reasons no quiescence was detected.
#[derive(Debug, Error, PartialEq)]
pub enum DetectorError {
    #[error("relaxation did not become quiescent within {seconds:.1} s")]
    TimedOut { seconds: f64 },
    #[error("actor {actor} is not responding (its task ended or panicked)")]
    ActorLost { actor: ActorId },
    #[error("the detector's event channel closed")]
    Disconnected,
}

/// The verdict of a detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    /// Waves run for this relaxation.
    pub waves: u64,
    /// Sum of sent (and of received) data messages at the quiescent instant,
    /// counted since the actors started.
    pub messages: u64,
}

/// The termination detector. It owns the receiving end of the event channel
/// that every actor's hints and probe replies go to, and a function that
/// delivers a probe to an actor (returning false when that actor is gone).
pub struct Detector {
    actors: usize,
    events_rx: Receiver<DetectorEvent>,
    probe: Box<dyn Fn(ActorId, u64) -> bool + Send>,
    /// Wave numbers increase across relaxations, so late replies to an old
    /// wave are recognised and dropped.
    next_wave: u64,
    /// The limit of the current `wait`, for its error message.
    timeout: Duration,
    /// A hint arrived while the last wave was collecting replies.
    hint_during_wave: bool,
}

impl Detector {
    pub fn new(
        actors: usize,
        events_rx: Receiver<DetectorEvent>,
        probe: Box<dyn Fn(ActorId, u64) -> bool + Send>,
    ) -> Self {
        Detector {
            actors,
            events_rx,
            probe,
            next_wave: 0,
            timeout: Duration::ZERO,
            hint_during_wave: false,
        }
    }

    /// Blocks until the actors are quiescent or `timeout` has passed. One
    /// wave starts right away, since the relaxation may already be over.
    ///
    /// Progress: an actor unsettled at its reply sends a hint when it
    /// settles, after that reply, so a wait for a hint after such a wave ends
    /// in another wave (and `timeout` bounds every wait regardless). Any other wave that is not a detection is followed
    /// by another at once: either the counts changed (the actors involved
    /// have settled again by their replies) or a message is still in flight,
    /// whose receiver replies with new counts once it takes it.
    pub fn wait(&mut self, timeout: Duration) -> Result<Detection, DetectorError> {
        let deadline = Instant::now() + timeout;
        self.timeout = timeout;
        let mut waves = 0;
        let mut previous: Option<Vec<ProbeReply>> = None;
        let mut wave_now = true;
        loop {
            if Instant::now() >= deadline {
                return Err(DetectorError::TimedOut {
                    seconds: timeout.as_secs_f64(),
                });
            }
            if !wave_now {
                self.wait_for_hint(deadline)?;
            }
            let replies = self.wave(deadline)?;
            waves += 1;
            if replies.iter().all(|r| r.settled) {
                let confirmed = previous
                    .as_ref()
                    .is_some_and(|before| same_counts(before, &replies) && balanced(&replies));
                if confirmed {
                    let messages = replies.iter().map(|r| r.sent).sum();
                    debug!(waves, messages, "quiescence detected");
                    return Ok(Detection { waves, messages });
                }
                previous = Some(replies);
                wave_now = true;
            } else {
                previous = None;
                wave_now = self.hint_during_wave;
            }
        }
    }

    /// Probes every actor and collects one reply from each. Events queued
    /// before the probes go out are dropped first: what they announce is
    /// already reflected in the replies.
    fn wave(&mut self, deadline: Instant) -> Result<Vec<ProbeReply>, DetectorError> {
        while self.events_rx.try_recv().is_ok() {}
        self.hint_during_wave = false;
        let wave = self.next_wave;
        self.next_wave += 1;
        for actor in 0..self.actors {
            if !(self.probe)(actor, wave) {
                return Err(DetectorError::ActorLost { actor });
            }
        }
        let mut replies: Vec<Option<ProbeReply>> = vec![None; self.actors];
        let mut missing = self.actors;
        while missing > 0 {
            match self.next_event(deadline)? {
                DetectorEvent::Reply(reply) if reply.wave == wave => {
                    if replies[reply.actor].replace(reply).is_none() {
                        missing -= 1;
                    }
                }
                DetectorEvent::Hint(_) => self.hint_during_wave = true,
                DetectorEvent::Reply(_) => {}
            }
        }
        trace!(wave, "wave complete");
        Ok(replies.into_iter().flatten().collect())
    }

    /// Waits for the next hint, dropping replies to finished waves.
    fn wait_for_hint(&mut self, deadline: Instant) -> Result<(), DetectorError> {
        loop {
            if let DetectorEvent::Hint(_) = self.next_event(deadline)? {
                return Ok(());
            }
        }
    }

    fn next_event(&self, deadline: Instant) -> Result<DetectorEvent, DetectorError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.events_rx.recv_timeout(left) {
            Ok(event) => Ok(event),
            Err(RecvTimeoutError::Timeout) => Err(DetectorError::TimedOut {
                seconds: self.timeout.as_secs_f64(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(DetectorError::Disconnected),
        }
    }
}

fn same_counts(before: &[ProbeReply], after: &[ProbeReply]) -> bool {
    before
        .iter()
        .zip(after)
        .all(|(a, b)| a.sent == b.sent && a.received == b.received)
}

fn balanced(replies: &[ProbeReply]) -> bool {
    let sent: u64 = replies.iter().map(|r| r.sent).sum();
    let received: u64 = replies.iter().map(|r| r.received).sum();
    sent == received
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;
    use std::sync::{Arc, Mutex};

    /// Scripted actors: each probe is replied from a table of (sent,
    /// received, settled) per wave.
    fn scripted(script: Vec<Vec<(u64, u64, bool)>>) -> Result<Detection, DetectorError> {
        let (tx, rx) = unbounded();
        let actors = script[0].len();
        let script = Arc::new(Mutex::new(script));
        let probe = Box::new(move |actor: ActorId, wave: u64| {
            let table = script.lock().unwrap();
            let row = &table[(wave as usize).min(table.len() - 1)];
            let (sent, received, settled) = row[actor];
            tx.send(DetectorEvent::Reply(ProbeReply {
                actor,
                wave,
                sent,
                received,
                settled,
            }))
            .unwrap();
            if actor == 0 {
                tx.send(DetectorEvent::Hint(0)).unwrap();
            }
            true
        });
        Detector::new(actors, rx, probe).wait(Duration::from_millis(200))
    }

    #[test]
    fn two_equal_balanced_waves_detect() {
        let d = scripted(vec![vec![(1, 0, true), (2, 3, true)]]).unwrap();
        assert_eq!(
            d,
            Detection {
                waves: 2,
                messages: 3
            }
        );
    }

    #[test]
    fn counts_changing_between_waves_delay_detection() {
        let d = scripted(vec![
            vec![(1, 0, true), (2, 3, true)],
            vec![(1, 1, true), (3, 3, true)],
            vec![(1, 1, true), (3, 3, true)],
        ])
        .unwrap();
        assert_eq!(d.waves, 3);
        assert_eq!(d.messages, 4);
    }

    #[test]
    fn message_in_flight_is_never_quiescent() {
        // Every actor settled with stable counts, but one message sent and
        // not yet received: the detector must keep waiting.
        let err = scripted(vec![vec![(2, 0, true), (0, 1, true)]]).unwrap_err();
        assert!(matches!(err, DetectorError::TimedOut { .. }), "{err:?}");
    }

    #[test]
    fn unsettled_actor_is_never_quiescent() {
        let err = scripted(vec![vec![(1, 0, true), (0, 1, false)]]).unwrap_err();
        assert!(matches!(err, DetectorError::TimedOut { .. }), "{err:?}");
    }
}
