//! A thread-safe recorder of actor updates and messages, and its writer to
//! the Chrome trace-event JSON format, which Perfetto and chrome://tracing
//! open. Each actor is one thread track (`pid` 1, `tid` = actor id), each
//! update a complete slice, and each message a flow arrow from the sender's
//! track to the receiver's.
//!
//! Invariant: the written file contains flow events only in matched pairs,
//! one start (`"s"`) and one finish (`"f"`) per message, each inside a slice
//! on its own track. A flow event that no update encloses gets a short
//! anchor slice of its own, so a viewer can bind every arrow.
//!
//! Updates of one actor are expected not to overlap, as an actor runs one
//! update at a time. Overlapping updates are written as recorded, and a
//! viewer may then nest or misplace them.
//!
//! Recording is bounded: after `limit` events the recorder keeps nothing
//! more and only counts, so a full recorder costs one atomic add per call.
//!
//! Timestamps are microseconds, as the format requires, either since the
//! recorder was created ([`Clock::Wall`]) or in the caller's simulated time
//! ([`Clock::Virtual`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::traffic::{AtomicWriteError, write_atomically};

/// Process id of every event, because the whole network is one process.
const PID: u32 = 1;

/// Name of the process track in the viewers.
const PROCESS_NAME: &str = "ign actors";

/// Name of every update slice.
const UPDATE_NAME: &str = "update";

/// Name of every flow event. Viewers pair a start with a finish by
/// `(id, cat, name)`, so both ends must carry the same name and category.
const FLOW_NAME: &str = "message";

/// Maximum anchor duration, in microseconds. An anchor is shorter when
/// another slice or anchor on the same track is closer than half this.
const ANCHOR_WIDTH_US: f64 = 1.0;

/// Meaning of the timestamps a recorder stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// Wall-clock time since the recorder was created, from the methods that
    /// take an [`Instant`].
    Wall,
    /// Simulated time chosen by the caller, from the `*_at` methods.
    Virtual,
}

/// Errors from writing a Chrome trace.
#[derive(Debug, thiserror::Error)]
pub enum ChromeError {
    #[error("failed to {operation} for {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("failed to serialize trace {}: {source}", path.display())]
    Serialize {
        path: PathBuf,
        source: serde_json::Error,
    },

    #[error("output path {} has no file name", path.display())]
    NoFileName { path: PathBuf },

    #[error(
        "update of actor {actor} from {start_us} us to {end_us} us is invalid, \
         expected finite times with end >= start"
    )]
    InvalidUpdate {
        actor: usize,
        start_us: f64,
        end_us: f64,
    },

    #[error("message {id} at actor {actor} has timestamp {ts_us} us, expected a finite number")]
    NonFiniteTimestamp { actor: usize, id: u64, ts_us: f64 },
}

/// End of a message that a flow event marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlowEnd {
    Send,
    Receive,
}

/// One recorded event, with times in microseconds on the recorder's clock.
#[derive(Clone, Copy, Debug)]
enum Record {
    Update {
        actor: usize,
        start_us: f64,
        end_us: f64,
    },
    Flow(Flow),
}

/// One end of a message.
#[derive(Clone, Copy, Debug)]
struct Flow {
    end: FlowEnd,
    /// The sender for [`FlowEnd::Send`], the receiver otherwise.
    actor: usize,
    id: u64,
    kind: &'static str,
    ts_us: f64,
}

/// A bounded, thread-safe store of actor updates and message flows.
///
/// Actor tasks on any thread call [`update`](Self::update),
/// [`send`](Self::send) and [`receive`](Self::receive) (or their `*_at`
/// forms) through a shared reference. The first `limit` calls are kept and
/// later ones only counted.
#[derive(Debug)]
pub struct TraceRecorder {
    /// Events kept, at most `limit`, in the order their calls took the lock.
    events: Mutex<Vec<Record>>,
    /// Recording calls so far, kept or dropped. A call that finds this at or
    /// above `limit` returns without taking the lock.
    calls: AtomicU64,
    limit: usize,
    /// `limit` as a u64, saturating, for comparison with `calls`.
    limit_u64: u64,
    /// Time zero of the wall-clock timestamps.
    epoch: Instant,
    clock: Clock,
}

impl TraceRecorder {
    /// Creates a wall-clock recorder whose time zero is now. `limit` is the
    /// maximum number of events kept. Later ones are dropped and counted.
    pub fn new(limit: usize) -> Self {
        Self::with_clock(limit, Clock::Wall)
    }

