//! The actor graph as data: which actors exist, which units each owns, and
//! which directed edges carry which kind of message. The runtime wires
//! mailboxes from this description alone, so another granularity or
//! connectivity is a different `Topology`, not a different runtime.
//!
//! Two protocols share this description. At layer granularity each layer
//! sends its state up and its prediction down ([`Topology::layered`]). At
//! block and unit granularity ([`Topology::new`]) a unit cannot form the
//! residual of the layer below, because that needs every unit of its own
//! layer. So the units below form it and send it up. Blocks send partial
//! predictions down and receive residuals, and a lambda actor beside the
//! input collects `‖p_1‖²` from the input blocks.
//!
//! Invariant: two actors are neighbours exactly when some synapse (a
//! non-zero entry allowed by [`Connectivity`]) joins their units, or when one
//! of them is the lambda actor and the other an input or layer-1 block.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;

use ndarray::Array2;

/// Index of an actor in [`Topology::roles`].
pub type ActorId = usize;

/// How many units each actor owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One actor per layer and one for the input.
    Layer,
    /// One actor per block of this many consecutive units of a layer.
    Block(usize),
    /// One actor per unit.
    Unit,
}

impl Granularity {
    /// Returns the units per block, or `None` at layer granularity.
    pub fn block_size(self) -> Option<usize> {
        match self {
            Granularity::Layer => None,
            Granularity::Block(k) => Some(k.max(1)),
            Granularity::Unit => Some(1),
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Granularity::Layer => write!(f, "layer"),
            Granularity::Block(k) => write!(f, "block of {k}"),
            Granularity::Unit => write!(f, "unit"),
        }
    }
}

/// The rule for which units of layer i−1 a unit of layer i has synapses with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connectivity {
    /// Every unit below.
    Dense,
    /// A window of this many consecutive units below, centred under the
    /// unit's relative position in its layer.
    Window(usize),
}

impl Connectivity {
    /// Returns the units below that unit `k` of a layer of `units` units
    /// connects to, when the layer below has `below` units.
    pub fn window(self, k: usize, units: usize, below: usize) -> Range<usize> {
        match self {
            Connectivity::Dense => 0..below,
            Connectivity::Window(width) => {
                let width = width.clamp(1, below.max(1));
                let centre = (k as f64 + 0.5) * below as f64 / units.max(1) as f64;
                let start = (centre - width as f64 / 2.0).round().max(0.0) as usize;
                let start = start.min(below - width);
                start..start + width
            }
        }
    }

    /// Returns the mask of allowed synapses, `below x units`.
    pub fn mask(self, below: usize, units: usize) -> Array2<bool> {
        let mut mask = Array2::from_elem((below, units), false);
        for k in 0..units {
            for j in self.window(k, units, below) {
                mask[[j, k]] = true;
            }
        }
        mask
    }
}

/// The part of the network an actor simulates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The clamped input `x_0`: sends it once per batch, receives nothing.
    Input,
    /// Hidden layer `i` (1-based), owning `x_i`, `W_i` and, for layer 1, lambda.
    Layer(usize),
    /// Input units `units` of `x_0`: clamped, they form the first residual
    /// from the partial predictions they receive and lambda's scale.
    InputBlock { units: Range<usize> },
    /// The per-image multipliers lambda, beside the input.
    Lambda,
    /// Units `units` of layer `layer`, owning their states and their columns
    /// of `W_layer`.
    Block { layer: usize, units: Range<usize> },
}

impl Role {
    /// Returns the layer the actor's units belong to: 0 for the input side
    /// (input, input blocks and lambda).
    pub fn layer(&self) -> usize {
        match self {
            Role::Input | Role::InputBlock { .. } | Role::Lambda => 0,
            Role::Layer(i) | Role::Block { layer: i, .. } => *i,
        }
    }

    /// Returns whether the actor takes relaxation steps (and so has updates).
    pub fn steps(&self) -> bool {
        matches!(self, Role::Layer(_) | Role::Block { .. } | Role::Lambda)
    }
}

fn write_units(f: &mut fmt::Formatter<'_>, units: &Range<usize>) -> fmt::Result {
    if units.len() == 1 {
        write!(f, "[{}]", units.start)
    } else {
        write!(f, "[{}..{}]", units.start, units.end)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Input => write!(f, "input"),
            Role::Layer(i) => write!(f, "layer{i}"),
            Role::InputBlock { units } => {
                write!(f, "input")?;
                write_units(f, units)
            }
            Role::Lambda => write!(f, "lambda"),
            Role::Block { layer, units } => {
                write!(f, "layer{layer}")?;
                write_units(f, units)
            }
        }
    }
}

