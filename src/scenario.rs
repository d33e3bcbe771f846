//! Experiment files: the TOML schema, its defaults, command-line overrides
//! and range checks. Every key and default is documented in
//! `docs/scenarios.md`; keep the two in step.
//!
//! Invariant: a [`Scenario`] that `load` returns has passed [`Scenario::validate`],
//! so the rest of the program can trust every value in it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::WeightInit;
use crate::relaxation::RelaxConfig;
use crate::runtime::{Connectivity, Granularity};

/// A bad scenario file or override. Every variant names the file and, where
/// there is one, the key.
#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML at line {line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A key or value that does not fit the schema. `key` is the dotted key
    /// of the offending value, or of the section that contains an unknown
    /// key. It is `None` for a problem at the top level.
    #[error("{}: {}{message}", .path.display(), in_key(.key))]
    Schema {
        path: PathBuf,
        key: Option<String>,
        message: String,
    },
    #[error("{path}: invalid value {value} for key `{key}`: {expected}")]
    OutOfRange {
        path: PathBuf,
        key: String,
        value: String,
        expected: String,
    },
    #[error("invalid override `{text}`: {reason}")]
    Override { text: String, reason: String },
}

/// A whole experiment.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The ign version that wrote a resolved scenario; ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ign_version: Option<String>,
    /// Seed of every random choice (weights, shuffling, readout).
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub data: DataSection,
    pub network: NetworkSection,
    #[serde(default)]
    pub relax: RelaxSection,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub encode: EncodeSection,
    #[serde(default)]
    pub readout: ReadoutSection,
    /// When present, the run ends with a perturbation experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perturbation: Option<PerturbationSection>,
    /// When present, the run compares schedules instead of encoding and
    /// fitting the readout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<ConvergenceSection>,
}

/// The synchronous-versus-asynchronous comparison.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvergenceSection {
    /// Test images relaxed one at a time (the first ones).
    pub images: usize,
    /// "trained" (the run's weights, or `model`'s) and/or "random" (the
    /// untrained starting weights).
    pub weights: Vec<String>,
    /// Any of "synchronous", "sequential", "tokio", "seeded".
    pub schedules: Vec<String>,
    /// Relative spreads of the message latencies, each in [0, 1].
    pub latency_spread: Vec<f64>,
    /// Step sizes, as fractions of each layer's stability bound.
    pub step_size: Vec<f64>,
    /// Seeded runs per case, with seeds `seed`, `seed + 1`, ...
    pub seeds: usize,
    /// Mean latency of the seeded schedule, in layer-step durations.
    pub latency_mean: f64,
    /// Per layer, the duration of one step in the seeded schedule (layer 1
    /// first); empty means 1 for every layer.
    pub speeds: Vec<f64>,
    /// Largest random delay of a tokio message at spread 1, microseconds.
    pub tokio_delay_us: f64,
    /// Wall-clock limit of one run, seconds.
    pub max_wall_seconds: f64,
    /// Measure V and the residual every this many layer updates.
    pub curve_every: usize,
    /// A `model.npz` to take the trained weights from; empty trains them.
    pub model: PathBuf,
}

impl Default for ConvergenceSection {
    fn default() -> Self {
        ConvergenceSection {
            images: 5,
            weights: vec!["trained".to_owned(), "random".to_owned()],
            schedules: ["synchronous", "sequential", "tokio", "seeded"]
                .map(str::to_owned)
                .to_vec(),
            latency_spread: vec![0.0, 0.5, 0.9],
            step_size: vec![0.5, 0.9],
            seeds: 2,
            latency_mean: 0.5,
            speeds: Vec::new(),
            tokio_delay_us: 200.0,
            max_wall_seconds: 60.0,
            curve_every: 1,
            model: PathBuf::new(),
        }
    }
}

/// Change one input unit at an output state and follow the change through
/// the actors.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PerturbationSection {
    /// The input unit (pixel index, row-major) to change.
    pub unit: usize,
    /// How much to add to it (inputs have unit norm per image).
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Training images relaxed and perturbed together (the first ones).
    #[serde(default = "default_perturbation_images")]
    pub images: usize,
}