    /// Creates a recorder for timestamps on `clock`. With
    /// [`Clock::Virtual`], record through the `*_at` methods. The methods
    /// that take an [`Instant`] still convert it to microseconds since the
    /// recorder was created, so do not mix the two kinds on one recorder.
    pub fn with_clock(limit: usize, clock: Clock) -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            calls: AtomicU64::new(0),
            limit,
            limit_u64: u64::try_from(limit).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            clock,
        }
    }

    /// Records one update of `actor` from `start` to `end`. An instant
    /// before the recorder was created counts as its time zero.
    pub fn update(&self, actor: usize, start: Instant, end: Instant) {
        let start_us = self.micros_since_epoch(start);
        let duration_us = micros(end.saturating_duration_since(start));
        self.update_at(actor, start_us, start_us + duration_us);
    }

    /// Records the sending of message `id` of kind `kind` by `from`.
    ///
    /// Record the send before the message can reach its receiver. Perfetto's
    /// trace processor reads events in time order and drops a flow finish
    /// that comes before its start.
    pub fn send(&self, from: usize, id: u64, kind: &'static str, at: Instant) {
        self.send_at(from, id, kind, self.micros_since_epoch(at));
    }

    /// Records the receipt of message `id` of kind `kind` by `to`.
    pub fn receive(&self, to: usize, id: u64, kind: &'static str, at: Instant) {
        self.receive_at(to, id, kind, self.micros_since_epoch(at));
    }

    /// Records one update of `actor` between two timestamps in microseconds.
    pub fn update_at(&self, actor: usize, start_us: f64, end_us: f64) {
        self.record(Record::Update {
            actor,
            start_us,
            end_us,
        });
    }

    /// Records the sending of message `id` by `from` at `ts_us`
    /// microseconds.
    pub fn send_at(&self, from: usize, id: u64, kind: &'static str, ts_us: f64) {
        self.record(Record::Flow(Flow {
            end: FlowEnd::Send,
            actor: from,
            id,
            kind,
            ts_us,
        }));
    }

    /// Records the receipt of message `id` by `to` at `ts_us` microseconds.
    pub fn receive_at(&self, to: usize, id: u64, kind: &'static str, ts_us: f64) {
        self.record(Record::Flow(Flow {
            end: FlowEnd::Receive,
            actor: to,
            id,
            kind,
            ts_us,
        }));
    }

    /// Returns the number of events kept.
    pub fn recorded(&self) -> usize {
        self.lock_events().len()
    }

    /// Returns the number of events not kept because the recorder was full.
    pub fn dropped(&self) -> usize {
        let dropped = self
            .calls
            .load(Ordering::Relaxed)
            .saturating_sub(self.limit_u64);
        usize::try_from(dropped).unwrap_or(usize::MAX)
    }

    /// Returns whether any event was dropped.
    pub fn truncated(&self) -> bool {
        self.dropped() > 0
    }

    /// Writes the kept events to `path` as a Chrome trace-event JSON object,
    /// atomically, naming actor `i`'s track `names[i]` (or `i` when `names`
    /// is shorter).
    ///
    /// The file has `traceEvents`, `displayTimeUnit` `"ms"` and `otherData`
    /// with `events_recorded`, `events_dropped`, `truncated`, `limit`,
    /// `clock` and `flow_events_unpaired`. Flow events of a message whose
    /// other end was not kept are left out and counted as unpaired. When one
    /// message id is recorded twice as sent (or received) with the same
    /// kind, only the first is used.
    ///
    /// Returns an error, and writes nothing, when a kept event has a
    /// non-finite time or an update ends before it starts.
    pub fn write(&self, path: &Path, names: &[String]) -> Result<(), ChromeError> {
        let records = self.lock_events().clone();
        validate(&records)?;
        let pairing = pair_flows(&records);
        let trace = TraceFile {
            trace_events: trace_events(&records, &pairing.paired, names),
            display_time_unit: "ms",
            other_data: OtherData {
                events_recorded: records.len(),
                events_dropped: self.dropped(),
                truncated: self.truncated(),
                limit: self.limit,
                clock: self.clock,
                flow_events_unpaired: pairing.unpaired,
            },
        };

        let result = write_atomically(path, |writer| serde_json::to_writer(writer, &trace));
        result.map_err(|failure| {
            let path = path.to_path_buf();
            match failure {
                AtomicWriteError::NoFileName => ChromeError::NoFileName { path },
                AtomicWriteError::Io { operation, source } => ChromeError::Io {
                    operation,
                    path,
                    source,
                },
                AtomicWriteError::Write(error) if error.is_io() => ChromeError::Io {
                    operation: "write JSON data",
                    path,
                    source: io::Error::from(error),
                },
                AtomicWriteError::Write(source) => ChromeError::Serialize { path, source },
            }
        })
    }

    /// Keeps `record` unless `limit` calls came before it. The atomic check
    /// comes first, so a full recorder never takes the lock.
    fn record(&self, record: Record) {
        let earlier_calls = self.calls.fetch_add(1, Ordering::Relaxed);
        if earlier_calls < self.limit_u64 {
            self.lock_events().push(record);
        }
    }

    /// Locks the events. A panic in another recording thread cannot leave
    /// the vector half-changed, so a poisoned lock is used as it is.
    fn lock_events(&self) -> std::sync::MutexGuard<'_, Vec<Record>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn micros_since_epoch(&self, at: Instant) -> f64 {
        micros(at.saturating_duration_since(self.epoch))
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Returns an error for the first record with a non-finite time or an
/// update that ends before it starts.
fn validate(records: &[Record]) -> Result<(), ChromeError> {
    for record in records {
        match *record {
            Record::Update {
                actor,
                start_us,
                end_us,
            } => {
                let valid = start_us.is_finite() && end_us.is_finite() && end_us >= start_us;
                if !valid {
                    return Err(ChromeError::InvalidUpdate {
                        actor,
                        start_us,
                        end_us,
                    });
                }
            }
            Record::Flow(Flow {
                actor, id, ts_us, ..
            }) => {
                if !ts_us.is_finite() {
                    return Err(ChromeError::NonFiniteTimestamp { actor, id, ts_us });
                }
            }
        }
    }
    Ok(())
}