/// The kinds of data message of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// `x_i`, sent from layer i (or the input) to layer i+1.
    StateUp,
    /// `p_i = W_i x_i`, sent from layer i to layer i−1; at block granularity
    /// the part of it that the sending block's units contribute to the
    /// receiving block's units.
    PredictionDown,
    /// The residual `r̃_i` of the receiving block's layer, for the sending
    /// block's units (block granularity).
    ResidualUp,
    /// An input block's share of `‖p_1‖²`, to the lambda actor.
    Norm,
    /// `1 + lambda/‖p_1‖` per image, from the lambda actor to the input and
    /// layer-1 blocks.
    Scale,
}

impl MessageKind {
    /// Every kind, in the order traffic files list them.
    pub const ALL: [MessageKind; 5] = [
        MessageKind::StateUp,
        MessageKind::PredictionDown,
        MessageKind::ResidualUp,
        MessageKind::Norm,
        MessageKind::Scale,
    ];

    /// Returns the name used in logs and traffic files.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::StateUp => "state_up",
            MessageKind::PredictionDown => "prediction_down",
            MessageKind::ResidualUp => "residual_up",
            MessageKind::Norm => "norm",
            MessageKind::Scale => "scale",
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
    pub granularity: Granularity,
    /// Per layer (`connectivity[i]` for `W_{i+1}`), which synapses exist.
    pub connectivity: Vec<Connectivity>,
    /// Layer sizes, input first.
    pub sizes: Vec<usize>,
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
        Topology {
            roles,
            edges,
            granularity: Granularity::Layer,
            connectivity: vec![Connectivity::Dense; layers],
            sizes: Vec::new(),
        }
    }

    /// Builds the graph for `sizes` (input first) at `granularity`, with
    /// `connectivity[i]` the synapses of `W_{i+1}`. At layer granularity this
    /// is [`Topology::layered`]; otherwise the actors are the input blocks,
    /// the lambda actor, then the blocks of each layer in order.
    pub fn new(sizes: &[usize], granularity: Granularity, connectivity: &[Connectivity]) -> Self {
        let layers = sizes.len().saturating_sub(1);
        let connectivity: Vec<Connectivity> = (0..layers)
            .map(|i| connectivity.get(i).copied().unwrap_or(Connectivity::Dense))
            .collect();
        let Some(size) = granularity.block_size() else {
            let mut topology = Topology::layered(layers);
            topology.connectivity = connectivity;
            topology.sizes = sizes.to_vec();
            return topology;
        };
        let chunks = |n: usize| -> Vec<Range<usize>> {
            (0..n.div_ceil(size))
                .map(|b| b * size..((b + 1) * size).min(n))
                .collect()
        };
        let mut roles: Vec<Role> = chunks(sizes[0])
            .into_iter()
            .map(|units| Role::InputBlock { units })
            .collect();
        let lambda = roles.len();
        roles.push(Role::Lambda);
        // first[i] is the id of the first actor of layer i.
        let mut first = vec![0];
        for (i, &n) in sizes.iter().enumerate().skip(1) {
            first.push(roles.len());
            roles.extend(
                chunks(n)
                    .into_iter()
                    .map(|units| Role::Block { layer: i, units }),
            );
        }
        let mut edges = Vec::new();
        for id in 0..lambda {
            edges.push(Edge {
                from: id,
                to: lambda,
                kind: MessageKind::Norm,
            });
            edges.push(Edge {
                from: lambda,
                to: id,
                kind: MessageKind::Scale,
            });
        }
        for i in 1..=layers {
            let mask = connectivity[i - 1].mask(sizes[i - 1], sizes[i]);
            let below: Vec<ActorId> = if i == 1 {
                (0..lambda).collect()
            } else {
                (first[i - 1]..first[i]).collect()
            };
            let end = first.get(i + 1).copied().unwrap_or(roles.len());
            for upper in first[i]..end {
                let upper_units = units_of(&roles[upper]);
                if i == 1 {
                    edges.push(Edge {
                        from: lambda,
                        to: upper,
                        kind: MessageKind::Scale,
                    });
                }
                for &lower in &below {
                    let lower_units = units_of(&roles[lower]);
                    let joined = lower_units
                        .clone()
                        .any(|j| upper_units.clone().any(|k| mask[[j, k]]));
                    if joined {
                        edges.push(Edge {
                            from: upper,
                            to: lower,
                            kind: MessageKind::PredictionDown,
                        });
                        edges.push(Edge {
                            from: lower,
                            to: upper,
                            kind: MessageKind::ResidualUp,
                        });
                    }
                }
            }
        }
        Topology {
            roles,
            edges,
            granularity,
            connectivity,
            sizes: sizes.to_vec(),
        }
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

    /// Returns the actors' display names, indexed by id.
    pub fn names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.to_string()).collect()
    }

    /// Returns the actor that owns input unit `unit`, if any.
    pub fn input_owner(&self, unit: usize) -> Option<ActorId> {
        self.roles.iter().position(|role| match role {
            Role::Input => unit < self.sizes.first().copied().unwrap_or(usize::MAX),
            Role::InputBlock { units } => units.contains(&unit),
            _ => false,
        })
    }

    /// Returns, per actor, the fewest edges a message needs to reach it from
    /// `source`, or `None` when no directed path exists.
    pub fn distances_from(&self, source: ActorId) -> Vec<Option<usize>> {
        let mut distance = vec![None; self.roles.len()];
        let mut adjacency = vec![Vec::new(); self.roles.len()];
        for edge in &self.edges {
            adjacency[edge.from].push(edge.to);
        }
        let mut queue = VecDeque::from([source]);
        distance[source] = Some(0);
        while let Some(actor) = queue.pop_front() {
            let next = distance[actor].map_or(0, |d| d + 1);
            for &to in &adjacency[actor] {
                if distance[to].is_none() {
                    distance[to] = Some(next);
                    queue.push_back(to);
                }
            }
        }
        distance
    }
}

