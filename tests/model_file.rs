//! Claims about model files (`ign::store`) and the encode job
//! (`ign::encode`). A saved model loads bit for bit, and a save replaces the
//! file whole or not at all. Every corrupt file is a typed error naming the
//! file and the member. The encoded codes are exactly the synchronous
//! solver's fixed points, in files that numpy reads.
//!
//! Encode tests use a synthetic MNIST-format release of 40 train and 20 test
//! images of 28x28 random pixels, written into a temporary directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use ndarray::{Array1, Array2, ArrayView2, Axis, concatenate, s};
use ndarray_npy::{NpzReader, NpzWriter, read_npy};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tempfile::TempDir;

use ign::data::load_splits;
use ign::encode::{EncodeOptions, encode};
use ign::error::Error;
use ign::experiment::unit_rows;
use ign::model::{Network, WeightInit, random_network};
use ign::scenario::Scenario;
use ign::solver::Solver;
use ign::store::{StoreError, load_model, save_model};

const DASHED: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];
const TRAIN_IMAGES: usize = 40;
const TEST_IMAGES: usize = 20;
const PIXELS: usize = 28 * 28;

/// A scenario for a network of 6 inputs and layers of 4 and 3 units.
const SMALL_SCENARIO: &str = r#"seed = 3

[network]
layers = [6, 4, 3]
alpha = [0.05, 0.1]
"#;

// ---------------------------------------------------------------------------
// Helpers

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

/// Quotes a path as a TOML string.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

fn small_scenario() -> Scenario {
    Scenario::parse(Path::new("small.toml"), SMALL_SCENARIO, &[]).unwrap()
}

fn small_network(scenario: &Scenario) -> Network<f32> {
    random_network(
        &scenario.network.layers,
        &scenario.alpha_per_layer(),
        WeightInit::Gaussian,
        scenario.seed,
    )
}

/// Returns the names of the entries of a directory, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn bits(w: &Array2<f32>) -> Vec<u32> {
    w.iter().map(|v| v.to_bits()).collect()
}

/// The members of a model file, to be written with some of them changed.
struct Members {
    format: Array1<u32>,
    scenario: Vec<u8>,
    weights: Vec<Array2<f32>>,
    alpha: Array1<f32>,
}

impl Members {
    /// Returns the members of a valid file for [`SMALL_SCENARIO`].
    fn valid() -> Members {
        let scenario = small_scenario();
        let network = small_network(&scenario);
        Members {
            format: Array1::from(vec![1]),
            scenario: SMALL_SCENARIO.as_bytes().to_vec(),
            weights: network.weights,
            alpha: Array1::from(network.alpha),
        }
    }

    fn write(&self, path: &Path) {
        let mut npz = NpzWriter::new(File::create(path).unwrap());
        npz.add_array("format", &self.format).unwrap();
        npz.add_array("scenario", &Array1::from(self.scenario.clone()))
            .unwrap();
        for (i, w) in self.weights.iter().enumerate() {
            npz.add_array(format!("W{}", i + 1), w).unwrap();
        }
        npz.add_array("alpha", &self.alpha).unwrap();
        npz.finish().unwrap();
    }
}

/// Loads `path`, expecting an error, and checks that its message names the
/// file and every part.
fn load_error(path: &Path, parts: &[&str]) -> StoreError {
    let error = load_model(path).expect_err("a corrupt model file loaded");
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "{message:?} does not name {}",
        path.display()
    );
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} does not mention {part:?}"
        );
    }
    assert_eq!(message.lines().count(), 1, "{message:?} is not one line");
    error
}

// ---------------------------------------------------------------------------
// Round trip and atomic saves

