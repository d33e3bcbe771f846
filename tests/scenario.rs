//! Claims about `ign::scenario`: defaults, overrides, and one test per kind
//! of bad scenario, each checking the variant, the key and the value it
//! carries, and that its message is one line.

use std::path::Path;

use ign::scenario::{EncodeSchedule, Scenario, ScenarioError};

const MINIMAL: &str = "[network]\nlayers = [784, 20, 10]\nalpha = [0.05]\n";

fn parse(text: &str, overrides: &[&str]) -> Result<Scenario, ScenarioError> {
    let overrides: Vec<String> = overrides.iter().map(|s| (*s).to_owned()).collect();
    Scenario::parse(Path::new("test.toml"), text, &overrides)
}

fn parse_err(text: &str, overrides: &[&str]) -> ScenarioError {
    match parse(text, overrides) {
        Ok(scenario) => panic!("parsing succeeded: {scenario:?}"),
        Err(error) => error,
    }
}

fn assert_one_line(error: &ScenarioError, parts: &[&str]) {
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message:?} is not one line");
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} does not mention {part:?}"
        );
    }
}

#[test]
fn minimal_scenario_gets_documented_defaults() {
    let scenario = parse(MINIMAL, &[]).unwrap();
    assert_eq!(scenario.seed, 1);
    assert_eq!(scenario.data.dir, Path::new("data/mnist"));
    assert_eq!(scenario.data.train_images, 20_000);
    assert_eq!(scenario.data.readout_images, 20_000);
    assert_eq!(scenario.data.test_images, 10_000);
    assert_eq!(scenario.relax.tolerance, 0.01);
    assert_eq!(scenario.relax.max_steps, 400);
    assert_eq!(scenario.relax.step_scale, 0.9);
    assert_eq!(scenario.relax.divergence_factor, 10_000.0);
    assert_eq!(scenario.relax.timeout_seconds, 120.0);
    assert_eq!(scenario.runtime.workers, 2);
    assert_eq!(scenario.train.batch_size, 100);
    assert_eq!(scenario.train.epochs, 1);
    assert_eq!(scenario.train.learning_rate, 8.0);
    assert_eq!(scenario.train.max_capped_fraction, 0.5);
    assert_eq!(scenario.encode.batch_size, 250);
    assert_eq!(scenario.encode.schedule, EncodeSchedule::Synchronous);
    assert_eq!(scenario.alpha_per_layer(), [0.05, 0.05]);
}

#[test]
fn shipped_scenario_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/mnist-quick.toml");
    let scenario = Scenario::load(&path, &[]).unwrap();
    assert_eq!(scenario.network.layers, [784, 400, 400]);
    assert_eq!(scenario.alpha_per_layer(), [0.05, 0.01]);
}

#[test]
fn overrides_replace_and_create_keys() {
    let scenario = parse(
        MINIMAL,
        &[
            "seed=7",
            "network.alpha=[0.1, 0.2]",
            "runtime.workers=3",
            "encode.schedule=actors",
            "data.dir=\"some dir\"",
        ],
    )
    .unwrap();
    assert_eq!(scenario.seed, 7);
    assert_eq!(scenario.alpha_per_layer(), [0.1, 0.2]);
    assert_eq!(scenario.runtime.workers, 3);
    // A bare word that is not TOML is read as a string.
    assert_eq!(scenario.encode.schedule, EncodeSchedule::Actors);
    assert_eq!(scenario.data.dir, Path::new("some dir"));
}

#[test]
fn later_override_wins() {
    let scenario = parse(MINIMAL, &["relax.max_steps=5", "relax.max_steps=9"]).unwrap();
    assert_eq!(scenario.relax.max_steps, 9);
}

#[test]
fn resolved_scenario_parses_back() {
    let mut scenario = parse(MINIMAL, &["seed=11", "relax.tolerance=0.005"]).unwrap();
    scenario.ign_version = Some("0.1.0".to_owned());
    let text = toml::to_string_pretty(&scenario).unwrap();
    let again = parse(&text, &[]).unwrap();
    assert_eq!(toml::to_string_pretty(&again).unwrap(), text);
    assert_eq!(again.seed, 11);
    assert_eq!(again.relax.tolerance, 0.005);
}

#[test]
fn syntax_error_names_line() {
    let error = parse_err("seed = 1\n\n[network]\nlayers = [784,\n  garbage\n", &[]);
    let ScenarioError::Syntax { ref path, line, .. } = error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(path, Path::new("test.toml"));
    assert_eq!(line, 5);
    assert_one_line(&error, &["test.toml: not valid TOML at line 5: "]);
}

