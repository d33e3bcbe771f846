//! Claims about the `ign` binary seen from outside: its exit codes (0
//! success, 2 bad input, 1 a run that failed at its job), its one-line error
//! messages, and the outputs a run leaves behind. Each message must name the
//! file, key or value at fault.
//!
//! Every command runs in its own temporary directory, with `IGN_CACHE_DIR`
//! inside it so that tests share no cache. `RUST_LOG=off` leaves only the
//! error line on stderr, and one test turns the logs back on. Runs use a tiny
//! synthetic release of 40 train and 20 test images of 28x28 random pixels,
//! and take about 0.1 s each.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flate2::Compression;
use flate2::write::GzEncoder;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;
use tempfile::TempDir;

const DASHED: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];
const DOTTED: [&str; 4] = [
    "train-images.idx3-ubyte",
    "train-labels.idx1-ubyte",
    "t10k-images.idx3-ubyte",
    "t10k-labels.idx1-ubyte",
];
const TRAIN_IMAGES: usize = 40;
const TEST_IMAGES: usize = 20;
const PIXELS: usize = 28 * 28;

/// A scenario sized for the synthetic release: four learning batches of 10,
/// then the readout on codes of all 40 train and 20 test images.
const TINY_SCENARIO: &str = r#"seed = 1

[data]
dir = "data"
train_images = 40
readout_images = 40
test_images = 20

[network]
layers = [784, 20, 10]
alpha = [0.05]

[relax]
max_steps = 200

[train]
batch_size = 10

[encode]
batch_size = 20

[readout]
epochs = 2
"#;

/// Keys that every completed run writes to `summary.json`.
const SUMMARY_KEYS: [&str; 13] = [
    "scenario",
    "seed",
    "seconds",
    "train_images",
    "test_error",
    "test_error_pixels",
    "updates_mean",
    "updates_max",
    "max_residual",
    "max_constraint_violation",
    "messages_total",
    "relaxations_at_cap",
    "unused_units",
];