#[test]
fn round_trip_is_bit_identical() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let scenario = small_scenario();
    let network = small_network(&scenario);
    save_model(&path, &network, &scenario).unwrap();

    let model = load_model(&path).unwrap();
    assert_eq!(model.network.weights.len(), 2);
    for (loaded, saved) in model.network.weights.iter().zip(&network.weights) {
        assert_eq!(loaded.dim(), saved.dim());
        assert_eq!(bits(loaded), bits(saved));
    }
    let alpha_bits: Vec<u32> = model.network.alpha.iter().map(|a| a.to_bits()).collect();
    assert_eq!(alpha_bits, vec![0.05f32.to_bits(), 0.1f32.to_bits()]);
    assert_eq!(model.scenario.network.layers, vec![6, 4, 3]);
    assert_eq!(model.scenario.seed, 3);

    let mut npz = NpzReader::new(File::open(&path).unwrap()).unwrap();
    let mut names = npz.names().unwrap();
    names.sort();
    assert_eq!(names, ["W1", "W2", "alpha", "format", "scenario"]);
    let format: Array1<u32> = npz.by_name("format").unwrap();
    assert_eq!(format.to_vec(), vec![1]);
    let stored: Array1<u8> = npz.by_name("scenario").unwrap();
    assert_eq!(
        String::from_utf8(stored.to_vec()).unwrap(),
        model.scenario_text
    );
    let version = format!("ign_version = \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        model.scenario_text.contains(&version),
        "{}",
        model.scenario_text
    );
}

#[test]
fn resaving_a_loaded_model_keeps_its_text() {
    let dir = TempDir::new().unwrap();
    let first = dir.path().join("first.npz");
    let second = dir.path().join("second.npz");
    let scenario = small_scenario();
    save_model(&first, &small_network(&scenario), &scenario).unwrap();
    let model = load_model(&first).unwrap();
    save_model(&second, &model.network, &model.scenario).unwrap();
    assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
}

#[test]
fn save_leaves_no_temporary_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let scenario = small_scenario();
    save_model(&path, &small_network(&scenario), &scenario).unwrap();
    save_model(&path, &small_network(&scenario), &scenario).unwrap();
    assert_eq!(entries(dir.path()), ["model.npz"]);
}

#[test]
fn invalid_network_keeps_old_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let scenario = small_scenario();
    let network = small_network(&scenario);
    save_model(&path, &network, &scenario).unwrap();
    let before = fs::read(&path).unwrap();

    let mut broken = network.clone();
    broken.weights[1][[2, 1]] = f32::NAN;
    let error = save_model(&path, &broken, &scenario).unwrap_err();
    assert!(
        matches!(
            &error,
            StoreError::NonFinite { member, row: 2, column: 1, .. } if member == "W2"
        ),
        "{error:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(entries(dir.path()), ["model.npz"]);
}

#[test]
fn save_onto_directory_fails_cleanly() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    fs::create_dir(&path).unwrap();
    let scenario = small_scenario();
    let error = save_model(&path, &small_network(&scenario), &scenario).unwrap_err();
    assert!(matches!(error, StoreError::Write { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert!(path.is_dir());
    assert_eq!(entries(dir.path()), ["model.npz"]);
}

#[test]
fn save_into_read_only_directory_keeps_old_file() {
    let dir = TempDir::new().unwrap();
    let models = dir.path().join("models");
    fs::create_dir(&models).unwrap();
    let path = models.join("model.npz");
    let scenario = small_scenario();
    save_model(&path, &small_network(&scenario), &scenario).unwrap();
    let before = fs::read(&path).unwrap();

    let mut permissions = fs::metadata(&models).unwrap().permissions();
    permissions.set_readonly(true);
    fs::set_permissions(&models, permissions.clone()).unwrap();
    // A superuser writes into read-only directories, so the failure cannot
    // be provoked this way.
    let probe = models.join("probe");
    let writable = File::create(&probe).is_ok();
    let _ = fs::remove_file(&probe);
    let result = if writable {
        None
    } else {
        let mut other = small_network(&scenario);
        other.weights[0].mapv_inplace(|v| -v);
        Some(save_model(&path, &other, &scenario))
    };
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    fs::set_permissions(&models, permissions).unwrap();

    match result {
        None => println!("note: the directory stayed writable (running as root?); skipped"),
        Some(result) => {
            let error = result.unwrap_err();
            assert!(matches!(error, StoreError::Write { .. }), "{error:?}");
            assert_eq!(fs::read(&path).unwrap(), before);
            assert_eq!(entries(&models), ["model.npz"]);
        }
    }
}

#[test]
fn network_disagreeing_with_scenario_is_not_saved() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let scenario = small_scenario();
    let mut network = small_network(&scenario);
    network.alpha.pop();
    let error = save_model(&path, &network, &scenario).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::AlphaCount {
                found: 1,
                expected: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!path.exists());
    assert_eq!(entries(dir.path()), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Corrupt files

#[test]
fn missing_file_is_not_found() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("absent.npz");
    let error = load_error(&path, &["not found"]);
    assert!(matches!(error, StoreError::NotFound { .. }), "{error:?}");
}

#[test]
fn zero_length_file_is_not_npz() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("empty.npz");
    fs::write(&path, b"").unwrap();
    let error = load_error(&path, &["not an npz archive"]);
    assert!(matches!(error, StoreError::NotNpz { .. }), "{error:?}");
}

#[test]
fn random_bytes_are_not_npz() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("random.npz");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let bytes: Vec<u8> = (0..4096).map(|_| rng.random::<u8>()).collect();
    fs::write(&path, bytes).unwrap();
    let error = load_error(&path, &["not an npz archive"]);
    assert!(matches!(error, StoreError::NotNpz { .. }), "{error:?}");
}

