//! Claims about locality and traffic. The audit finds no read from a
//! non-neighbour on correct wiring and finds the planted one. A perturbation
//! never travels fewer hops than the graph distance. The traffic counters
//! add up to the messages the receivers counted, and the trace file is
//! trace-event JSON with one track per actor.

use std::sync::Arc;
use std::time::Duration;

use ign::model::{Network, WeightInit, random_network, restrict};
use ign::relaxation::{Outcome, RelaxConfig};
use ign::runtime::{
    ActorNetwork, BatchOptions, Connectivity, Edge, Granularity, MessageKind, RuntimeConfig,
};
use ign::trace::{TraceRecorder, audit};
use ndarray::Array2;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

const SIZES: [usize; 3] = [16, 10, 6];
const WINDOWED: [Connectivity; 2] = [Connectivity::Window(6), Connectivity::Dense];

fn inputs(rows: usize, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Array2::from_shape_simple_fn((rows, SIZES[0]), || rng.random::<f64>());
    for mut row in x.rows_mut() {
        let norm = row.dot(&row).sqrt();
        row.mapv_inplace(|v| v / norm);
    }
    x
}

fn network() -> Network<f64> {
    let mut network = random_network(&SIZES, &[0.02, 0.02], WeightInit::Uniform, 7);
    let masks: Vec<_> = WINDOWED
        .iter()
        .enumerate()
        .map(|(i, c)| c.mask(SIZES[i], SIZES[i + 1]))
        .collect();
    restrict(&mut network, &masks);
    network
}

fn config(granularity: Granularity) -> RuntimeConfig {
    RuntimeConfig {
        relax: RelaxConfig {
            tolerance: 1e-6,
            max_steps: 100_000,
            step_scale: 0.9,
            divergence_factor: 1e6,
        },
        timeout: Duration::from_secs(20),
        workers: 2,
        granularity,
        connectivity: WINDOWED.to_vec(),
        audit: true,
        ..Default::default()
    }
}

const LEARN: BatchOptions = BatchOptions {
    rate: 0.5,
    reseed: false,
    return_state: false,
};

#[test]
fn audit_passes_correct_wiring() {
    for granularity in [Granularity::Layer, Granularity::Block(2), Granularity::Unit] {
        let mut actors = ActorNetwork::spawn(&network(), config(granularity)).unwrap();
        let mut reads = 0;
        for seed in 0..2 {
            let result = actors.run_batch(inputs(3, seed), LEARN).unwrap();
            assert_eq!(result.report.outcome, Outcome::Converged);
            let verdict = audit(&actors.topology, &result.actors);
            assert_eq!(verdict.non_local_reads, 0, "{granularity}: {verdict:?}");
            reads += verdict.reads;
        }
        // Every stepping actor used messages, so the audit had work to do.
        assert!(reads > 20, "{granularity}: only {reads} reads recorded");
    }
}

#[test]
fn audit_catches_planted_read() {
    let topology = ign::runtime::Topology::new(&SIZES, Granularity::Unit, &WINDOWED);
    let names = topology.names();
    let far_input = names.iter().position(|n| n == "input[15]").unwrap();
    let first_unit = names.iter().position(|n| n == "layer1[0]").unwrap();
    // layer1[0]'s window is the first 6 inputs, so input[15] is no neighbour.
    assert!(!topology.connects(far_input, first_unit, MessageKind::ResidualUp));
    let mut runtime = config(Granularity::Unit);
    runtime.planted = vec![Edge {
        from: far_input,
        to: first_unit,
        kind: MessageKind::ResidualUp,
    }];
    let mut actors = ActorNetwork::spawn(&network(), runtime).unwrap();
    let result = actors.run_batch(inputs(3, 0), LEARN).unwrap();
    let verdict = audit(&actors.topology, &result.actors);
    assert!(verdict.non_local_reads > 0, "{verdict:?}");
    assert_eq!(
        verdict
            .examples
            .first()
            .map(|e| e.split(':').next().unwrap()),
        Some("input[15] -> layer1[0] (residual_up)")
    );
}