/// A temporary working directory for one or more `ign` commands.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Returns a sandbox holding `tiny.toml` and the synthetic release in
    /// `data/` under the dashed names.
    fn tiny() -> Sandbox {
        let sandbox = Sandbox::new();
        sandbox.write("tiny.toml", TINY_SCENARIO.as_bytes());
        sandbox.write_release("data", DASHED, &release(TRAIN_IMAGES, TEST_IMAGES));
        sandbox
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes `bytes` to `relative`, creating its parent directories.
    fn write(&self, relative: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, bytes).unwrap();
        path
    }

    fn write_release(&self, dir: &str, names: [&str; 4], files: &[Vec<u8>; 4]) -> PathBuf {
        for (name, bytes) in names.iter().zip(files) {
            self.write(&format!("{dir}/{name}"), bytes);
        }
        self.path(dir)
    }

    /// Runs `ign` in the sandbox with logging off.
    fn ign(&self, args: &[&str]) -> Output {
        self.command(args).env("RUST_LOG", "off").output().unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ign"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("IGN_CACHE_DIR", self.path("cache"))
            .env("NO_COLOR", "1");
        command
    }

    /// Runs `ign run tiny.toml --no-progress --out out` with `extra` flags.
    fn run_tiny(&self, extra: &[&str]) -> Output {
        let mut args = vec!["run", "tiny.toml", "--no-progress", "--out", "out"];
        args.extend_from_slice(extra);
        self.ign(&args)
    }

    fn summary(&self) -> Value {
        let text = fs::read_to_string(self.path("out/summary.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// Returns IDX images with a header declaring `count` images but `stored` of
/// them written, each of 784 random pixels.
fn images_idx(count: u32, stored: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes: Vec<u8> = [0x803, count, 28, 28]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    bytes.extend((0..stored * PIXELS).map(|_| rng.random::<u8>()));
    bytes
}

fn labels_idx(count: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes: Vec<u8> = [0x801, count as u32]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    bytes.extend((0..count).map(|_| rng.random_range(0..10u8)));
    bytes
}

/// Returns the four raw files of a valid release, in `DASHED` order.
fn release(train: usize, test: usize) -> [Vec<u8>; 4] {
    [
        images_idx(train as u32, train, 1),
        labels_idx(train, 2),
        images_idx(test as u32, test, 3),
        labels_idx(test, 4),
    ]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

/// Asserts that stderr is exactly one line starting with `ign: ` and
/// returns that line without its newline.
fn error_line(output: &Output) -> String {
    let text = stderr(output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "stderr is not one line: {text:?}");
    assert!(
        text.ends_with('\n'),
        "stderr does not end the line: {text:?}"
    );
    assert!(
        lines[0].starts_with("ign: "),
        "stderr does not start with `ign: `: {text:?}"
    );
    lines[0].to_owned()
}

fn assert_mentions(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "{line:?} does not mention {part:?}");
    }
}

/// Asserts exit code 2 and a one-line error that mentions every part.
fn assert_bad_input(output: &Output, parts: &[&str]) -> String {
    assert_exit(output, 2);
    let line = error_line(output);
    assert_mentions(&line, parts);
    line
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn scenario_not_toml_names_file_and_line() {
    let sandbox = Sandbox::new();
    let path = sandbox.write("broken.toml", b"seed = 1\nlayers = [784,\n  garbage\n");
    let output = sandbox.ign(&["run", &display(&path)]);
    let line = assert_bad_input(&output, &[&display(&path), "not valid TOML at line 3"]);
    assert!(
        line.starts_with(&format!("ign: {}: ", path.display())),
        "{line:?}"
    );
}

#[test]
fn unknown_top_level_key_is_named() {
    let sandbox = Sandbox::tiny();
    sandbox.write(
        "typo.toml",
        format!("bogus = 3\n{TINY_SCENARIO}").as_bytes(),
    );
    let output = sandbox.ign(&["run", "typo.toml"]);
    assert_bad_input(
        &output,
        &["ign: typo.toml: unknown field `bogus`", "expected one of"],
    );
}

#[test]
fn unknown_relax_key_is_named() {
    let sandbox = Sandbox::tiny();
    let text = TINY_SCENARIO.replace("[relax]\n", "[relax]\nnope = 1\n");
    sandbox.write("typo.toml", text.as_bytes());
    let output = sandbox.ign(&["run", "typo.toml"]);
    assert_bad_input(
        &output,
        &[
            "ign: typo.toml: in `relax`: unknown field `nope`",
            "`tolerance`",
        ],
    );
}

#[test]
fn out_of_range_overrides_name_key_and_value() {
    // (override, key, value as printed)
    let cases = [
        ("network.layers=[784, 0, 10]", "network.layers", "0"),
        ("network.alpha=[-0.5]", "network.alpha", "-0.5"),
        ("relax.tolerance=0", "relax.tolerance", "0"),
        ("relax.tolerance=-0.01", "relax.tolerance", "-0.01"),
        ("relax.tolerance=nan", "relax.tolerance", "NaN"),
        ("relax.step_scale=0", "relax.step_scale", "0"),
        ("relax.step_scale=-1", "relax.step_scale", "-1"),
        ("train.batch_size=0", "train.batch_size", "0"),
        ("data.train_images=0", "data.train_images", "0"),
        (
            "train.max_capped_fraction=1.5",
            "train.max_capped_fraction",
            "1.5",
        ),
        ("relax.max_steps=0", "relax.max_steps", "0"),
        (
            "runtime.granularity=\"cell\"",
            "runtime.granularity",
            "\"cell\"",
        ),
        ("runtime.granularity=0", "runtime.granularity", "0"),
        ("runtime.trace_limit=0", "runtime.trace_limit", "0"),
        ("network.window=[1, 2, 3]", "network.window", "[1, 2, 3]"),
        ("perturbation.unit=784", "perturbation.unit", "784"),
    ];
    let sandbox = Sandbox::tiny();
    for (set, key, value) in cases {
        let output = sandbox.run_tiny(&["--set", set]);
        let expected = format!(
            "ign: tiny.toml with command-line overrides: invalid value {value} for key `{key}`: "
        );
        assert_exit(&output, 2);
        let line = error_line(&output);
        assert!(
            line.starts_with(&expected),
            "--set {set}: {line:?} does not start with {expected:?}"
        );
    }
    assert!(
        !sandbox.path("out").exists(),
        "a rejected scenario created the run directory"
    );
}

#[test]
fn tolerance_in_file_is_range_checked() {
    let sandbox = Sandbox::tiny();
    let text = TINY_SCENARIO.replace("[relax]\n", "[relax]\ntolerance = -1e-3\n");
    sandbox.write("bad.toml", text.as_bytes());
    let output = sandbox.ign(&["run", "bad.toml"]);
    assert_bad_input(
        &output,
        &["ign: bad.toml: invalid value -0.001 for key `relax.tolerance`"],
    );
}

#[test]
fn train_images_flag_is_range_checked() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--train-images", "0"]);
    assert_bad_input(&output, &["invalid value 0 for key `data.train_images`"]);
}

// Regression test: `--seed` accepted any u64, but the seed reaches the
// scenario as a TOML integer, which is an i64, so a seed above 2^63 - 1
// failed later with "invalid type: string".
#[test]
fn seed_above_toml_range_is_rejected() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--seed", "9223372036854775808"]);
    assert_exit(&output, 2);
    let text = stderr(&output);
    assert!(
        text.starts_with("ign: invalid value '9223372036854775808' for '--seed <SEED>'"),
        "{text}"
    );
    assert!(text.contains("0..=9223372036854775807"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn largest_seed_completes() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--seed", "9223372036854775807"]);
    assert_exit(&output, 0);
    assert_eq!(sandbox.summary()["seed"], 9_223_372_036_854_775_807u64);
}

#[test]
fn wrong_value_type_names_key() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--set", "train.batch_size=-1"]);
    assert_bad_input(
        &output,
        &[
            "ign: tiny.toml with command-line overrides: in `train.batch_size`: ",
            "`-1`",
            "usize",
        ],
    );

    let output = sandbox.run_tiny(&["--set", "relax.tolerance=small"]);
    assert_bad_input(&output, &["in `relax.tolerance`: ", "\"small\""]);
}

#[test]
fn override_without_equals_is_rejected() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--set", "foo"]);
    assert_bad_input(
        &output,
        &["ign: invalid override `foo`: expected KEY=VALUE"],
    );
}

#[test]
fn override_of_unknown_key_is_rejected() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--set", "relax.nope=1"]);
    assert_bad_input(&output, &["in `relax`: unknown field `nope`"]);
}

