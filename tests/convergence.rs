//! Claims about the schedule comparison, run through the `ign` binary on
//! real MNIST digits shrunk to 8x8. Every schedule reaches the synchronous
//! solver's fixed point, and a run replays bit for bit from its seed except
//! for the free-running tokio schedule and the wall-clock column. A step
//! size above the stability bound is divergence for every schedule, with no
//! NaN in any output. The model file round-trips through `ign encode`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn scenario(dir: &Path) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let text = format!(
        r#"seed = 1
[data]
dir = "{}"
downsample = 8
train_images = 200
[network]
layers = [64, 24, 12]
alpha = [0.05, 0.01]
[relax]
tolerance = 1e-6
max_steps = 20000
[train]
schedule = "synchronous"
batch_size = 50
learning_rate = 2.0
reseed_every = 0
[convergence]
images = 2
latency_spread = [0.0, 0.9]
step_size = [0.9]
seeds = 2
curve_every = 20
max_wall_seconds = 30
"#,
        data.display()
    );
    let path = dir.join("compare.toml");
    fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn ign(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_ign"))
        .args(args)
        .current_dir(dir)
        .env("IGN_CACHE_DIR", dir.join("cache"))
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn summary(dir: &Path, out: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(dir.join(out).join("summary.json")).unwrap()).unwrap()
}

/// Returns the CSV rows of every replayable schedule, without the
/// wall-clock column.
fn replayable_rows(dir: &Path, out: &str) -> Vec<String> {
    let text = fs::read_to_string(dir.join(out).join("convergence.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let wall = header.iter().position(|&h| h == "wall_seconds").unwrap();
    lines
        .filter(|l| !l.starts_with("tokio,"))
        .map(|l| {
            let mut fields: Vec<&str> = l.split(',').collect();
            fields.remove(wall);
            fields.join(",")
        })
        .collect()
}

fn assert_no_nan(dir: &Path, out: &str) {
    for name in ["convergence.csv", "summary.json"] {
        let text = fs::read_to_string(dir.join(out).join(name))
            .unwrap()
            .to_lowercase();
        assert!(
            !text.contains("nan") && !text.contains("inf,"),
            "{name} has a NaN or inf"
        );
    }
}

#[test]
fn schedules_agree_and_replay_from_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = scenario(dir);
    let traced = |out: &str| {
        let trace = format!("{out}.trace.json");
        ign(
            dir,
            &[
                "run",
                &file,
                "--no-progress",
                "--out",
                out,
                "--trace-file",
                &trace,
            ],
        );
        fs::read_to_string(dir.join(trace)).unwrap()
    };
    let trace_a = traced("a");
    let trace_b = traced("b");
    ign(
        dir,
        &["run", &file, "--no-progress", "--out", "c", "--seed", "2"],
    );

    let first = summary(dir, "a");
    let schedules = first["convergence"].as_array().unwrap();
    let names: Vec<&str> = schedules
        .iter()
        .map(|s| s["schedule"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["synchronous", "sequential", "tokio", "seeded"]);
    for schedule in schedules {
        let name = &schedule["schedule"];
        assert_eq!(schedule["converged"], schedule["runs"], "{name}");
        // Tolerance 1e-6 on the residual puts every schedule within about
        // 1e-5 of the solver's fixed point.
        let distance = schedule["max_distance"].as_f64().unwrap();
        assert!(distance < 1e-4, "{name}: distance {distance}");
    }
    // 2 images x (1 synchronous, 1 sequential, 2 tokio spreads, 2 spreads x
    // 2 seeds seeded) per weights, trained and random.
    let runs: Vec<u64> = schedules
        .iter()
        .map(|s| s["runs"].as_u64().unwrap())
        .collect();
    assert_eq!(runs, [4, 4, 8, 16]);

    let a = replayable_rows(dir, "a");
    assert!(a.len() > 100, "only {} rows", a.len());
    assert_eq!(a, replayable_rows(dir, "b"), "same seed, different rows");
    assert_ne!(
        a,
        replayable_rows(dir, "c"),
        "another seed gave the same rows"
    );
    assert_no_nan(dir, "a");

    // A layer 2 three times slower than layer 1 changes every seeded run,
    // and the runs still converge.
    ign(
        dir,
        &[
            "run",
            &file,
            "--no-progress",
            "--out",
            "slow",
            "--set",
            "convergence.speeds=[1.0, 3.0]",
            "--set",
            "convergence.schedules=[\"seeded\"]",
        ],
    );
    let slow = summary(dir, "slow");
    let seeded = &slow["convergence"][0];
    assert_eq!(seeded["converged"], seeded["runs"]);
    let seeded_rows = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .filter(|r| r.starts_with("seeded,"))
            .collect()
    };
    assert_ne!(
        seeded_rows(replayable_rows(dir, "slow")),
        seeded_rows(a.clone())
    );

    // The first seeded run is traced in virtual time, so the file replays
    // exactly: one track each for the input and the two layers.
    assert_eq!(trace_a, trace_b, "same seed, different trace");
    let trace: Value = serde_json::from_str(&trace_a).unwrap();
    assert_eq!(trace["otherData"]["clock"], "virtual");
    let events = trace["traceEvents"].as_array().unwrap();
    let tracks: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tracks, ["input", "layer1", "layer2"]);
    let count = |ph: &str| events.iter().filter(|e| e["ph"] == ph).count();
    assert!(count("s") > 10);
    assert_eq!(count("s"), count("f"));

    // The saved model encodes with `ign encode` into numpy files.
    let model = dir.join("a/model.npz");
    assert!(model.exists());
    let model = model.display().to_string();
    let output = ign(
        dir,
        &[
            "encode",
            "--model",
            &model,
            "--out",
            "codes",
            "--images",
            "10",
            "--no-progress",
        ],
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["test"]["images"], 10);
    assert_eq!(report["test"]["code_width"], 36);
    let npy = fs::read(dir.join("codes/test_codes.npy")).unwrap();
    assert_eq!(&npy[..6], b"\x93NUMPY");
}

#[test]
fn unstable_step_diverges_under_every_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = scenario(dir);
    ign(
        dir,
        &[
            "run",
            &file,
            "--no-progress",
            "--out",
            "d",
            "--set",
            "convergence.step_size=[5.0]",
            "--set",
            "relax.tolerance=0.01",
            "--set",
            "relax.max_steps=2000",
        ],
    );
    let result = summary(dir, "d");
    for schedule in result["convergence"].as_array().unwrap() {
        let name = &schedule["schedule"];
        assert_eq!(schedule["diverged"], schedule["runs"], "{name}");
        assert_eq!(schedule["median_updates"], Value::Null, "{name}");
    }
    let csv = fs::read_to_string(dir.join("d/convergence.csv")).unwrap();
    let outcomes: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(10).unwrap())
        .collect();
    assert!(outcomes.iter().all(|&o| o == "diverged"), "{outcomes:?}");
    assert_no_nan(dir, "d");
}