/// The flow records to write and the number left out.
struct Pairing {
    /// `paired[i]` is whether record `i` is a flow event to write.
    paired: Vec<bool>,
    /// Flow records left out: no other end kept, or a repeated end.
    unpaired: usize,
}

/// Marks the first send and the first receive of each `(id, kind)` as
/// paired when both were kept.
fn pair_flows(records: &[Record]) -> Pairing {
    let mut ends: HashMap<(u64, &'static str), [Option<usize>; 2]> = HashMap::new();
    let mut flow_records = 0;
    for (index, record) in records.iter().enumerate() {
        if let Record::Flow(flow) = record {
            flow_records += 1;
            let slot = match flow.end {
                FlowEnd::Send => 0,
                FlowEnd::Receive => 1,
            };
            ends.entry((flow.id, flow.kind)).or_default()[slot].get_or_insert(index);
        }
    }

    let mut paired = vec![false; records.len()];
    let mut pairs = 0;
    for [send, receive] in ends.into_values() {
        if let (Some(send), Some(receive)) = (send, receive) {
            paired[send] = true;
            paired[receive] = true;
            pairs += 1;
        }
    }
    Pairing {
        paired,
        unpaired: flow_records - 2 * pairs,
    }
}

/// Builds the metadata events, then every slice and paired flow event
/// sorted by time.
fn trace_events<'a>(
    records: &'a [Record],
    paired: &[bool],
    names: &'a [String],
) -> Vec<TraceEvent<'a>> {
    // Per actor, its update slices as (start, end), sorted by start below.
    let mut slices: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    let mut flows = Vec::new();
    for (record, &is_paired) in records.iter().zip(paired) {
        match *record {
            Record::Update {
                actor,
                start_us,
                end_us,
            } => slices.entry(actor).or_default().push((start_us, end_us)),
            Record::Flow(flow) if is_paired => flows.push(flow),
            Record::Flow(_) => {}
        }
    }
    for track in slices.values_mut() {
        track.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    let mut timed: Vec<TraceEvent<'a>> = Vec::new();
    for (&actor, track) in &slices {
        for &(start_us, end_us) in track {
            timed.push(TraceEvent::slice(
                UPDATE_NAME,
                actor,
                start_us,
                end_us - start_us,
            ));
        }
    }
    timed.extend(anchor_slices(&slices, &flows));
    timed.extend(flows.iter().map(TraceEvent::flow));
    // At equal times a slice comes before a flow start, and a flow start
    // before a flow finish, because Perfetto binds a flow event to the newest
    // slice of its track and needs a flow's start before its finish. The
    // sort is stable, so the output is the same for the same records.
    timed.sort_by(|a, b| {
        let key = |event: &TraceEvent| (event.ts.unwrap_or(0.0), phase_rank(event.ph));
        let (a, b) = (key(a), key(b));
        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
    });

    let mut events = metadata_events(records, names);
    events.extend(timed);
    events
}