#[test]
fn override_below_a_value_is_rejected() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--set", "seed.x=1"]);
    assert_bad_input(
        &output,
        &["ign: invalid override `seed.x=1`: `seed` is not a section"],
    );
}

#[test]
fn missing_scenario_names_path() {
    let sandbox = Sandbox::new();
    let path = sandbox.path("absent.toml");
    let output = sandbox.ign(&["run", &display(&path)]);
    assert_bad_input(
        &output,
        &[&format!("ign: cannot read scenario {}: ", path.display())],
    );
}

#[test]
fn empty_data_dir_lists_paths_tried() {
    let sandbox = Sandbox::tiny();
    let empty = sandbox.path("empty");
    fs::create_dir(&empty).unwrap();
    let output = sandbox.run_tiny(&["--data", &display(&empty)]);
    let tried: Vec<String> = [
        "train-images-idx3-ubyte",
        "train-images-idx3-ubyte.gz",
        "train-images.idx3-ubyte",
        "train-images.idx3-ubyte.gz",
    ]
    .iter()
    .map(|name| display(&empty.join(name)))
    .collect();
    let mut parts: Vec<&str> = tried.iter().map(String::as_str).collect();
    parts.extend(["missing MNIST train images file", "--data DIR"]);
    assert_bad_input(&output, &parts);
}

#[test]
fn missing_data_dir_is_named() {
    let sandbox = Sandbox::tiny();
    let absent = sandbox.path("absent");
    let output = sandbox.run_tiny(&["--data", &display(&absent)]);
    assert_bad_input(&output, &[&display(&absent), "does not exist"]);
}

