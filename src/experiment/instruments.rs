//! The locality instruments of a run, applied to the training actors before
//! they stop: the perturbation experiment, the traffic files, the trace file
//! and the audit totals that `summary.json` reports.
//!
//! Invariant: every file here is written whole or not at all (through a
//! temporary file and a rename), and a failure to write one is a reported
//! error, never a silent gap.

use std::fmt::Write as _;
use std::path::Path;

use ndarray::s;
use serde::Serialize;
use tracing::{info, warn};

use super::{Summary, unit_rows, write_atomic};
use crate::data::Dataset;
use crate::error::Error;
use crate::runtime::{ActorNetwork, BatchOptions, Perturbation};
use crate::scenario::PerturbationSection;
use crate::trace::{EdgeTraffic, TraceRecorder, write_traffic_csv, write_traffic_png};

/// The perturbation experiment's entry in `summary.json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerturbationSummary {
    pub unit: usize,
    pub delta: f64,
    pub images: usize,
    /// Actors whose state changed after the perturbation, of all actors.
    pub actors_changed: usize,
    pub actors: usize,
    pub max_hops: Option<u32>,
    /// Actors whose hop count is below their graph distance; a correct
    /// wiring gives 0.
    pub hops_below_distance: usize,
    /// Microseconds until the last actor to change did.
    pub last_change_us: Option<f64>,
    /// Layer updates of the relaxation to the new output state.
    pub updates: usize,
}

/// Relaxes the first training images, changes one input unit, writes
/// `perturbation.csv` and returns the summary of the experiment.
pub(super) fn perturbation(
    actors: &mut ActorNetwork<f32>,
    settings: &PerturbationSection,
    train_set: &Dataset,
    out: &Path,
) -> Result<PerturbationSummary, String> {
    let images = settings.images.min(train_set.len());
    let x0 = unit_rows(&train_set.images.slice(s![..images, ..]).to_owned());
    let options = BatchOptions::default();
    actors
        .run_batch(x0, options)
        .map_err(|e| format!("perturbation: the first relaxation failed: {e}"))?;
    let result = actors
        .perturb(settings.unit, settings.delta)
        .map_err(|e| format!("perturbation failed: {e}"))?;
    write_perturbation_csv(&out.join("perturbation.csv"), &result).map_err(|e| e.to_string())?;
    let changed: Vec<_> = result.rows.iter().filter(|r| r.hops.is_some()).collect();
    let below = result
        .rows
        .iter()
        .filter(|r| match (r.hops, r.graph_distance) {
            (Some(h), Some(d)) => (h as usize) < d,
            // A change where no path leads is worse than a short path.
            (Some(_), None) => true,
            (None, _) => false,
        })
        .count();
    let summary = PerturbationSummary {
        unit: settings.unit,
        delta: settings.delta,
        images,
        actors_changed: changed.len(),
        actors: result.rows.len(),
        max_hops: changed.iter().filter_map(|r| r.hops).max(),
        hops_below_distance: below,
        last_change_us: changed
            .iter()
            .filter_map(|r| r.first_change_us)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t)))),
        updates: result.report.updates(),
    };
    info!(
        changed = summary.actors_changed,
        actors = summary.actors,
        max_hops = summary.max_hops,
        hops_below_distance = below,
        "perturbation done"
    );
    Ok(summary)
}

/// Writes `actor,hops,graph_distance,first_change_us` (plus the actor's id),
/// one row per actor; an actor the change never reached has empty hops and
/// time.
fn write_perturbation_csv(path: &Path, result: &Perturbation) -> Result<(), Error> {
    let mut csv = String::from("actor,id,hops,graph_distance,first_change_us\n");
    let blank = |v: Option<String>| v.unwrap_or_default();
    for row in &result.rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{}",
            row.name,
            row.actor,
            blank(row.hops.map(|h| h.to_string())),
            blank(row.graph_distance.map(|d| d.to_string())),
            blank(row.first_change_us.map(|t| format!("{t:.1}"))),
        );
    }
    write_atomic(path, csv.as_bytes())
}

/// Returns the traffic of every wire that carried a message.
pub(super) fn edge_traffic(actors: &ActorNetwork<f32>) -> Vec<EdgeTraffic> {
    actors
        .traffic_snapshot()
        .into_iter()
        .filter(|(_, count)| count.messages > 0)
        .map(|(edge, count)| EdgeTraffic {
            from: edge.from,
            to: edge.to,
            kind: edge.kind.name(),
            messages: count.messages,
            bytes: count.bytes,
        })
        .collect()
}

/// Writes `traffic.csv` and `traffic.png` and fills the summary's totals.
pub(super) fn write_traffic(
    actors: &ActorNetwork<f32>,
    out: &Path,
    summary: &mut Summary,
) -> Result<(), Error> {
    let edges = edge_traffic(actors);
    let names = actors.topology.names();
    let failed = |e: crate::trace::TrafficError| Error::Mismatch(format!("traffic files: {e}"));
    write_traffic_csv(&out.join("traffic.csv"), &edges, &names).map_err(failed)?;
    write_traffic_png(&out.join("traffic.png"), names.len(), &edges).map_err(failed)?;
    summary.traffic_messages = edges.iter().map(|e| e.messages).sum();
    summary.busiest_edge = busiest(&edges, &names);
    Ok(())
}

/// Describes the wire that carried the most messages.
pub(super) fn busiest(edges: &[EdgeTraffic], names: &[String]) -> Option<String> {
    let edge = edges.iter().max_by_key(|e| e.messages)?;
    let name = |id: usize| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    Some(format!(
        "{} -> {} {} ({} messages)",
        name(edge.from),
        name(edge.to),
        edge.kind,
        edge.messages
    ))
}

/// Writes the trace file and notes its size and any truncation.
pub(super) fn write_trace(
    recorder: &TraceRecorder,
    path: &Path,
    names: &[String],
    summary: &mut Summary,
) -> Result<(), Error> {
    recorder
        .write(path, names)
        .map_err(|e| Error::Mismatch(format!("trace file: {e}")))?;
    summary.trace_events = Some(recorder.recorded());
    summary.trace_dropped = Some(recorder.dropped());
    if recorder.truncated() {
        warn!(
            kept = recorder.recorded(),
            dropped = recorder.dropped(),
            "trace reached runtime.trace_limit; later events were dropped"
        );
    }
    Ok(())
}