fn default_delta() -> f64 {
    0.05
}

fn default_perturbation_images() -> usize {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Directory of the four IDX files, gzipped or raw.
    pub dir: PathBuf,
    /// Directory for decompressed copies; empty means the default cache directory.
    pub cache_dir: PathBuf,
    /// Training images used for learning (the first ones of the file).
    pub train_images: usize,
    /// Training images encoded to fit the readout.
    pub readout_images: usize,
    /// Test images encoded and classified.
    pub test_images: usize,
    /// Side of the square images after block averaging (28 x 28 MNIST to 8 x
    /// 8 averages 3 x 3 blocks of the centre 24 x 24); 0 keeps the images.
    pub downsample: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            dir: PathBuf::from("data/mnist"),
            cache_dir: PathBuf::new(),
            train_images: 20_000,
            readout_images: 20_000,
            test_images: 10_000,
            downsample: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Layer sizes, input first.
    pub layers: Vec<usize>,
    /// Sparsity weight per layer above the input; one value (a number or a
    /// one-element list) applies to all.
    #[serde(deserialize_with = "number_or_list")]
    pub alpha: Vec<f64>,
    #[serde(default = "default_init")]
    pub init: WeightInit,
    /// Per layer above the input, how many consecutive units below each unit
    /// has synapses with (a window under its relative position); 0 means
    /// every unit below. One value applies to all layers.
    #[serde(default = "default_window", deserialize_with = "count_or_list")]
    pub window: Vec<usize>,
}

fn default_window() -> Vec<usize> {
    vec![0]
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaxSection {
    pub tolerance: f64,
    pub max_steps: usize,
    pub step_scale: f64,
    pub divergence_factor: f64,
    /// Wall-clock limit for one relaxation, in seconds.
    pub timeout_seconds: f64,
}

impl Default for RelaxSection {
    fn default() -> Self {
        let r = RelaxConfig::default();
        RelaxSection {
            tolerance: r.tolerance,
            max_steps: r.max_steps,
            step_scale: r.step_scale,
            divergence_factor: r.divergence_factor,
            timeout_seconds: 120.0,
        }
    }
}

impl RelaxSection {
    pub fn config(&self) -> RelaxConfig {
        RelaxConfig {
            tolerance: self.tolerance,
            max_steps: self.max_steps,
            step_scale: self.step_scale,
            divergence_factor: self.divergence_factor,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Tokio worker threads for the actors.
    pub workers: usize,
    /// Units per actor: "layer", "unit", or a number k for blocks of k units.
    pub granularity: GranularityKey,
    /// Record where every value used in an update came from and count the
    /// reads from actors that are not neighbours.
    pub audit: bool,
    /// Most events kept in a `--trace-file`; later ones are dropped and the
    /// truncation reported.
    pub trace_limit: usize,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            workers: 2,
            granularity: GranularityKey::Name("layer".to_owned()),
            audit: false,
            trace_limit: 1_000_000,
        }
    }
}

/// `runtime.granularity` as written: a name or a block size.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "\"layer\", \"unit\" or a whole number of units per block"
)]
pub enum GranularityKey {
    Name(String),
    Units(usize),
}

impl GranularityKey {
    /// Returns the granularity, or `None` for an unknown name or a block of 0.
    pub fn granularity(&self) -> Option<Granularity> {
        match self {
            GranularityKey::Name(name) if name == "layer" => Some(Granularity::Layer),
            GranularityKey::Name(name) if name == "unit" => Some(Granularity::Unit),
            GranularityKey::Name(_) | GranularityKey::Units(0) => None,
            GranularityKey::Units(1) => Some(Granularity::Unit),
            GranularityKey::Units(k) => Some(Granularity::Block(*k)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub batch_size: usize,
    pub epochs: usize,
    /// Equation-1 learning rate at the first batch.
    pub learning_rate: f64,
    /// The rate at batch k is `learning_rate / (1 + k / rate_decay_batches)`.
    pub rate_decay_batches: f64,
    /// Reseed units unused over this many batches; 0 never reseeds.
    pub reseed_every: usize,
    /// The run fails when more than this fraction of relaxations hit the cap.
    pub max_capped_fraction: f64,
    /// The schedule that relaxes the training batches.
    pub schedule: TrainSchedule,
}

/// The schedule that relaxes the training batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainSchedule {
    /// The actors at `runtime.granularity`.
    Actors,
    /// The synchronous solver: deterministic, so a seed fixes the weights.
    Synchronous,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            batch_size: 100,
            epochs: 1,
            learning_rate: 8.0,
            rate_decay_batches: 100.0,
            reseed_every: 50,
            max_capped_fraction: 0.5,
            schedule: TrainSchedule::Actors,
        }
    }
}