/// Returns short slices named `send`, `receive` or `send+receive` around
/// the flow events that no update on their track encloses, one per distinct
/// time on a track.
fn anchor_slices(
    slices: &BTreeMap<usize, Vec<(f64, f64)>>,
    flows: &[Flow],
) -> Vec<TraceEvent<'static>> {
    // Per track, the times and ends of the flow events no update encloses.
    let mut loose: BTreeMap<usize, Vec<(f64, FlowEnd)>> = BTreeMap::new();
    for flow in flows {
        let track = slices.get(&flow.actor).map_or(&[][..], Vec::as_slice);
        if !is_enclosed(track, flow.ts_us) {
            let times = loose.entry(flow.actor).or_default();
            times.push((flow.ts_us, flow.end));
        }
    }

    let mut anchors = Vec::new();
    for (actor, times) in loose {
        let track = slices.get(&actor).map_or(&[][..], Vec::as_slice);
        let groups = group_by_time(times);
        for (index, &(ts_us, name)) in groups.iter().enumerate() {
            let previous_anchor = index.checked_sub(1).map(|i| groups[i].0);
            let next_anchor = groups.get(index + 1).map(|group| group.0);
            let (left, right) = anchor_extent(track, ts_us, previous_anchor, next_anchor);
            anchors.push(TraceEvent::slice(name, actor, ts_us - left, left + right));
        }
    }
    anchors
}

/// Sorts `times` and merges equal times into one `(time, anchor name)`.
fn group_by_time(mut times: Vec<(f64, FlowEnd)>) -> Vec<(f64, &'static str)> {
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut groups: Vec<(f64, &'static str)> = Vec::new();
    for (ts_us, end) in times {
        let name = match end {
            FlowEnd::Send => "send",
            FlowEnd::Receive => "receive",
        };
        match groups.last_mut() {
            Some((last_ts, last_name)) if *last_ts == ts_us => {
                if *last_name != name {
                    *last_name = "send+receive";
                }
            }
            _ => groups.push((ts_us, name)),
        }
    }
    groups
}

/// Returns how far an anchor at `ts_us` reaches to the left and to the
/// right: half of [`ANCHOR_WIDTH_US`], or less so that it stops halfway to
/// the nearest update or other anchor on its track. Anchors and updates on
/// one track therefore never overlap.
fn anchor_extent(
    track: &[(f64, f64)],
    ts_us: f64,
    previous_anchor: Option<f64>,
    next_anchor: Option<f64>,
) -> (f64, f64) {
    let (previous_end, next_start) = neighbours(track, ts_us);
    let half = ANCHOR_WIDTH_US / 2.0;
    let left = previous_anchor
        .into_iter()
        .chain(previous_end)
        .map(|t| (ts_us - t) / 2.0)
        .fold(half, f64::min);
    let right = next_anchor
        .into_iter()
        .chain(next_start)
        .map(|t| (t - ts_us) / 2.0)
        .fold(half, f64::min);
    (left, right)
}

/// Returns whether a slice of `track` (sorted by start) contains `ts_us`,
/// ends included.
fn is_enclosed(track: &[(f64, f64)], ts_us: f64) -> bool {
    let starts_before = track.partition_point(|&(start, _)| start <= ts_us);
    match starts_before.checked_sub(1) {
        Some(last) => track[last].1 >= ts_us,
        None => false,
    }
}

/// Returns the end of the last slice of `track` (sorted by start) that
/// starts at or before `ts_us`, and the start of the first slice after
/// `ts_us`. For a time that no slice encloses, these are the nearest slice
/// edges on either side.
fn neighbours(track: &[(f64, f64)], ts_us: f64) -> (Option<f64>, Option<f64>) {
    let starts_before = track.partition_point(|&(start, _)| start <= ts_us);
    let previous_end = starts_before.checked_sub(1).map(|last| track[last].1);
    let next_start = track.get(starts_before).map(|&(start, _)| start);
    (previous_end, next_start)
}

/// Sort rank of a phase among events at the same time.
fn phase_rank(phase: &str) -> u8 {
    match phase {
        "X" => 0,
        "s" => 1,
        _ => 2,
    }
}

/// Returns the process name, then a thread name and sort index for every
/// actor in `names` or in `records`.
fn metadata_events<'a>(records: &[Record], names: &'a [String]) -> Vec<TraceEvent<'a>> {
    let mut actors: BTreeSet<usize> = (0..names.len()).collect();
    actors.extend(records.iter().map(|record| match *record {
        Record::Update { actor, .. } | Record::Flow(Flow { actor, .. }) => actor,
    }));

    let mut events = vec![TraceEvent::metadata(
        "process_name",
        0,
        MetadataArgs::Name {
            name: Cow::Borrowed(PROCESS_NAME),
        },
    )];
    for actor in actors {
        let name = match names.get(actor) {
            Some(name) => Cow::Borrowed(name.as_str()),
            None => Cow::Owned(actor.to_string()),
        };
        let thread_name = TraceEvent::metadata("thread_name", actor, MetadataArgs::Name { name });
        let sort_index = MetadataArgs::SortIndex { sort_index: actor };
        events.push(thread_name);
        events.push(TraceEvent::metadata("thread_sort_index", actor, sort_index));
    }
    events
}