#[test]
fn directory_is_a_read_error() {
    let dir = TempDir::new().unwrap();
    let error = load_error(dir.path(), &["directory"]);
    assert!(matches!(error, StoreError::Read { .. }), "{error:?}");
}

#[test]
fn truncated_archive_is_rejected() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    Members::valid().write(&path);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let error = load_error(&path, &[]);
    assert!(matches!(error, StoreError::NotNpz { .. }), "{error:?}");
}

#[test]
fn missing_member_is_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let mut npz = NpzWriter::new(File::create(&path).unwrap());
    let members = Members::valid();
    npz.add_array("format", &members.format).unwrap();
    npz.add_array("scenario", &Array1::from(members.scenario.clone()))
        .unwrap();
    npz.add_array("W1", &members.weights[0]).unwrap();
    npz.add_array("alpha", &members.alpha).unwrap();
    npz.finish().unwrap();
    let error = load_error(&path, &["member `W2` is missing"]);
    assert!(
        matches!(&error, StoreError::MissingMember { member, .. } if member == "W2"),
        "{error:?}"
    );
}

#[test]
fn shapes_that_do_not_chain_are_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let mut members = Members::valid();
    members.weights[1] = Array2::from_elem((3, 3), 0.5);
    members.write(&path);
    let error = load_error(
        &path,
        &["member `W2` has 3 rows, but `W1` is 6x4, so `W2` needs 4 rows"],
    );
    assert!(
        matches!(
            error,
            StoreError::ShapesDoNotChain {
                rows: 3,
                below_cols: 4,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn shapes_disagreeing_with_scenario_are_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let mut members = Members::valid();
    members.weights = vec![
        Array2::from_elem((6, 5), 0.5),
        Array2::from_elem((5, 3), 0.5),
    ];
    members.write(&path);
    let error = load_error(
        &path,
        &[
            "member `W1` is 6x5",
            "network.layers = [6, 4, 3]",
            "requires 6x4",
        ],
    );
    assert!(
        matches!(&error, StoreError::ScenarioMismatch { member, expected: (6, 4), .. } if member == "W1"),
        "{error:?}"
    );
}

#[test]
fn extra_weight_matrix_is_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let mut members = Members::valid();
    members.weights.push(Array2::from_elem((3, 2), 0.5));
    members.write(&path);
    let error = load_error(&path, &["member `W3`", "[6, 4, 3]"]);
    assert!(
        matches!(&error, StoreError::ExtraLayer { member, .. } if member == "W3"),
        "{error:?}"
    );
}

#[test]
fn nan_weight_is_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let mut members = Members::valid();
    members.weights[0][[5, 2]] = f32::NAN;
    members.write(&path);
    let error = load_error(&path, &["member `W1` contains NaN at row 5, column 2"]);
    assert!(
        matches!(
            error,
            StoreError::NonFinite {
                row: 5,
                column: 2,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn infinite_alpha_is_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let mut members = Members::valid();
    members.alpha[1] = f32::INFINITY;
    members.write(&path);
    let error = load_error(&path, &["member `alpha` contains inf for layer 2"]);
    assert!(
        matches!(error, StoreError::InvalidAlpha { layer: 2, .. }),
        "{error:?}"
    );
}

#[test]
fn alpha_count_mismatch_is_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let mut members = Members::valid();
    members.alpha = Array1::from(vec![0.05, 0.05, 0.05]);
    members.write(&path);
    let error = load_error(&path, &["member `alpha` has 3 values", "2 layers"]);
    assert!(
        matches!(
            error,
            StoreError::AlphaCount {
                found: 3,
                expected: 2,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn bad_scenario_text_gives_scenario_message() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let mut members = Members::valid();
    members.scenario = b"seed = 1\n[network]\nlayers = [6, 4,\n".to_vec();
    members.write(&path);
    let error = load_error(&path, &["member `scenario`", "not valid TOML at line"]);
    assert!(
        matches!(error, StoreError::ScenarioText { .. }),
        "{error:?}"
    );

    members.scenario = b"[network]\nlayers = [6]\nalpha = 0.1\n".to_vec();
    members.write(&path);
    load_error(&path, &["member `scenario`", "network.layers"]);

    members.scenario = vec![0xff, 0xfe, b'a'];
    members.write(&path);
    load_error(&path, &["member `scenario`", "not UTF-8"]);
}

#[test]
fn unknown_format_version_is_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let mut members = Members::valid();
    members.format = Array1::from(vec![2]);
    members.write(&path);
    let error = load_error(&path, &["member `format` is [2]", "format [1]"]);
    assert!(
        matches!(error, StoreError::UnknownFormat { .. }),
        "{error:?}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let members = Members::valid();
    let mut npz = NpzWriter::new(File::create(&path).unwrap());
    npz.add_array("format", &members.format).unwrap();
    npz.add_array("scenario", &Array1::from(members.scenario.clone()))
        .unwrap();
    npz.add_array("W1", &members.weights[0].mapv(f64::from))
        .unwrap();
    npz.add_array("W2", &members.weights[1]).unwrap();
    npz.add_array("alpha", &members.alpha).unwrap();
    npz.finish().unwrap();
    let error = load_error(&path, &["member `W1` has dtype '<f8', expected float32"]);
    assert!(
        matches!(&error, StoreError::WrongDtype { member, .. } if member == "W1"),
        "{error:?}"
    );
}

#[test]
fn one_dimensional_weights_are_wrong_shape() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let members = Members::valid();
    let mut npz = NpzWriter::new(File::create(&path).unwrap());
    npz.add_array("format", &members.format).unwrap();
    npz.add_array("scenario", &Array1::from(members.scenario.clone()))
        .unwrap();
    npz.add_array("W1", &Array1::<f32>::zeros(24)).unwrap();
    npz.finish().unwrap();
    let error = load_error(&path, &["member `W1` has shape [24], expected 2-D"]);
    assert!(matches!(error, StoreError::WrongShape { .. }), "{error:?}");
}

/// Writes a model file whose `W1` member is the raw bytes `w1`.
fn write_with_raw_w1(path: &Path, w1: &[u8]) {
    let members = Members::valid();
    let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut add = |name: &str, bytes: &[u8]| {
        zip.start_file(name, options).unwrap();
        zip.write_all(bytes).unwrap();
    };
    let mut format = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&members.format, &mut format).unwrap();
    let mut scenario = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&Array1::from(members.scenario.clone()), &mut scenario)
        .unwrap();
    add("format.npy", &format);
    add("scenario.npy", &scenario);
    add("W1.npy", w1);
    zip.finish().unwrap();
}

#[test]
fn huge_declared_shape_is_rejected_before_allocating() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let padded = format!("{header:<117}\n");
    npy.extend((padded.len() as u16).to_le_bytes());
    npy.extend(padded.as_bytes());
    npy.extend([0u8; 16]);
    write_with_raw_w1(&path, &npy);
    let error = load_error(
        &path,
        &[
            "member `W1`",
            "shape [100000, 100000]",
            "needs 40000000000 data bytes",
            "contains 16",
        ],
    );
    assert!(
        matches!(error, StoreError::InvalidMember { .. }),
        "{error:?}"
    );
}

#[test]
fn garbage_member_is_invalid() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.npz");
    write_with_raw_w1(&path, b"not an npy file at all");
    let error = load_error(&path, &["member `W1` is not a valid .npy array"]);
    assert!(
        matches!(error, StoreError::InvalidMember { .. }),
        "{error:?}"
    );
}