/// The schedule that computes the codes for the readout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodeSchedule {
    Synchronous,
    Actors,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncodeSection {
    pub batch_size: usize,
    pub schedule: EncodeSchedule,
}

impl Default for EncodeSection {
    fn default() -> Self {
        EncodeSection {
            batch_size: 250,
            schedule: EncodeSchedule::Synchronous,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadoutSection {
    pub epochs: usize,
    pub learning_rate: f64,
    pub l2: f64,
    pub batch_size: usize,
}

impl Default for ReadoutSection {
    fn default() -> Self {
        // The same values as `ReadoutConfig::default`, written in f64 so the
        // resolved scenario shows them exactly.
        ReadoutSection {
            epochs: 30,
            learning_rate: 1e-3,
            l2: 1e-4,
            batch_size: 128,
        }
    }
}

/// A number, or a list of numbers, in a scenario file.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a number or a list of numbers")]
enum NumberOrList {
    Number(f64),
    List(Vec<f64>),
}

fn number_or_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
    Ok(match NumberOrList::deserialize(deserializer)? {
        NumberOrList::Number(value) => vec![value],
        NumberOrList::List(values) => values,
    })
}

/// A count, or a list of counts, in a scenario file.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a whole number >= 0 or a list of them")]
enum CountOrList {
    Count(usize),
    List(Vec<usize>),
}

fn count_or_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<usize>, D::Error> {
    Ok(match CountOrList::deserialize(deserializer)? {
        CountOrList::Count(value) => vec![value],
        CountOrList::List(values) => values,
    })
}

fn default_seed() -> u64 {
    1
}

fn default_init() -> WeightInit {
    WeightInit::Gaussian
}

impl Scenario {
    /// Reads, overrides and validates a scenario file. `overrides` are
    /// `dotted.key=value` strings whose value is a TOML value (a bare word
    /// that is not valid TOML is taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, overrides)
    }

    /// Parses scenario text; `path` is used in messages only.
    pub fn parse(path: &Path, text: &str, overrides: &[String]) -> Result<Self, ScenarioError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ScenarioError::Syntax {
            path: path.to_owned(),
            line: line_of(text, e.span()),
            message: one_line(e.message()),
        })?;
        for text in overrides {
            apply_override(&mut table, text)?;
        }
        // A bad value may come from an override, not the file, so the message
        // names both.
        let origin = if overrides.is_empty() {
            path.to_owned()
        } else {
            PathBuf::from(format!("{} with command-line overrides", path.display()))
        };
        let scenario: Scenario = table
            .try_into()
            .map_err(|e: toml::de::Error| schema_error(&origin, &e))?;
        scenario.validate(&origin)?;
        Ok(scenario)
    }

    /// Checks every value's range, naming the key of the first bad one.
    pub fn validate(&self, path: &Path) -> Result<(), ScenarioError> {
        let bad = |key: &str, value: String, expected: &str| ScenarioError::OutOfRange {
            path: path.to_owned(),
            key: key.to_owned(),
            value,
            expected: expected.to_owned(),
        };
        let n = &self.network;
        if n.layers.len() < 2 {
            return Err(bad(
                "network.layers",
                format!("{:?}", n.layers),
                "need the input size and at least one layer",
            ));
        }
        if let Some(size) = n.layers.iter().find(|&&s| s == 0) {
            return Err(bad(
                "network.layers",
                size.to_string(),
                "every size must be at least 1",
            ));
        }

        let hidden = n.layers.len() - 1;
        if n.alpha.len() != 1 && n.alpha.len() != hidden {
            return Err(bad(
                "network.alpha",
                format!("{:?}", n.alpha),
                &format!("give 1 value or {hidden} (one per layer above the input)"),
            ));
        }
        if let Some(a) = n.alpha.iter().find(|a| !non_negative(**a)) {
            return Err(bad(
                "network.alpha",
                a.to_string(),
                "must be a finite number >= 0",
            ));
        }

        let r = &self.relax;
        positive(r.tolerance, "relax.tolerance", &bad)?;
        positive(r.step_scale, "relax.step_scale", &bad)?;
        positive(r.timeout_seconds, "relax.timeout_seconds", &bad)?;
        if !(r.divergence_factor.is_finite() && r.divergence_factor > 1.0) {
            return Err(bad(
                "relax.divergence_factor",
                r.divergence_factor.to_string(),
                "must be a finite number > 1",
            ));
        }
        at_least_one(r.max_steps, "relax.max_steps", &bad)?;

        if n.window.len() != 1 && n.window.len() != hidden {
            return Err(bad(
                "network.window",
                format!("{:?}", n.window),
                &format!("give 1 value or {hidden} (one per layer above the input)"),
            ));
        }

        at_least_one(self.runtime.workers, "runtime.workers", &bad)?;
        if self.runtime.granularity.granularity().is_none() {
            let value = match &self.runtime.granularity {
                GranularityKey::Name(name) => format!("\"{name}\""),
                GranularityKey::Units(k) => k.to_string(),
            };
            return Err(bad(
                "runtime.granularity",
                value,
                "must be \"layer\", \"unit\" or a block size of at least 1",
            ));
        }
        at_least_one(self.runtime.trace_limit, "runtime.trace_limit", &bad)?;
        let blocks = self.granularity() != Granularity::Layer;
        if blocks && self.train.reseed_every > 0 {
            return Err(bad(
                "train.reseed_every",
                self.train.reseed_every.to_string(),
                "must be 0 unless runtime.granularity is \"layer\" (blocks do not reseed)",
            ));
        }
        if blocks && self.encode.schedule == EncodeSchedule::Actors {
            return Err(bad(
                "encode.schedule",
                "\"actors\"".to_owned(),
                "must be \"synchronous\" unless runtime.granularity is \"layer\"",
            ));
        }
        if self.train.schedule == TrainSchedule::Synchronous {
            if self.runtime.audit {
                return Err(bad(
                    "runtime.audit",
                    "true".to_owned(),
                    "must be false when train.schedule is \"synchronous\" (the audit watches actors)",
                ));
            }
            if self.perturbation.is_some() {
                return Err(bad(
                    "perturbation",
                    "a section".to_owned(),
                    "needs train.schedule = \"actors\"",
                ));
            }
        }
        if let Some(c) = &self.convergence {
            at_least_one(c.images, "convergence.images", &bad)?;
            at_least_one(c.seeds, "convergence.seeds", &bad)?;
            at_least_one(c.curve_every, "convergence.curve_every", &bad)?;
            positive(c.max_wall_seconds, "convergence.max_wall_seconds", &bad)?;
            if !non_negative(c.latency_mean) {
                return Err(bad(
                    "convergence.latency_mean",
                    c.latency_mean.to_string(),
                    "must be a finite number >= 0",
                ));
            }
            let hidden = n.layers.len() - 1;
            if !c.speeds.is_empty() && c.speeds.len() != hidden {
                return Err(bad(
                    "convergence.speeds",
                    format!("{:?}", c.speeds),
                    &format!("give none or {hidden} (one per layer above the input)"),
                ));
            }
            if let Some(v) = c.speeds.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(bad(
                    "convergence.speeds",
                    v.to_string(),
                    "each must be a finite number > 0",
                ));
            }
            if !non_negative(c.tokio_delay_us) {
                return Err(bad(
                    "convergence.tokio_delay_us",
                    c.tokio_delay_us.to_string(),
                    "must be a finite number >= 0",
                ));
            }
            let known = ["synchronous", "sequential", "tokio", "seeded"];
            if let Some(name) = c.schedules.iter().find(|n| !known.contains(&n.as_str())) {
                return Err(bad(
                    "convergence.schedules",
                    format!("\"{name}\""),
                    "each must be \"synchronous\", \"sequential\", \"tokio\" or \"seeded\"",
                ));
            }
            if let Some((i, name)) = c
                .schedules
                .iter()
                .enumerate()
                .find(|(i, n)| c.schedules[..*i].contains(n))
            {
                return Err(bad(
                    "convergence.schedules",
                    format!("\"{name}\" (again at position {})", i + 1),
                    "name each schedule once",
                ));
            }
            if c.schedules.is_empty() {
                return Err(bad(
                    "convergence.schedules",
                    "[]".to_owned(),
                    "name at least one schedule",
                ));
            }
            if let Some(name) = c
                .weights
                .iter()
                .find(|n| !["trained", "random"].contains(&n.as_str()))
            {
                return Err(bad(
                    "convergence.weights",
                    format!("\"{name}\""),
                    "each must be \"trained\" or \"random\"",
                ));
            }
            if c.weights.is_empty() {
                return Err(bad(
                    "convergence.weights",
                    "[]".to_owned(),
                    "name at least one",
                ));
            }
            if let Some(v) = c.latency_spread.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(bad(
                    "convergence.latency_spread",
                    v.to_string(),
                    "each must be between 0 and 1",
                ));
            }
            if c.latency_spread.is_empty() {
                return Err(bad(
                    "convergence.latency_spread",
                    "[]".to_owned(),
                    "give at least one",
                ));
            }
            if let Some(v) = c.step_size.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(bad(
                    "convergence.step_size",
                    v.to_string(),
                    "each must be a finite number > 0",
                ));
            }
            if c.step_size.is_empty() {
                return Err(bad(
                    "convergence.step_size",
                    "[]".to_owned(),
                    "give at least one",
                ));
            }
        }
        if let Some(p) = &self.perturbation {
            if p.unit >= n.layers[0] {
                return Err(bad(
                    "perturbation.unit",
                    p.unit.to_string(),
                    &format!("must be below {} (the input size)", n.layers[0]),
                ));
            }
            if !(p.delta.is_finite() && p.delta != 0.0) {
                return Err(bad(
                    "perturbation.delta",
                    p.delta.to_string(),
                    "must be a finite number other than 0",
                ));
            }
            at_least_one(p.images, "perturbation.images", &bad)?;
        }

        let t = &self.train;
        at_least_one(t.batch_size, "train.batch_size", &bad)?;
        at_least_one(t.epochs, "train.epochs", &bad)?;
        if !non_negative(t.learning_rate) {
            return Err(bad(
                "train.learning_rate",
                t.learning_rate.to_string(),
                "must be a finite number >= 0",
            ));
        }
        positive(t.rate_decay_batches, "train.rate_decay_batches", &bad)?;
        if !(0.0..=1.0).contains(&t.max_capped_fraction) {
            return Err(bad(
                "train.max_capped_fraction",
                t.max_capped_fraction.to_string(),
                "must be between 0 and 1",
            ));
        }

        let d = &self.data;
        at_least_one(d.train_images, "data.train_images", &bad)?;
        at_least_one(d.readout_images, "data.readout_images", &bad)?;
        at_least_one(d.test_images, "data.test_images", &bad)?;
        at_least_one(self.encode.batch_size, "encode.batch_size", &bad)?;

        let o = &self.readout;
        at_least_one(o.epochs, "readout.epochs", &bad)?;
        at_least_one(o.batch_size, "readout.batch_size", &bad)?;
        positive(o.learning_rate, "readout.learning_rate", &bad)?;
        // The readout computes in f32, so both must be finite there too.
        if o.learning_rate > f64::from(f32::MAX) {
            return Err(bad(
                "readout.learning_rate",
                o.learning_rate.to_string(),
                "must be at most 3.4e38 (f32)",
            ));
        }
        if o.l2 > f64::from(f32::MAX) {
            return Err(bad(
                "readout.l2",
                o.l2.to_string(),
                "must be at most 3.4e38 (f32)",
            ));
        }
        if !non_negative(o.l2) {
            return Err(bad(
                "readout.l2",
                o.l2.to_string(),
                "must be a finite number >= 0",
            ));
        }

        Ok(())
    }

    /// Returns the actor granularity (layer when the key is invalid, which
    /// validation rejects).
    pub fn granularity(&self) -> Granularity {
        self.runtime
            .granularity
            .granularity()
            .unwrap_or(Granularity::Layer)
    }

    /// Returns the connectivity of every layer above the input.
    pub fn connectivity(&self) -> Vec<Connectivity> {
        let hidden = self.network.layers.len() - 1;
        let window = |w: usize| {
            if w == 0 {
                Connectivity::Dense
            } else {
                Connectivity::Window(w)
            }
        };
        match self.network.window.as_slice() {
            [one] => vec![window(*one); hidden],
            many => many.iter().map(|&w| window(w)).collect(),
        }
    }

    /// Returns one sparsity weight per layer above the input.
    pub fn alpha_per_layer(&self) -> Vec<f64> {
        let hidden = self.network.layers.len() - 1;
        match self.network.alpha.as_slice() {
            [one] => vec![*one; hidden],
            many => many.to_vec(),
        }
    }
}

