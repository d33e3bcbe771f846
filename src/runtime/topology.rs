//! The actor graph as data: which actors exist and which directed edges carry
//! which kind of message. The runtime wires mailboxes from this description
//! alone, so another granularity or connectivity is a different `Topology`,
//! not a different runtime.

use std::fmt;

/// Index of an actor in [`Topology::roles`].
pub type ActorId = usize;

/// The part of the network an actor simulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The clamped input `x_0`: sends it once per batch, receives nothing.
    Input,
    /// Hidden layer `i` (1-based), owning `x_i`, `W_i` and, for layer 1, lambda.
    Layer(usize),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Input => write!(f, "input"),
            Role::Layer(i) => write!(f, "layer{i}"),
        }
    }
}

/// The kinds of data message of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// `x_i`, sent from layer i (or the input) to layer i+1.
    StateUp,
    /// `p_i = W_i x_i`, sent from layer i to layer i−1.
    PredictionDown,
}

impl MessageKind {
    /// Returns the name used in logs and traffic files.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::StateUp => "state_up",
            MessageKind::PredictionDown => "prediction_down",
        }
    }
}

/// A directed edge of the actor graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from: ActorId,
    pub to: ActorId,
    pub kind: MessageKind,
}

/// Actors and the edges between them.
#[derive(Clone, Debug)]
pub struct Topology {
    pub roles: Vec<Role>,
    pub edges: Vec<Edge>,
}

impl Topology {
    /// Builds the layer-granularity graph of a network with `layers` hidden
    /// layers: actor 0 is the input and actor i is layer i. Each layer sends
    /// its state up and its prediction down. The input only sends: it is
    /// clamped and layer 1 owns lambda, so no prediction goes down to it.
    pub fn layered(layers: usize) -> Self {
        let mut roles = vec![Role::Input];
        roles.extend((1..=layers).map(Role::Layer));
        let mut edges = Vec::new();
        for i in 0..layers {
            edges.push(Edge {
                from: i,
                to: i + 1,
                kind: MessageKind::StateUp,
            });
            if i > 0 {
                edges.push(Edge {
                    from: i + 1,
                    to: i,
                    kind: MessageKind::PredictionDown,
                });
            }
        }
        Topology { roles, edges }
    }

    /// Returns the edges leaving `actor`.
    pub fn outgoing(&self, actor: ActorId) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.from == actor)
    }

    /// Returns the edges arriving at `actor`.
    pub fn incoming(&self, actor: ActorId) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.to == actor)
    }

    /// Returns whether `from` may send a message of `kind` to `to`.
    pub fn connects(&self, from: ActorId, to: ActorId, kind: MessageKind) -> bool {
        self.edges
            .iter()
            .any(|e| e.from == from && e.to == to && e.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layered_graph_of_two_layers() {
        let t = Topology::layered(2);
        assert_eq!(t.roles, vec![Role::Input, Role::Layer(1), Role::Layer(2)]);
        assert_eq!(t.edges.len(), 3);
        assert!(t.connects(0, 1, MessageKind::StateUp));
        assert!(t.connects(1, 2, MessageKind::StateUp));
        assert!(t.connects(2, 1, MessageKind::PredictionDown));
        assert!(!t.connects(1, 0, MessageKind::PredictionDown));
        assert_eq!(t.incoming(0).count(), 0);
    }
}