/// The JSON object format of a Chrome trace.
#[derive(Serialize)]
struct TraceFile<'a> {
    #[serde(rename = "traceEvents")]
    trace_events: Vec<TraceEvent<'a>>,
    #[serde(rename = "displayTimeUnit")]
    display_time_unit: &'static str,
    #[serde(rename = "otherData")]
    other_data: OtherData,
}

/// Recorder counters, stored in the trace for a reader to check.
#[derive(Serialize)]
struct OtherData {
    events_recorded: usize,
    events_dropped: usize,
    truncated: bool,
    limit: usize,
    clock: Clock,
    flow_events_unpaired: usize,
}

/// One entry of `traceEvents`. Fields that are `None` are left out of the
/// JSON.
#[derive(Serialize)]
struct TraceEvent<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cat: Option<&'a str>,
    ph: &'static str,
    pid: u32,
    tid: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<f64>,
    /// Message id of a flow event. JavaScript viewers read ids above 2⁵³
    /// inexactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    /// Binding point `"e"` on a flow finish binds it to the enclosing
    /// slice instead of the next slice to begin.
    #[serde(skip_serializing_if = "Option::is_none")]
    bp: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<MetadataArgs<'a>>,
}

/// Arguments of a metadata event.
#[derive(Serialize)]
#[serde(untagged)]
enum MetadataArgs<'a> {
    Name { name: Cow<'a, str> },
    SortIndex { sort_index: usize },
}

impl<'a> TraceEvent<'a> {
    fn slice(name: &'a str, actor: usize, ts_us: f64, dur_us: f64) -> Self {
        Self {
            ts: Some(ts_us),
            dur: Some(dur_us),
            ..Self::empty(name, "X", actor)
        }
    }

    fn flow(flow: &Flow) -> Self {
        let (ph, bp) = match flow.end {
            FlowEnd::Send => ("s", None),
            FlowEnd::Receive => ("f", Some("e")),
        };
        Self {
            cat: Some(flow.kind),
            ts: Some(flow.ts_us),
            id: Some(flow.id),
            bp,
            ..Self::empty(FLOW_NAME, ph, flow.actor)
        }
    }

    fn metadata(name: &'a str, actor: usize, args: MetadataArgs<'a>) -> Self {
        Self {
            args: Some(args),
            ..Self::empty(name, "M", actor)
        }
    }

    fn empty(name: &'a str, ph: &'static str, actor: usize) -> Self {
        Self {
            name,
            cat: None,
            ph,
            pid: PID,
            tid: actor,
            ts: None,
            dur: None,
            id: None,
            bp: None,
            args: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn names() -> Vec<String> {
        vec!["input[0..8]".to_string(), "layer1[0]".to_string()]
    }

    fn write_and_parse(recorder: &TraceRecorder, names: &[String]) -> Value {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("trace.json");
        recorder.write(&path, names).expect("write trace");
        let text = std::fs::read_to_string(&path).expect("read trace");
        serde_json::from_str(&text).expect("parse trace")
    }

    fn events(trace: &Value) -> &Vec<Value> {
        trace["traceEvents"].as_array().expect("traceEvents array")
    }

    fn with_phase<'a>(trace: &'a Value, phase: &str) -> Vec<&'a Value> {
        events(trace)
            .iter()
            .filter(|event| event["ph"] == phase)
            .collect()
    }

