//! Instruments of a run: the locality audit, per-edge message traffic, the
//! perturbation table and the Chrome trace file.
//!
//! Invariant: every instrument observes the actors (counters, provenance of
//! the values they used, timestamps) and none of them feeds anything back
//! into the relaxation.

pub mod chrome;
pub mod traffic;

use std::collections::BTreeMap;

pub use chrome::{ChromeError, Clock, TraceRecorder};
pub use traffic::{EdgeTraffic, TrafficError, write_traffic_csv, write_traffic_png};

use crate::runtime::{ActorReport, Topology};

/// The verdict of the locality audit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditResult {
    /// Message values used by some actor whose sender is not its neighbour
    /// on an edge of that message's kind.
    pub non_local_reads: u64,
    /// Message values checked in all.
    pub reads: u64,
    /// Up to five offending `(sender, receiver, kind)` descriptions.
    pub examples: Vec<String>,
}

/// Checks every recorded read against the topology: a read is local when the
/// topology has an edge of its kind from its sender to the reader.
pub fn audit(topology: &Topology, reports: &[ActorReport]) -> AuditResult {
    let names = topology.names();
    let name = |id: usize| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    let mut result = AuditResult::default();
    let mut offending: BTreeMap<(usize, usize, &'static str), u64> = BTreeMap::new();
    for report in reports {
        for &(from, kind, count) in &report.reads {
            result.reads += count;
            if !topology.connects(from, report.actor, kind) {
                result.non_local_reads += count;
                *offending
                    .entry((from, report.actor, kind.name()))
                    .or_insert(0) += count;
            }
        }
    }
    result.examples = offending
        .iter()
        .take(5)
        .map(|(&(from, to, kind), count)| {
            format!("{} -> {} ({kind}): {count}", name(from), name(to))
        })
        .collect();
    result
}

/// Adds one batch's audit to a running total.
pub fn merge(total: &mut AuditResult, batch: AuditResult) {
    total.non_local_reads += batch.non_local_reads;
    total.reads += batch.reads;
    for example in batch.examples {
        if total.examples.len() < 5 && !total.examples.contains(&example) {
            total.examples.push(example);
        }
    }
}
