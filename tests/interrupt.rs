//! Ctrl-C during training: the run stops between batches, writes
//! `summary.json` with the status `interrupted` and the figure, and exits 130.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn interrupted_run_saves_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ign"))
        .args([
            "run",
            "scenarios/mnist-quick.toml",
            "--no-progress",
            "--out",
        ])
        .arg(&out)
        .env("IGN_CACHE_DIR", dir.path().join("cache"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // Wait until training has started, then press Ctrl-C.
    for line in lines.by_ref() {
        if line.unwrap().contains("training with actors") {
            break;
        }
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {rest:?}");
    let last = rest.last().cloned().unwrap_or_default();
    assert!(last.starts_with("ign: interrupted"), "last line: {last}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "interrupted");
    assert!(summary["relaxations"].as_u64().unwrap() < 200);
    assert!(out.join("projective_fields.png").exists());
    assert!(out.join("training.csv").exists());
}