/// Returns whether `value` is a finite number >= 0 (false for NaN).
fn non_negative(value: f64) -> bool {
    value.is_finite() && value >= 0.0
}

fn positive<F>(value: f64, key: &str, bad: &F) -> Result<(), ScenarioError>
where
    F: Fn(&str, String, &str) -> ScenarioError,
{
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(bad(key, value.to_string(), "must be a finite number > 0"))
    }
}

fn at_least_one<F>(value: usize, key: &str, bad: &F) -> Result<(), ScenarioError>
where
    F: Fn(&str, String, &str) -> ScenarioError,
{
    if value >= 1 {
        Ok(())
    } else {
        Err(bad(key, value.to_string(), "must be at least 1"))
    }
}

/// Sets `dotted.key=value` in a TOML table, creating sections as needed.
fn apply_override(table: &mut toml::Table, text: &str) -> Result<(), ScenarioError> {
    let fail = |reason: &str| ScenarioError::Override {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    let (key, raw) = text
        .split_once('=')
        .ok_or_else(|| fail("expected KEY=VALUE"))?;
    let key = key.trim();
    let raw = raw.trim();
    let value = parse_value(raw);
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(fail("empty key part"));
    }
    let mut current = table;
    for part in &parts[..parts.len() - 1] {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| fail(&format!("`{part}` is not a section")))?;
    }
    current.insert(parts[parts.len() - 1].to_owned(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// Converts a deserialization error into [`ScenarioError::Schema`], keeping
/// the dotted key of the offending value.
fn schema_error(path: &Path, error: &toml::de::Error) -> ScenarioError {
    // NOTE: toml 1.2 exposes the key path only through `Display`, as a last
    // line "in `train.batch_size`", which it writes when the error has no
    // span in a source text (as here, deserializing a `Table`).
    // `tests/scenario.rs` checks that the key still comes through.
    let key = error.to_string().lines().rev().find_map(|line| {
        let key = line.trim().strip_prefix("in `")?.strip_suffix('`')?;
        Some(key.to_owned())
    });
    ScenarioError::Schema {
        path: path.to_owned(),
        key,
        message: one_line(error.message()),
    }
}

/// Formats the key part of a schema message: "in `relax`: " or nothing.
fn in_key(key: &Option<String>) -> String {
    key.as_ref()
        .map(|key| format!("in `{key}`: "))
        .unwrap_or_default()
}

/// Joins the lines of a parser message, so every error prints on one line.
fn one_line(message: &str) -> String {
    message
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    let offset = span.map_or(0, |s| s.start).min(text.len());
    text[..offset].matches('\n').count() + 1
}