#[test]
fn truncated_images_report_sizes() {
    let sandbox = Sandbox::tiny();
    let mut files = release(TRAIN_IMAGES, TEST_IMAGES);
    // The header declares 40 images, but the payload contains 39.
    files[0] = images_idx(40, 39, 1);
    let dir = sandbox.write_release("short", DASHED, &files);
    let output = sandbox.run_tiny(&["--data", &display(&dir)]);
    let path = display(&dir.join("train-images-idx3-ubyte"));
    // 16 + 40 * 784 = 31376 and 16 + 39 * 784 = 30592.
    assert_bad_input(
        &output,
        &[
            &path,
            "31376 bytes were expected",
            "30592 bytes were found",
            "truncated by 784",
        ],
    );
}

#[test]
fn count_mismatch_names_both_files() {
    let sandbox = Sandbox::tiny();
    let mut files = release(TRAIN_IMAGES, TEST_IMAGES);
    files[1] = labels_idx(39, 2);
    let dir = sandbox.write_release("mismatch", DASHED, &files);
    let output = sandbox.run_tiny(&["--data", &display(&dir)]);
    let images = display(&dir.join("train-images-idx3-ubyte"));
    let labels = display(&dir.join("train-labels-idx1-ubyte"));
    assert_bad_input(
        &output,
        &[&images, &labels, "40 images", "39 labels", "train split"],
    );
}

#[test]
fn html_page_is_not_idx() {
    let sandbox = Sandbox::tiny();
    let mut files = release(TRAIN_IMAGES, TEST_IMAGES);
    files[0] =
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n".to_vec();
    let dir = sandbox.write_release("html", DASHED, &files);
    let output = sandbox.run_tiny(&["--data", &display(&dir)]);
    let path = display(&dir.join("train-images-idx3-ubyte"));
    assert_bad_input(
        &output,
        &[
            &path,
            "is not an IDX file",
            "`<!DOCTYPE html>`",
            "HTML page",
        ],
    );
}