/// Every truncation and many random byte changes of a valid file load to an
/// error or (for changes in bytes the zip format does not check) a model,
/// never a panic.
#[test]
fn mutated_files_never_panic() {
    let dir = TempDir::new().unwrap();
    let good = dir.path().join("good.npz");
    let scenario = small_scenario();
    save_model(&good, &small_network(&scenario), &scenario).unwrap();
    let bytes = fs::read(&good).unwrap();
    let path = dir.path().join("mutated.npz");

    let mut loaded = 0;
    for len in 0..bytes.len() {
        fs::write(&path, &bytes[..len]).unwrap();
        if load_model(&path).is_ok() {
            loaded += 1;
        }
    }
    assert_eq!(loaded, 0, "a truncated file loaded");

    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..2000 {
        let mut mutated = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..mutated.len());
            mutated[at] = rng.random::<u8>();
        }
        fs::write(&path, &mutated).unwrap();
        let _ = load_model(&path);
    }
}

// ---------------------------------------------------------------------------
// The encode job

/// A sandbox holding the synthetic release in `data/`, its cache in
/// `cache/` and a model saved in `model.npz`.
struct EncodeSandbox {
    dir: TempDir,
    network: Network<f32>,
    scenario: Scenario,
}

impl EncodeSandbox {
    /// Saves a random network for `layers`, with `extra` TOML lines appended
    /// to the scenario.
    fn new(layers: &str, extra: &str) -> EncodeSandbox {
        let dir = TempDir::new().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        for (name, bytes) in DASHED.iter().zip(release(TRAIN_IMAGES, TEST_IMAGES)) {
            fs::write(data.join(name), bytes).unwrap();
        }
        let text = format!(
            "seed = 1\n\n[data]\ndir = {}\ncache_dir = {}\n{extra}\n\n[network]\nlayers = \
             {layers}\nalpha = [0.05]\n\n[relax]\nmax_steps = 200\n\n[encode]\nbatch_size = 15\n",
            toml_path(&data),
            toml_path(&dir.path().join("cache")),
        );
        let scenario = Scenario::parse(Path::new("encode.toml"), &text, &[]).unwrap();
        let network = random_network(
            &scenario.network.layers,
            &scenario.alpha_per_layer(),
            WeightInit::Gaussian,
            1,
        );
        save_model(&dir.path().join("model.npz"), &network, &scenario).unwrap();
        EncodeSandbox {
            dir,
            network,
            scenario,
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn options(&self, images: Option<usize>) -> EncodeOptions {
        EncodeOptions {
            model: self.path("model.npz"),
            data: None,
            out: self.path("out"),
            images,
            progress: false,
        }
    }
}

/// Relaxes `images` in batches of `batch` with a fresh solver, as the
/// encode job must, and returns the codes.
fn solver_codes(sandbox: &EncodeSandbox, images: &Array2<f32>, batch: usize) -> Array2<f32> {
    let mut solver = Solver::new(&sandbox.network, sandbox.scenario.relax.config());
    let mut parts = Vec::new();
    for start in (0..images.nrows()).step_by(batch) {
        let end = (start + batch).min(images.nrows());
        let x0 = unit_rows(&images.slice(s![start..end, ..]).to_owned());
        solver.relax(x0.view());
        let states: Vec<ArrayView2<f32>> = solver.layers.iter().map(|l| l.x.view()).collect();
        parts.push(concatenate(Axis(1), &states).unwrap());
    }
    let views: Vec<ArrayView2<f32>> = parts.iter().map(|p| p.view()).collect();
    concatenate(Axis(0), &views).unwrap()
}

#[test]
fn encode_writes_solver_codes() {
    let sandbox = EncodeSandbox::new("[784, 20, 10]", "");
    let summary = encode(&sandbox.options(None), &AtomicBool::new(false)).unwrap();
    let out = sandbox.path("out");
    assert_eq!(
        entries(&out),
        [
            "W1.npy",
            "W2.npy",
            "encode.json",
            "test_codes.npy",
            "test_labels.npy",
            "train_codes.npy",
            "train_labels.npy",
        ]
    );

    let splits = load_splits(&sandbox.path("data"), &sandbox.path("cache")).unwrap();
    let train_codes: Array2<f32> = read_npy(out.join("train_codes.npy")).unwrap();
    let test_codes: Array2<f32> = read_npy(out.join("test_codes.npy")).unwrap();
    assert_eq!(train_codes.dim(), (40, 30));
    assert_eq!(test_codes.dim(), (20, 30));
    for codes in [&train_codes, &test_codes] {
        assert!(codes.iter().all(|v| v.is_finite()), "a code is not finite");
        assert!(codes.iter().all(|&v| v >= 0.0), "a code is negative");
        assert!(codes.iter().any(|&v| v > 0.0), "every code is zero");
    }
    assert_eq!(
        train_codes,
        solver_codes(&sandbox, &splits.train.images, 15)
    );
    assert_eq!(test_codes, solver_codes(&sandbox, &splits.test.images, 15));

    let train_labels: Array1<u8> = read_npy(out.join("train_labels.npy")).unwrap();
    let test_labels: Array1<u8> = read_npy(out.join("test_labels.npy")).unwrap();
    assert_eq!(
        train_labels.to_vec(),
        labels_idx(TRAIN_IMAGES, 2)[8..].to_vec()
    );
    assert_eq!(
        test_labels.to_vec(),
        labels_idx(TEST_IMAGES, 4)[8..].to_vec()
    );

    let w1: Array2<f32> = read_npy(out.join("W1.npy")).unwrap();
    let w2: Array2<f32> = read_npy(out.join("W2.npy")).unwrap();
    assert_eq!(bits(&w1), bits(&sandbox.network.weights[0]));
    assert_eq!(bits(&w2), bits(&sandbox.network.weights[1]));
    assert_eq!(w1.dim(), (784, 20));
    assert_eq!(w2.dim(), (20, 10));

    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("encode.json")).unwrap()).unwrap();
    assert_eq!(json["train"]["images"], 40);
    assert_eq!(json["test"]["images"], 20);
    assert_eq!(json["train"]["code_width"], 30);
    assert_eq!(json["layers"], serde_json::json!([784, 20, 10]));
    assert_eq!(summary.train.images, 40);
    assert!(summary.train.max_residual.is_finite());
}