#[test]
fn perturbation_hops_cover_distance() {
    for granularity in [Granularity::Layer, Granularity::Unit] {
        let mut actors = ActorNetwork::spawn(&network(), config(granularity)).unwrap();
        actors
            .run_batch(inputs(1, 4), BatchOptions::default())
            .unwrap();
        let perturbation = actors.perturb(2, 0.3).unwrap();
        assert_eq!(perturbation.report.outcome, Outcome::Converged);
        let changed: Vec<_> = perturbation
            .rows
            .iter()
            .filter(|r| r.hops.is_some())
            .collect();
        for row in &changed {
            let hops = row.hops.unwrap() as usize;
            let distance = row.graph_distance.unwrap();
            assert!(hops >= distance, "{granularity}: {row:?}");
        }
        let deepest = changed.iter().filter_map(|r| r.graph_distance).max();
        match granularity {
            // input, layer1, layer2 at 0, 1 and 2 hops.
            Granularity::Layer => {
                let hops: Vec<_> = perturbation.rows.iter().map(|r| r.hops).collect();
                assert_eq!(hops, vec![Some(0), Some(1), Some(2)]);
            }
            _ => {
                assert!(changed.len() > 10, "only {} actors changed", changed.len());
                let farthest = perturbation
                    .rows
                    .iter()
                    .filter_map(|r| r.graph_distance)
                    .max();
                assert_eq!(
                    deepest, farthest,
                    "the change should reach the farthest actors"
                );
            }
        }
    }
}

#[test]
fn traffic_totals_match_receipts() {
    let mut actors = ActorNetwork::spawn(&network(), config(Granularity::Unit)).unwrap();
    let mut detected = 0;
    for seed in 0..3 {
        detected += actors
            .run_batch(inputs(2, seed), LEARN)
            .unwrap()
            .report
            .messages;
    }
    let traffic: u64 = actors
        .traffic_snapshot()
        .iter()
        .map(|(_, c)| c.messages)
        .sum();
    // Receivers count what they take out of their mailboxes, apart from the
    // senders' per-wire counters.
    let received: u64 = actors.stats().iter().map(|e| e.received).sum();
    assert!(traffic > 1000, "{traffic}");
    assert_eq!(traffic, received);
    assert_eq!(traffic, detected);
    // Every wire with traffic is an edge of the topology.
    for (edge, count) in actors.traffic_snapshot() {
        if count.messages > 0 {
            assert!(actors.topology.connects(edge.from, edge.to, edge.kind));
        }
    }
}

#[test]
fn trace_has_track_per_actor() {
    let recorder = Arc::new(TraceRecorder::new(20_000_000));
    let mut runtime = config(Granularity::Unit);
    runtime.relax.tolerance = 1e-3;
    runtime.trace = Some(Arc::clone(&recorder));
    let mut actors = ActorNetwork::spawn(&network(), runtime).unwrap();
    actors.run_batch(inputs(2, 1), LEARN).unwrap();
    let names = actors.topology.names();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.json");
    recorder.write(&path, &names).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let events = json["traceEvents"].as_array().unwrap();
    let tracks: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| {
            let name = e["args"]["name"].as_str().unwrap().to_owned();
            (e["tid"].as_u64().unwrap(), name)
        })
        .collect();
    assert_eq!(tracks.len(), names.len());
    for (tid, name) in &tracks {
        assert_eq!(&names[*tid as usize], name);
    }
    let count = |ph: &str| events.iter().filter(|e| e["ph"] == ph).count();
    assert!(count("X") > 0);
    assert!(count("s") > 100);
    assert_eq!(count("s"), count("f"));
    assert_eq!(json["otherData"]["truncated"], false);
}

#[test]
fn trace_limit_truncates_file() {
    let recorder = Arc::new(TraceRecorder::new(500));
    let mut runtime = config(Granularity::Unit);
    runtime.trace = Some(Arc::clone(&recorder));
    let mut actors = ActorNetwork::spawn(&network(), runtime).unwrap();
    actors.run_batch(inputs(2, 1), LEARN).unwrap();
    assert!(recorder.truncated());
    assert_eq!(recorder.recorded(), 500);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.json");
    recorder.write(&path, &actors.topology.names()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["otherData"]["truncated"], true);
    let events = json["traceEvents"].as_array().unwrap();
    let count = |ph: &str| events.iter().filter(|e| e["ph"] == ph).count();
    assert_eq!(count("s"), count("f"));
}