#[test]
fn gzip_under_raw_names_completes() {
    let sandbox = Sandbox::tiny();
    let files = release(TRAIN_IMAGES, TEST_IMAGES).map(|bytes| gzip(&bytes));
    assert_eq!(&files[0][..2], b"\x1f\x8b");
    let dir = sandbox.write_release("gz", DASHED, &files);
    let output = sandbox.run_tiny(&["--data", &display(&dir), "--seed", "7"]);
    assert_exit(&output, 0);

    let summary = sandbox.summary();
    for key in SUMMARY_KEYS {
        assert!(
            summary.get(key).is_some(),
            "summary.json has no `{key}`: {summary}"
        );
    }
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["seed"], 7);
    assert_eq!(summary["train_images"], 40);
    assert_eq!(summary["message"], Value::Null);
    let test_error = summary["test_error"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&test_error), "test_error {test_error}");
    let pixel_error = summary["test_error_pixels"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&pixel_error),
        "test_error_pixels {pixel_error}"
    );
    let unused = summary["unused_units"].as_array().unwrap();
    assert_eq!(unused.len(), 2);
    assert!(unused[0].as_u64().unwrap() <= 20, "{unused:?}");
    assert!(unused[1].as_u64().unwrap() <= 10, "{unused:?}");

    // The run also prints the summary on stdout.
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed, summary);

    let png = fs::read(sandbox.path("out/projective_fields.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &png[..8.min(png.len())]
    );

    let resolved = fs::read_to_string(sandbox.path("out/scenario.resolved.toml")).unwrap();
    let resolved: toml::Table = toml::from_str(&resolved).unwrap();
    assert_eq!(resolved["seed"].as_integer(), Some(7));
    assert_eq!(
        resolved["ign_version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        resolved["data"]["dir"].as_str(),
        Some(display(&dir).as_str())
    );

    let csv = fs::read_to_string(sandbox.path("out/training.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
}

#[test]
fn dotted_names_complete() {
    let sandbox = Sandbox::tiny();
    let dir = sandbox.write_release("dotted", DOTTED, &release(TRAIN_IMAGES, TEST_IMAGES));
    let output = sandbox.run_tiny(&["--data", &display(&dir)]);
    assert_exit(&output, 0);
    assert_eq!(sandbox.summary()["status"], "completed");
}

#[test]
fn data_dir_with_quote_completes() {
    // `--data` becomes a TOML override, so the path must be quoted there.
    let sandbox = Sandbox::tiny();
    let dir = sandbox.write_release("da\"ta", DASHED, &release(TRAIN_IMAGES, TEST_IMAGES));
    let output = sandbox.run_tiny(&["--data", &display(&dir)]);
    assert_exit(&output, 0);
}

#[test]
fn resolved_scenario_runs_again() {
    let sandbox = Sandbox::tiny();
    assert_exit(&sandbox.run_tiny(&["--seed", "7"]), 0);
    let output = sandbox.ign(&[
        "run",
        "out/scenario.resolved.toml",
        "--no-progress",
        "--out",
        "again",
    ]);
    assert_exit(&output, 0);
    let again = fs::read_to_string(sandbox.path("again/summary.json")).unwrap();
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["seed"], 7);
}

#[test]
fn first_layer_must_match_pixels() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--set", "network.layers=[100, 20]"]);
    assert_bad_input(
        &output,
        &["network.layers starts with 100", "784 pixels (28x28)"],
    );
}

#[test]
fn check_gradient_rejects_zero_layer() {
    let sandbox = Sandbox::new();
    let output = sandbox.ign(&["check-gradient", "--layers", "8,0,5"]);
    assert_bad_input(&output, &["invalid layer sizes [8, 0, 5]"]);
}

#[test]
fn check_gradient_passes_on_small_network() {
    let sandbox = Sandbox::new();
    let output = sandbox.ign(&["check-gradient", "--layers", "8,6,5", "--seed", "3"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    let first = text.lines().next().unwrap_or_default();
    let rest = first
        .strip_prefix("max relative error: ")
        .unwrap_or_else(|| panic!("{text}"));
    let (error, entries) = rest
        .split_once(" over ")
        .unwrap_or_else(|| panic!("{first:?}"));
    let error: f64 = error.parse().unwrap_or_else(|_| panic!("{first:?}"));
    assert!((0.0..1e-5).contains(&error), "{first:?}");
    let entries = entries
        .strip_suffix(" entries")
        .unwrap_or_else(|| panic!("{first:?}"));
    // W_1 is 8x6 and W_2 is 6x5.
    assert_eq!(entries, "78");
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
}

#[test]
fn divergence_writes_partial_summary() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--set", "relax.step_scale=5"]);
    assert_exit(&output, 1);
    let line = error_line(&output);
    assert_mentions(&line, &["diverged", "relax.step_scale"]);

    let text = fs::read_to_string(sandbox.path("out/summary.json")).unwrap();
    for token in ["NaN", "nan", "inf"] {
        assert!(
            !text.contains(token),
            "summary.json contains {token}: {text}"
        );
    }
    let summary: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(summary["status"], "diverged");
    assert_eq!(summary["message"].as_str(), line.strip_prefix("ign: "));
    // The diverged batch itself is counted, with its residual.
    assert_eq!(summary["relaxations"], 1);
    assert!(summary["max_residual"].as_f64().unwrap() > 1.0);
    for key in [
        "max_residual",
        "max_constraint_violation",
        "updates_mean",
        "seconds",
    ] {
        let value = &summary[key];
        assert!(
            value.is_null() || value.as_f64().is_some_and(f64::is_finite),
            "{key}: {value}"
        );
    }
    assert!(sandbox.path("out/scenario.resolved.toml").is_file());
    assert!(sandbox.path("out/training.csv").is_file());
}

#[test]
fn capped_relaxations_fail_the_run() {
    let sandbox = Sandbox::tiny();
    let sets = [
        "--set",
        "relax.max_steps=1",
        "--set",
        "train.max_capped_fraction=0",
    ];
    let output = sandbox.run_tiny(&sets);
    assert_exit(&output, 1);
    let line = error_line(&output);
    assert_mentions(&line, &["1 of 1 relaxations", "relax.max_steps = 1"]);

    let summary = sandbox.summary();
    assert_eq!(summary["status"], "too_many_capped");
    assert_eq!(summary["relaxations_at_cap"], 1);
    assert_eq!(summary["message"].as_str(), line.strip_prefix("ign: "));
    assert!(sandbox.path("out/projective_fields.png").is_file());
}

#[test]
fn unusable_out_dir_is_named() {
    let sandbox = Sandbox::tiny();
    sandbox.write("taken", b"a file, not a directory");
    let output = sandbox.ign(&["run", "tiny.toml", "--no-progress", "--out", "taken"]);
    assert_exit(&output, 2);
    assert_mentions(
        &error_line(&output),
        &["ign: cannot create output directory taken: ", "--out DIR"],
    );
}

#[test]
fn error_prints_once_with_logging_on() {
    let sandbox = Sandbox::tiny();
    let output = sandbox
        .command(&[
            "run",
            "tiny.toml",
            "--no-progress",
            "--out",
            "out",
            "--data",
            "absent",
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_exit(&output, 2);
    let text = stderr(&output);
    let errors: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("ign: "))
        .collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert_eq!(text.lines().last(), Some(errors[0]), "{text}");
}

#[test]
fn help_lists_commands_and_flags() {
    let sandbox = Sandbox::new();
    let output = sandbox.ign(&["--help"]);
    assert_exit(&output, 0);
    assert_mentions(
        &stdout(&output),
        &["run", "check-gradient", "--help", "--version"],
    );

    let output = sandbox.ign(&["run", "--help"]);
    assert_exit(&output, 0);
    let flags = [
        "<SCENARIO>",
        "--out",
        "--seed",
        "--data",
        "--train-images",
        "--set",
        "--no-progress",
    ];
    assert_mentions(&stdout(&output), &flags);
}

#[test]
fn unknown_subcommand_exits_2() {
    let sandbox = Sandbox::new();
    let output = sandbox.ign(&["bogus"]);
    assert_exit(&output, 2);
    assert_eq!(
        stderr(&output),
        "ign: unrecognized subcommand 'bogus' (see ign --help)\n"
    );
    assert!(stdout(&output).is_empty());
}

#[test]
fn all_blank_training_images_fail_the_run() {
    let sandbox = Sandbox::tiny();
    let mut blank = images_idx(TRAIN_IMAGES as u32, 0, 1);
    blank.extend(std::iter::repeat_n(0u8, TRAIN_IMAGES * PIXELS));
    sandbox.write("data/train-images-idx3-ubyte", &blank);
    let output = sandbox.run_tiny(&[]);
    assert_exit(&output, 1);
    assert_mentions(&error_line(&output), &["all 40 training images are blank"]);
    let summary = sandbox.summary();
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["blank_images"], 40);
}

#[test]
fn unallocatable_layer_is_bad_input() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--set", "network.layers=[784, 100000000000000]"]);
    assert_exit(&output, 2);
    assert_mentions(
        &error_line(&output),
        &[
            "network.layers",
            "784x100000000000000",
            "cannot be allocated",
        ],
    );
}

#[test]
fn messages_are_counted_per_batch() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&[]);
    assert_exit(&output, 0);
    let csv = fs::read_to_string(sandbox.path("out/training.csv")).unwrap();
    let mut total = 0;
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let updates: u64 = fields[2].parse().unwrap();
        let messages: u64 = fields[3].parse().unwrap();
        // One x0 message, then each layer update sends one message per
        // outgoing edge, plus each layer's start announcement.
        assert!(messages >= updates, "{line}");
        assert!(messages <= updates + 3, "{line}");
        total += messages;
    }
    assert_eq!(sandbox.summary()["messages_total"], total);
}