#[test]
fn encode_codes_open_in_numpy() {
    if !Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("note: python3 with numpy is not available; skipped");
        return;
    }
    let sandbox = EncodeSandbox::new("[784, 20, 10]", "");
    encode(&sandbox.options(None), &AtomicBool::new(false)).unwrap();
    let script = r#"
import json, sys
import numpy as np
out, model = sys.argv[1], sys.argv[2]
m = np.load(model)
codes = np.load(out + "/train_codes.npy")
print(json.dumps({
    "members": sorted(m.files),
    "W1": [list(m["W1"].shape), str(m["W1"].dtype)],
    "alpha": m["alpha"].tolist(),
    "format": m["format"].tolist(),
    "scenario_starts": bytes(m["scenario"]).decode()[:8],
    "train_codes": [list(codes.shape), str(codes.dtype)],
    "train_labels": [list(np.load(out + "/train_labels.npy").shape),
                     str(np.load(out + "/train_labels.npy").dtype)],
    "test_codes": list(np.load(out + "/test_codes.npy").shape),
    "weights_agree": bool(np.array_equal(m["W2"], np.load(out + "/W2.npy"))),
    "codes_sum": float(codes.astype(np.float64).sum()),
}))
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(sandbox.path("out"))
        .arg(sandbox.path("model.npz"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        json["members"],
        serde_json::json!(["W1", "W2", "alpha", "format", "scenario"])
    );
    assert_eq!(json["W1"], serde_json::json!([[784, 20], "float32"]));
    assert_eq!(
        json["alpha"],
        serde_json::json!([0.05000000074505806, 0.05000000074505806])
    );
    assert_eq!(json["format"], serde_json::json!([1]));
    assert_eq!(json["scenario_starts"], "ign_vers");
    assert_eq!(
        json["train_codes"],
        serde_json::json!([[40, 30], "float32"])
    );
    assert_eq!(json["train_labels"], serde_json::json!([[40], "uint8"]));
    assert_eq!(json["test_codes"], serde_json::json!([20, 30]));
    assert_eq!(json["weights_agree"], true);
    let codes: Array2<f32> = read_npy(sandbox.path("out/train_codes.npy")).unwrap();
    let sum: f64 = codes.iter().map(|&v| f64::from(v)).sum();
    let numpy_sum = json["codes_sum"].as_f64().unwrap();
    assert!(
        (numpy_sum - sum).abs() <= 1e-9 * sum.abs(),
        "{numpy_sum} != {sum}"
    );
}