#[test]
fn unknown_top_level_key_is_rejected() {
    let error = parse_err(&format!("bogus = 3\n{MINIMAL}"), &[]);
    let ScenarioError::Schema { ref key, .. } = error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(key, &None);
    assert_one_line(
        &error,
        &["test.toml: unknown field `bogus`, expected one of `ign_version`"],
    );
}

#[test]
fn unknown_section_key_names_section() {
    let error = parse_err(&format!("{MINIMAL}[relax]\nnope = 1\n"), &[]);
    let ScenarioError::Schema { ref key, .. } = error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(key.as_deref(), Some("relax"));
    assert_one_line(
        &error,
        &["test.toml: in `relax`: unknown field `nope`", "`tolerance`"],
    );
}

#[test]
fn unknown_key_in_every_section_is_rejected() {
    for section in [
        "data", "network", "relax", "runtime", "train", "encode", "readout",
    ] {
        let error = parse_err(MINIMAL, &[&format!("{section}.nope=1")]);
        let ScenarioError::Schema { ref key, .. } = error else {
            panic!("{section}: unexpected error {error:?}");
        };
        assert_eq!(key.as_deref(), Some(section));
        assert_one_line(&error, &["unknown field `nope`"]);
    }
}

// Regression test: schema errors used to drop the key, so
// `train.batch_size = -1` printed only "invalid value: integer `-1`,
// expected usize".
#[test]
fn wrong_type_names_dotted_key() {
    let error = parse_err(MINIMAL, &["train.batch_size=-1"]);
    let ScenarioError::Schema { ref key, .. } = error else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(key.as_deref(), Some("train.batch_size"));
    assert_one_line(
        &error,
        &[
            "test.toml with command-line overrides: in `train.batch_size`: ",
            "`-1`",
            "usize",
        ],
    );

    let error = parse_err(&MINIMAL.replace("[784, 20, 10]", "784"), &[]);
    assert_one_line(&error, &["in `network.layers`: ", "sequence"]);

    let error = parse_err(MINIMAL, &["encode.schedule=fast"]);
    assert_one_line(
        &error,
        &["in `encode.schedule`: ", "`fast`", "`synchronous`"],
    );
}

#[test]
fn missing_network_is_rejected() {
    let error = parse_err("seed = 1\n", &[]);
    assert!(matches!(error, ScenarioError::Schema { .. }), "{error:?}");
    assert_one_line(&error, &["test.toml: ", "missing field `network`"]);
}

#[test]
fn out_of_range_values_name_key_and_value() {
    // (override, key, value as printed)
    let cases = [
        ("network.layers=[784]", "network.layers", "[784]"),
        ("network.layers=[784, 0, 10]", "network.layers", "0"),
        ("network.alpha=[-0.5]", "network.alpha", "-0.5"),
        (
            "network.alpha=[0.1, 0.2, 0.3]",
            "network.alpha",
            "[0.1, 0.2, 0.3]",
        ),
        ("network.alpha=[inf]", "network.alpha", "inf"),
        ("relax.tolerance=0", "relax.tolerance", "0"),
        ("relax.tolerance=-0.01", "relax.tolerance", "-0.01"),
        ("relax.tolerance=nan", "relax.tolerance", "NaN"),
        ("relax.step_scale=0", "relax.step_scale", "0"),
        ("relax.step_scale=-1", "relax.step_scale", "-1"),
        ("relax.timeout_seconds=0", "relax.timeout_seconds", "0"),
        ("relax.divergence_factor=1", "relax.divergence_factor", "1"),
        ("relax.max_steps=0", "relax.max_steps", "0"),
        ("runtime.workers=0", "runtime.workers", "0"),
        ("train.batch_size=0", "train.batch_size", "0"),
        ("train.learning_rate=-1", "train.learning_rate", "-1"),
        (
            "train.rate_decay_batches=0",
            "train.rate_decay_batches",
            "0",
        ),
        (
            "train.max_capped_fraction=1.5",
            "train.max_capped_fraction",
            "1.5",
        ),
        (
            "train.max_capped_fraction=-0.1",
            "train.max_capped_fraction",
            "-0.1",
        ),
        ("data.train_images=0", "data.train_images", "0"),
        ("data.readout_images=0", "data.readout_images", "0"),
        ("data.test_images=0", "data.test_images", "0"),
        ("encode.batch_size=0", "encode.batch_size", "0"),
        ("readout.epochs=0", "readout.epochs", "0"),
        ("readout.batch_size=0", "readout.batch_size", "0"),
        ("readout.learning_rate=0", "readout.learning_rate", "0"),
        ("readout.l2=-1", "readout.l2", "-1"),
    ];
    for (set, expected_key, expected_value) in cases {
        let error = parse_err(MINIMAL, &[set]);
        let ScenarioError::OutOfRange {
            ref key, ref value, ..
        } = error
        else {
            panic!("{set}: unexpected error {error:?}");
        };
        assert_eq!(key, expected_key, "{set}");
        assert_eq!(value, expected_value, "{set}");
        let prefix = format!(
            "test.toml with command-line overrides: invalid value {expected_value} for key `{expected_key}`: "
        );
        assert_one_line(&error, &[&prefix]);
    }
}