#[test]
fn unit_granularity_rejects_reseeding() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&[
        "--set",
        "runtime.granularity=\"unit\"",
        "--set",
        "train.reseed_every=5",
    ]);
    assert_bad_input(
        &output,
        &["invalid value 5 for key `train.reseed_every`", "\"layer\""],
    );
}

#[test]
fn downsampling_is_checked_against_images() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--set", "data.downsample=40"]);
    assert_bad_input(&output, &["data.downsample = 40", "28x28"]);
    let output = sandbox.run_tiny(&["--set", "data.downsample=14"]);
    assert_bad_input(
        &output,
        &["network.layers starts with 784", "196 pixels (14x14)"],
    );
}

#[test]
fn unit_run_writes_audit_and_traffic() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&[
        "--set",
        "network.layers=[784, 12, 6]",
        "--set",
        "network.window=[100, 0]",
        "--set",
        "runtime.granularity=\"unit\"",
        "--set",
        "runtime.audit=true",
        "--set",
        "train.reseed_every=0",
        "--set",
        "perturbation.unit=400",
        "--trace-file",
        "out/trace.json",
    ]);
    assert_exit(&output, 0);
    let summary = sandbox.summary();
    assert_eq!(summary["granularity"], "unit");
    // 784 input units, lambda, 12 and 6 hidden units.
    assert_eq!(summary["actors"], 803);
    assert_eq!(summary["non_local_reads"], 0);
    assert!(summary["audited_reads"].as_u64().unwrap() > 1000);
    assert_eq!(summary["perturbation"]["hops_below_distance"], 0);

    let traffic = fs::read_to_string(sandbox.path("out/traffic.csv")).unwrap();
    let mut lines = traffic.lines();
    assert_eq!(lines.next(), Some("from,to,kind,messages,bytes"));
    let mut total = 0;
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert!(
            ["prediction_down", "residual_up", "norm", "scale"].contains(&fields[2]),
            "{line}"
        );
        total += fields[3].parse::<u64>().unwrap();
    }
    assert_eq!(Some(total), summary["traffic_messages"].as_u64());
    let png = png::Decoder::new(std::io::BufReader::new(
        fs::File::open(sandbox.path("out/traffic.png")).unwrap(),
    ));
    let info = png.read_info().unwrap();
    assert_eq!(info.info().width, info.info().height);

    let perturbation = fs::read_to_string(sandbox.path("out/perturbation.csv")).unwrap();
    let mut rows = perturbation.lines();
    assert_eq!(
        rows.next(),
        Some("actor,id,hops,graph_distance,first_change_us")
    );
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    assert_eq!(rows.len(), 803);
    assert_eq!(rows[400][0], "input[400]");
    assert_eq!(rows[400][2], "0");
    for row in rows.iter().filter(|r| !r[2].is_empty()) {
        let hops: u64 = row[2].parse().unwrap();
        let distance: u64 = row[3].parse().unwrap();
        assert!(hops >= distance, "{row:?}");
    }

    let trace: Value =
        serde_json::from_str(&fs::read_to_string(sandbox.path("out/trace.json")).unwrap()).unwrap();
    let tracks = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .count();
    assert_eq!(tracks, 803);
    assert_eq!(
        summary["trace_events"],
        trace["otherData"]["events_recorded"]
    );
}

#[test]
fn granularity_of_wrong_type_names_forms() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--set", "runtime.granularity=2.5"]);
    assert_bad_input(
        &output,
        &[
            "`runtime.granularity`",
            "\"layer\", \"unit\" or a whole number of units per block",
        ],
    );
}

#[test]
fn unwritable_trace_file_fails_before_training() {
    let sandbox = Sandbox::tiny();
    let output = sandbox.run_tiny(&["--trace-file", "missing/dir/trace.json"]);
    assert_bad_input(
        &output,
        &[
            "--trace-file missing/dir/trace.json",
            "directory does not exist",
        ],
    );
    assert!(!sandbox.path("out/summary.json").exists());
}

#[test]
fn full_stdout_is_an_error() {
    let sandbox = Sandbox::new();
    let full = fs::File::create("/dev/full");
    let Ok(full) = full else {
        eprintln!("NOTE: /dev/full is missing here; skipping");
        return;
    };
    let output = sandbox
        .command(&["check-gradient", "--layers", "4,3"])
        .env("RUST_LOG", "off")
        .stdout(full)
        .output()
        .unwrap();
    assert_exit(&output, 1);
    let line = error_line(&output);
    assert_mentions(&line, &["standard output"]);
}