#[test]
fn encode_limits_images_per_split() {
    let sandbox = EncodeSandbox::new("[784, 20, 10]", "");
    let summary = encode(&sandbox.options(Some(7)), &AtomicBool::new(false)).unwrap();
    let train: Array2<f32> = read_npy(sandbox.path("out/train_codes.npy")).unwrap();
    let test: Array2<f32> = read_npy(sandbox.path("out/test_codes.npy")).unwrap();
    let labels: Array1<u8> = read_npy(sandbox.path("out/test_labels.npy")).unwrap();
    assert_eq!(train.dim(), (7, 30));
    assert_eq!(test.dim(), (7, 30));
    assert_eq!(labels.len(), 7);
    assert_eq!(summary.train.images, 7);
    assert_eq!(summary.test.images, 7);
}

#[test]
fn encode_applies_downsample() {
    let sandbox = EncodeSandbox::new("[64, 8, 4]", "downsample = 8");
    encode(&sandbox.options(None), &AtomicBool::new(false)).unwrap();
    let codes: Array2<f32> = read_npy(sandbox.path("out/train_codes.npy")).unwrap();
    assert_eq!(codes.dim(), (40, 12));
    let splits = load_splits(&sandbox.path("data"), &sandbox.path("cache")).unwrap();
    let small = splits.train.downsample(8).unwrap();
    assert_eq!(codes, solver_codes(&sandbox, &small.images, 15));
}