/// Returns the units an actor owns (the whole layer for layer roles is not
/// known here, so those give an empty range).
pub fn units_of(role: &Role) -> Range<usize> {
    match role {
        Role::InputBlock { units } | Role::Block { units, .. } => units.clone(),
        Role::Input | Role::Layer(_) | Role::Lambda => 0..0,
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

    #[test]
    fn windows_stay_inside_the_layer_below() {
        let c = Connectivity::Window(3);
        assert_eq!(c.window(0, 4, 8), 0..3);
        assert_eq!(c.window(1, 4, 8), 2..5);
        assert_eq!(c.window(3, 4, 8), 5..8);
        assert_eq!(Connectivity::Window(20).window(2, 4, 8), 0..8);
        let mask = c.mask(8, 4);
        assert_eq!(mask.iter().filter(|&&m| m).count(), 12);
    }

    #[test]
    fn unit_graph_of_a_windowed_network() {
        // 4 inputs, 2 units in layer 1 (windows 0..2 and 2..4), 1 unit above.
        let t = Topology::new(
            &[4, 2, 1],
            Granularity::Unit,
            &[Connectivity::Window(2), Connectivity::Dense],
        );
        let names = t.names();
        assert_eq!(
            names,
            vec![
                "input[0]",
                "input[1]",
                "input[2]",
                "input[3]",
                "lambda",
                "layer1[0]",
                "layer1[1]",
                "layer2[0]"
            ]
        );
        // 4 norm + 4 scale to inputs + 2 scale to layer 1 + 2x4 layer-1
        // synapse pairs + 2x2 layer-2 pairs.
        assert_eq!(t.edges.len(), 4 + 4 + 2 + 8 + 4);
        assert!(t.connects(5, 1, MessageKind::PredictionDown));
        assert!(!t.connects(5, 2, MessageKind::PredictionDown));
        assert!(t.connects(2, 6, MessageKind::ResidualUp));
        let d = t.distances_from(0);
        // One hop to lambda and layer1[0]; two to everything else, through
        // lambda's scale or layer1[0]'s predictions and residual.
        assert_eq!(
            d,
            vec![
                Some(0),
                Some(2),
                Some(2),
                Some(2),
                Some(1),
                Some(1),
                Some(2),
                Some(2)
            ]
        );
        assert_eq!(t.input_owner(3), Some(3));
    }

    #[test]
    fn blocks_join_when_any_synapse_joins_them() {
        let t = Topology::new(&[6, 4], Granularity::Block(2), &[Connectivity::Window(2)]);
        // Input blocks 0..2, 2..4, 4..6; lambda is 3; layer-1 blocks 4 and 5.
        assert_eq!(t.roles.len(), 6);
        assert_eq!(t.roles[4].to_string(), "layer1[0..2]");
        // Units 0 and 1 of layer 1 use inputs 0..2 and 1..3.
        assert!(t.connects(4, 0, MessageKind::PredictionDown));
        assert!(t.connects(4, 1, MessageKind::PredictionDown));
        assert!(!t.connects(4, 2, MessageKind::PredictionDown));
    }
}