#[test]
fn boundary_values_are_accepted() {
    let scenario = parse(
        MINIMAL,
        &[
            "network.alpha=[0]",
            "train.learning_rate=0",
            "train.max_capped_fraction=0",
            "readout.l2=0",
            "relax.max_steps=1",
        ],
    )
    .unwrap();
    assert_eq!(scenario.train.max_capped_fraction, 0.0);
    let scenario = parse(MINIMAL, &["train.max_capped_fraction=1"]).unwrap();
    assert_eq!(scenario.train.max_capped_fraction, 1.0);
}

#[test]
fn malformed_overrides_are_rejected() {
    // (override, reason)
    let cases = [
        ("foo", "expected KEY=VALUE"),
        ("=3", "empty key part"),
        ("relax..tolerance=1", "empty key part"),
        ("seed.x=1", "`seed` is not a section"),
    ];
    let text = format!("seed = 1\n{MINIMAL}");
    for (set, expected_reason) in cases {
        let error = parse_err(&text, &[set]);
        let ScenarioError::Override {
            ref text,
            ref reason,
        } = error
        else {
            panic!("{set}: unexpected error {error:?}");
        };
        assert_eq!(text, set);
        assert_eq!(reason, expected_reason, "{set}");
        assert_one_line(
            &error,
            &[&format!("invalid override `{set}`: {expected_reason}")],
        );
    }
}

#[test]
fn missing_file_names_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let error = Scenario::load(&path, &[]).unwrap_err();
    let ScenarioError::Read {
        path: ref named, ..
    } = error
    else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(named, &path);
    assert_one_line(
        &error,
        &[&format!("cannot read scenario {}: ", path.display())],
    );
}

#[test]
fn load_applies_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let scenario = Scenario::load(&path, &["seed=5".to_owned()]).unwrap();
    assert_eq!(scenario.seed, 5);

    let error = Scenario::load(&path, &["relax.step_scale=0".to_owned()]).unwrap_err();
    assert_one_line(
        &error,
        &[&format!(
            "{} with command-line overrides: invalid value 0",
            path.display()
        )],
    );
}

#[test]
fn alpha_as_single_number_applies_to_all() {
    let text = "[network]\nlayers = [784, 400, 400]\nalpha = 0.05\n";
    let scenario = Scenario::parse(Path::new("a.toml"), text, &[]).unwrap();
    assert_eq!(scenario.alpha_per_layer(), vec![0.05, 0.05]);
}

#[test]
fn readout_rate_beyond_f32_is_rejected() {
    let text = "[network]\nlayers = [784, 10]\nalpha = [0.1]\n[readout]\nlearning_rate = 1e39\n";
    let error = Scenario::parse(Path::new("r.toml"), text, &[])
        .unwrap_err()
        .to_string();
    assert!(error.contains("`readout.learning_rate`"), "{error}");
    assert!(
        error.contains("1000000000000000000000000000000000000000"),
        "{error}"
    );
}

#[test]
fn readout_defaults_are_exact_in_resolved_file() {
    let text = "[network]\nlayers = [784, 10]\nalpha = [0.1]\n";
    let scenario = Scenario::parse(Path::new("d.toml"), text, &[]).unwrap();
    let resolved = toml::to_string(&scenario).unwrap();
    assert!(resolved.contains("learning_rate = 0.001\n"), "{resolved}");
    assert!(resolved.contains("l2 = 0.0001\n"), "{resolved}");
}