    /// Returns the `ph` of every flow event with message id `id`.
    fn flow_phases(trace: &Value, id: u64) -> Vec<String> {
        events(trace)
            .iter()
            .filter(|event| event["id"] == id)
            .map(|event| event["ph"].as_str().expect("ph").to_string())
            .collect()
    }

    /// Asserts that every flow event lies inside an `"X"` slice of its
    /// track and that each id has exactly one start and one finish.
    fn assert_flows_bound_and_paired(trace: &Value) {
        let slices = with_phase(trace, "X");
        let mut ends: HashMap<u64, Vec<String>> = HashMap::new();
        for flow in events(trace)
            .iter()
            .filter(|e| e["ph"] == "s" || e["ph"] == "f")
        {
            let ts = flow["ts"].as_f64().expect("ts");
            let inside = slices.iter().any(|slice| {
                let start = slice["ts"].as_f64().expect("ts");
                let end = start + slice["dur"].as_f64().expect("dur");
                slice["tid"] == flow["tid"] && start <= ts && ts <= end
            });
            assert!(
                inside,
                "flow event outside every slice of its track: {flow}"
            );
            let id = flow["id"].as_u64().expect("id");
            ends.entry(id)
                .or_default()
                .push(flow["ph"].as_str().expect("ph").into());
        }
        for (id, mut phases) in ends {
            phases.sort();
            assert_eq!(phases, ["f", "s"], "message {id}");
        }
    }