#[test]
fn encode_rejects_input_size_mismatch() {
    let sandbox = EncodeSandbox::new("[64, 8, 4]", "");
    let error = encode(&sandbox.options(None), &AtomicBool::new(false)).unwrap_err();
    assert_eq!(error.exit_code(), 2);
    let message = error.to_string();
    assert!(message.contains("64 inputs"), "{message}");
    assert!(message.contains("784 pixels"), "{message}");
    assert!(!sandbox.path("out").exists());
}

#[test]
fn encode_rejects_uncreatable_out_dir() {
    let sandbox = EncodeSandbox::new("[784, 20, 10]", "");
    fs::write(sandbox.path("file"), b"").unwrap();
    let mut options = sandbox.options(None);
    options.out = sandbox.path("file/out");
    let error = encode(&options, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(error, Error::OutputDir { .. }), "{error:?}");
    assert_eq!(error.exit_code(), 2);
    assert!(
        error
            .to_string()
            .contains(&options.out.display().to_string()),
        "{error}"
    );
}

#[test]
fn encode_missing_model_is_bad_input() {
    let sandbox = EncodeSandbox::new("[784, 20, 10]", "");
    let mut options = sandbox.options(None);
    options.model = sandbox.path("absent.npz");
    let error = encode(&options, &AtomicBool::new(false)).unwrap_err();
    assert!(
        matches!(error, Error::Store(StoreError::NotFound { .. })),
        "{error:?}"
    );
    assert_eq!(error.exit_code(), 2);
}

#[test]
fn encode_rejects_zero_images() {
    let sandbox = EncodeSandbox::new("[784, 20, 10]", "");
    let error = encode(&sandbox.options(Some(0)), &AtomicBool::new(false)).unwrap_err();
    assert_eq!(error.exit_code(), 2);
    assert!(error.to_string().contains("--images is 0"), "{error}");
}

#[test]
fn interrupted_encode_writes_nothing() {
    let sandbox = EncodeSandbox::new("[784, 20, 10]", "");
    let error = encode(&sandbox.options(None), &AtomicBool::new(true)).unwrap_err();
    assert!(matches!(error, Error::InterruptedBeforeOutput), "{error:?}");
    assert_eq!(error.exit_code(), 130);
    assert_eq!(entries(&sandbox.path("out")), Vec::<String>::new());
}

#[test]
fn diverged_encode_names_image_and_writes_nothing() {
    let sandbox = EncodeSandbox::new("[784, 20, 10]", "");
    // A step 20 times the stability bound makes the relaxation diverge.
    let mut scenario = sandbox.scenario.clone();
    scenario.relax.step_scale = 20.0;
    save_model(&sandbox.path("model.npz"), &sandbox.network, &scenario).unwrap();
    let error = encode(&sandbox.options(None), &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(error, Error::Failed(_)), "{error:?}");
    assert_eq!(error.exit_code(), 1);
    let message = error.to_string();
    assert!(
        message.contains("encoding diverged at train image "),
        "{message}"
    );
    assert_eq!(entries(&sandbox.path("out")), Vec::<String>::new());
}