    #[test]
    fn write_names_tracks_and_pairs_flows() {
        let recorder = TraceRecorder::with_clock(100, Clock::Virtual);
        recorder.update_at(0, 10.0, 30.0);
        // Message 7 leaves actor 0 during its update and reaches actor 1
        // before actor 1's update, where no slice encloses it.
        recorder.send_at(0, 7, "state", 20.0);
        recorder.receive_at(1, 7, "state", 35.0);
        recorder.update_at(1, 40.0, 60.5);
        recorder.send_at(1, 8, "residual", 50.0);
        recorder.receive_at(0, 8, "residual", 70.0);

        let trace = write_and_parse(&recorder, &names());

        assert_eq!(trace["displayTimeUnit"], "ms");
        let thread_names: Vec<(u64, &str)> = with_phase(&trace, "M")
            .into_iter()
            .filter(|event| event["name"] == "thread_name")
            .map(|event| {
                (
                    event["tid"].as_u64().unwrap(),
                    event["args"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(thread_names, [(0, "input[0..8]"), (1, "layer1[0]")]);
        let sort_indices = with_phase(&trace, "M")
            .into_iter()
            .filter(|event| event["name"] == "thread_sort_index")
            .count();
        assert_eq!(sort_indices, 2);
        let process = &events(&trace)[0];
        assert_eq!(process["name"], "process_name");
        assert_eq!(process["args"]["name"], "ign actors");

        let updates: Vec<(u64, f64, f64)> = with_phase(&trace, "X")
            .into_iter()
            .filter(|event| event["name"] == "update")
            .map(|event| {
                let field = |key: &str| event[key].as_f64().expect("number");
                (
                    event["tid"].as_u64().expect("tid"),
                    field("ts"),
                    field("dur"),
                )
            })
            .collect();
        assert_eq!(updates, [(0, 10.0, 20.0), (1, 40.0, 20.5)]);

        assert_eq!(flow_phases(&trace, 7), ["s", "f"]);
        assert_eq!(flow_phases(&trace, 8), ["s", "f"]);
        for flow in with_phase(&trace, "s")
            .into_iter()
            .chain(with_phase(&trace, "f"))
        {
            assert_eq!(flow["name"], "message");
            assert_eq!(flow["pid"], 1);
        }
        let finishes = with_phase(&trace, "f");
        assert!(finishes.iter().all(|finish| finish["bp"] == "e"));
        let first_send = with_phase(&trace, "s")[0];
        assert_eq!(first_send["cat"], "state");
        assert_eq!(first_send["tid"], 0);
        assert_eq!(first_send["ts"], 20.0);
        assert_flows_bound_and_paired(&trace);

        let other = &trace["otherData"];
        assert_eq!(other["events_recorded"], 6);
        assert_eq!(other["events_dropped"], 0);
        assert_eq!(other["truncated"], false);
        assert_eq!(other["limit"], 100);
        assert_eq!(other["clock"], "virtual");
        assert_eq!(other["flow_events_unpaired"], 0);
    }

    #[test]
    fn write_anchors_loose_flow_events() {
        let recorder = TraceRecorder::with_clock(100, Clock::Virtual);
        recorder.update_at(1, 40.0, 60.0);
        // Received 0.2 us before the update starts: the anchor stops halfway.
        recorder.send_at(0, 1, "state", 5.0);
        recorder.receive_at(1, 1, "state", 39.8);

        let trace = write_and_parse(&recorder, &names());

        let anchors: Vec<(&str, u64, f64, f64)> = with_phase(&trace, "X")
            .into_iter()
            .filter(|event| event["name"] != "update")
            .map(|event| {
                let field = |key: &str| event[key].as_f64().expect("number");
                let name = event["name"].as_str().expect("name");
                (
                    name,
                    event["tid"].as_u64().expect("tid"),
                    field("ts"),
                    field("dur"),
                )
            })
            .collect();
        assert_eq!(anchors.len(), 2);
        assert_eq!(anchors[0], ("send", 0, 4.5, 1.0));
        let (name, tid, ts, dur) = anchors[1];
        assert_eq!((name, tid), ("receive", 1));
        assert!((ts - 39.3).abs() < 1e-9, "anchor starts at {ts}");
        assert!(
            (ts + dur - 39.9).abs() < 1e-9,
            "anchor ends at {}",
            ts + dur
        );
        assert_flows_bound_and_paired(&trace);
    }

    #[test]
    fn anchors_merge_equal_times_and_never_overlap() {
        let recorder = TraceRecorder::with_clock(100, Clock::Virtual);
        recorder.send_at(1, 2, "state", 0.5);
        recorder.send_at(0, 1, "state", 1.0);
        recorder.receive_at(0, 2, "state", 1.0);
        recorder.send_at(0, 3, "lambda", 1.4);
        recorder.receive_at(1, 3, "lambda", 2.0);
        recorder.receive_at(1, 1, "state", 3.0);

        let trace = write_and_parse(&recorder, &names());

        let anchors_of = |tid: u64| -> Vec<(String, f64, f64)> {
            with_phase(&trace, "X")
                .into_iter()
                .filter(|event| event["tid"] == tid)
                .map(|event| {
                    let ts = event["ts"].as_f64().expect("ts");
                    let end = ts + event["dur"].as_f64().expect("dur");
                    (event["name"].as_str().expect("name").to_string(), ts, end)
                })
                .collect()
        };
        let track_0 = anchors_of(0);
        assert_eq!(track_0.len(), 2);
        assert_eq!(track_0[0].0, "send+receive");
        assert!((track_0[0].1 - 0.5).abs() < 1e-9, "{track_0:?}");
        assert!((track_0[0].2 - 1.2).abs() < 1e-9, "{track_0:?}");
        assert_eq!(track_0[1].0, "send");
        assert!((track_0[1].1 - 1.2).abs() < 1e-9, "{track_0:?}");
        assert!((track_0[1].2 - 1.9).abs() < 1e-9, "{track_0:?}");
        let track_1 = anchors_of(1);
        let names_1: Vec<&str> = track_1.iter().map(|anchor| anchor.0.as_str()).collect();
        assert_eq!(names_1, ["send", "receive", "receive"]);
        for pair in track_0.windows(2).chain(track_1.windows(2)) {
            assert!(pair[0].2 <= pair[1].1, "overlapping anchors {pair:?}");
        }
        assert_flows_bound_and_paired(&trace);
    }

    #[test]
    fn write_rejects_path_without_file_name() {
        let recorder = TraceRecorder::new(10);

        let error = recorder
            .write(Path::new("/"), &names())
            .expect_err("no file name");

        assert!(matches!(error, ChromeError::NoFileName { .. }), "{error:?}");
    }

    #[test]
    fn limit_drops_events_and_unpaired_flows() {
        let recorder = TraceRecorder::with_clock(3, Clock::Virtual);
        recorder.send_at(0, 1, "state", 1.0);
        recorder.receive_at(1, 1, "state", 2.0);
        recorder.send_at(1, 2, "residual", 3.0);
        // The recorder is full from here on.
        recorder.receive_at(0, 2, "residual", 4.0);
        recorder.update_at(0, 5.0, 6.0);
        recorder.update_at(1, 7.0, 8.0);

        assert_eq!(recorder.recorded(), 3);
        assert_eq!(recorder.dropped(), 3);
        assert!(recorder.truncated());

        let trace = write_and_parse(&recorder, &names());

        assert_eq!(flow_phases(&trace, 1), ["s", "f"]);
        assert!(flow_phases(&trace, 2).is_empty());
        assert!(
            with_phase(&trace, "X")
                .iter()
                .all(|e| e["name"] != "update")
        );
        assert_flows_bound_and_paired(&trace);
        let other = &trace["otherData"];
        assert_eq!(other["events_recorded"], 3);
        assert_eq!(other["events_dropped"], 3);
        assert_eq!(other["truncated"], true);
        assert_eq!(other["limit"], 3);
        assert_eq!(other["flow_events_unpaired"], 1);
    }

    #[test]
    fn wall_clock_measures_from_epoch() {
        let recorder = TraceRecorder::new(10);
        let start = Instant::now();
        let end = start + Duration::from_micros(250);
        recorder.update(0, start, end);
        recorder.send(0, 3, "state", start + Duration::from_micros(100));
        recorder.receive(1, 3, "state", end + Duration::from_micros(50));

        let trace = write_and_parse(&recorder, &names());

        let update = with_phase(&trace, "X")
            .into_iter()
            .find(|event| event["name"] == "update")
            .expect("update slice");
        let ts = update["ts"].as_f64().expect("ts");
        let dur = update["dur"].as_f64().expect("dur");
        assert!(ts >= 0.0, "ts {ts}");
        assert!((dur - 250.0).abs() < 1e-6, "dur {dur}");
        let send = with_phase(&trace, "s")[0]["ts"].as_f64().expect("ts");
        assert!((send - ts - 100.0).abs() < 1e-6, "send {send}, update {ts}");
        assert_eq!(trace["otherData"]["clock"], "wall");
        assert_flows_bound_and_paired(&trace);
    }

    #[test]
    fn threads_share_one_recorder() {
        let recorder = TraceRecorder::with_clock(1000, Clock::Virtual);
        std::thread::scope(|scope| {
            for actor in 0..4 {
                let recorder = &recorder;
                scope.spawn(move || {
                    for step in 0..500 {
                        let start = step as f64;
                        recorder.update_at(actor, start, start + 0.5);
                    }
                });
            }
        });

        assert_eq!(recorder.recorded(), 1000);
        assert_eq!(recorder.dropped(), 1000);
    }

    #[test]
    fn metadata_covers_actors_missing_from_names() {
        let recorder = TraceRecorder::with_clock(10, Clock::Virtual);
        recorder.update_at(3, 0.0, 1.0);

        let trace = write_and_parse(&recorder, &names());

        let thread_names: Vec<(u64, &str)> = with_phase(&trace, "M")
            .into_iter()
            .filter(|event| event["name"] == "thread_name")
            .map(|event| {
                (
                    event["tid"].as_u64().unwrap(),
                    event["args"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            thread_names,
            [(0, "input[0..8]"), (1, "layer1[0]"), (3, "3")]
        );
    }

    #[test]
    fn write_rejects_update_ending_before_start() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("trace.json");
        let recorder = TraceRecorder::with_clock(10, Clock::Virtual);
        recorder.update_at(1, 5.0, 4.0);

        let error = recorder
            .write(&path, &names())
            .expect_err("end before start");

        assert!(
            matches!(error, ChromeError::InvalidUpdate { actor: 1, start_us, end_us }
                if start_us == 5.0 && end_us == 4.0),
            "{error:?}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn write_rejects_non_finite_timestamp() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("trace.json");
        let recorder = TraceRecorder::with_clock(10, Clock::Virtual);
        recorder.send_at(0, 9, "state", f64::NAN);

        let error = recorder.write(&path, &names()).expect_err("NaN timestamp");

        assert!(
            matches!(
                error,
                ChromeError::NonFiniteTimestamp {
                    actor: 0,
                    id: 9,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(!path.exists());
    }
}
