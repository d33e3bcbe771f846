//! Tests of the softmax-regression readout: fitting, prediction, determinism
//! and input validation.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use ign::readout::{ReadoutConfig, ReadoutError, SoftmaxReadout};
use ndarray::{Array1, Array2, array};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Draws `per_class` points around each centre with standard deviation
/// `spread`, labelled by the centre's index.
fn gaussian_blobs(
    centres: &[[f32; 2]],
    per_class: usize,
    spread: f32,
    seed: u64,
) -> (Array2<f32>, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::new(0.0_f32, spread).expect("spread is a valid standard deviation");
    let rows = centres.len() * per_class;
    let mut features = Array2::zeros((rows, 2));
    let mut labels = Vec::with_capacity(rows);
    for (class, centre) in centres.iter().enumerate() {
        for i in 0..per_class {
            let row = class * per_class + i;
            features[[row, 0]] = centre[0] + noise.sample(&mut rng);
            features[[row, 1]] = centre[1] + noise.sample(&mut rng);
            labels.push(class as u8);
        }
    }
    (features, labels)
}

const SEPARATED_CENTRES: [[f32; 2]; 3] = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]];

#[test]
fn separable_blobs_have_zero_training_error() {
    let (features, labels) = gaussian_blobs(&SEPARATED_CENTRES, 50, 0.5, 1);
    let readout = SoftmaxReadout::fit(features.view(), &labels, 3, &ReadoutConfig::default())
        .expect("valid input");

    assert_eq!(readout.error_rate(features.view(), &labels), 0.0);
    assert_eq!(readout.feature_count(), 2);
    assert_eq!(readout.class_count(), 3);
}

#[test]
fn separable_blobs_generalise_to_fresh_samples() {
    let (train, train_labels) = gaussian_blobs(&SEPARATED_CENTRES, 50, 0.5, 1);
    let (test, test_labels) = gaussian_blobs(&SEPARATED_CENTRES, 50, 0.5, 2);
    let readout = SoftmaxReadout::fit(train.view(), &train_labels, 3, &ReadoutConfig::default())
        .expect("valid input");

    assert_eq!(readout.error_rate(test.view(), &test_labels), 0.0);
    let centres = array![[0.0_f32, 0.0], [10.0, 0.0], [0.0, 10.0]];
    assert_eq!(readout.predict(centres.view()), vec![0, 1, 2]);
}

#[test]
fn predict_picks_argmax_of_logits() {
    // logits = ((x − 1) / 2)·W + b with W the 2 × 3 matrix below.
    let weights = array![[1.0_f32, 0.0, 0.0], [0.0, 1.0, 0.0]];
    let bias = array![0.0_f32, 0.0, 0.5];
    let readout = SoftmaxReadout::from_parameters(
        weights,
        bias,
        Array1::from_elem(2, 1.0),
        Array1::from_elem(2, 2.0),
    )
    .expect("consistent parameters");

    let features = array![
        [5.0_f32, 1.0], // logits (2, 0, 0.5)
        [1.0, 7.0],     // logits (0, 3, 0.5)
        [1.0, 1.0],     // logits (0, 0, 0.5)
        [3.0, 3.0],     // logits (1, 1, 0.5): tie goes to class 0
        [-1.0, -1.0],   // logits (−1, −1, 0.5)
    ];
    assert_eq!(readout.predict(features.view()), vec![0, 1, 2, 0, 2]);

    let probabilities = readout
        .probabilities(features.view())
        .expect("valid features");
    // softmax(0, 0, 0.5) = (1, 1, e^0.5) / (2 + e^0.5)
    let expected = [1.0 / 3.648_721, 1.0 / 3.648_721, 1.648_721 / 3.648_721];
    for (class, &p) in expected.iter().enumerate() {
        assert!(
            (probabilities[[2, class]] - p).abs() < 1e-6,
            "class {class}"
        );
    }
    assert!((probabilities.row(0).sum() - 1.0).abs() < 1e-6);
}

#[test]
fn error_rate_counts_wrong_predictions() {
    let readout = SoftmaxReadout::from_parameters(
        array![[1.0_f32, -1.0]],
        array![0.0_f32, 0.0],
        array![0.0_f32],
        array![1.0_f32],
    )
    .expect("consistent parameters");
    let features = array![[1.0_f32], [2.0], [-1.0], [-2.0]];

    assert_eq!(readout.predict(features.view()), vec![0, 0, 1, 1]);
    assert_eq!(readout.error_rate(features.view(), &[0, 1, 1, 1]), 0.25);
}

#[test]
fn fit_is_deterministic_for_a_seed() {
    // Overlapping blobs, so the fitted boundary depends on the batch order.
    let centres = [[0.0_f32, 0.0], [1.5, 0.0], [0.0, 1.5]];
    let (features, labels) = gaussian_blobs(&centres, 200, 1.0, 3);
    let config = ReadoutConfig {
        epochs: 5,
        seed: 7,
        ..ReadoutConfig::default()
    };
    let first = SoftmaxReadout::fit(features.view(), &labels, 3, &config).expect("valid input");
    let second = SoftmaxReadout::fit(features.view(), &labels, 3, &config).expect("valid input");

    let first_probabilities = first
        .probabilities(features.view())
        .expect("valid features");
    let second_probabilities = second
        .probabilities(features.view())
        .expect("valid features");
    assert_eq!(first_probabilities, second_probabilities);
    assert_eq!(
        first.predict(features.view()),
        second.predict(features.view())
    );

    let other_seed = ReadoutConfig { seed: 8, ..config };
    let third = SoftmaxReadout::fit(features.view(), &labels, 3, &other_seed).expect("valid input");
    let third_probabilities = third
        .probabilities(features.view())
        .expect("valid features");
    assert_ne!(first_probabilities, third_probabilities);
}

#[test]
fn constant_feature_gives_finite_probabilities() {
    let (blobs, labels) = gaussian_blobs(&SEPARATED_CENTRES, 30, 0.5, 4);
    let rows = blobs.nrows();
    // Columns: two informative, one constant at 5, one constant at 0.
    let mut features = Array2::zeros((rows, 4));
    features.column_mut(0).assign(&blobs.column(0));
    features.column_mut(1).assign(&blobs.column(1));
    features.column_mut(2).fill(5.0);

    let readout = SoftmaxReadout::fit(features.view(), &labels, 3, &ReadoutConfig::default())
        .expect("valid input");
    let probabilities = readout
        .probabilities(features.view())
        .expect("valid features");

    assert!(probabilities.iter().all(|p| p.is_finite()));
    assert_eq!(readout.error_rate(features.view(), &labels), 0.0);
}

#[test]
fn label_count_mismatch_is_rejected() {
    let features = Array2::<f32>::zeros((3, 2));
    let error = SoftmaxReadout::fit(features.view(), &[0, 1], 2, &ReadoutConfig::default())
        .expect_err("two labels for three rows");

    assert!(
        matches!(error, ReadoutError::LabelCount { labels: 2, rows: 3 }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "got 2 labels for 3 feature rows, expected one label per row"
    );
}

#[test]
fn label_out_of_range_is_rejected() {
    let features = Array2::<f32>::zeros((3, 2));
    let error = SoftmaxReadout::fit(features.view(), &[0, 3, 1], 3, &ReadoutConfig::default())
        .expect_err("label 3 with three classes");

    assert!(
        matches!(
            error,
            ReadoutError::LabelOutOfRange {
                row: 1,
                label: 3,
                classes: 3
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "label 3 at row 1 is out of range for 3 classes"
    );
}

#[test]
fn nan_feature_is_rejected_with_position() {
    let mut features = Array2::<f32>::zeros((3, 2));
    features[[2, 1]] = f32::NAN;
    let error = SoftmaxReadout::fit(features.view(), &[0, 1, 0], 2, &ReadoutConfig::default())
        .expect_err("NaN feature");

    match error {
        ReadoutError::NonFiniteFeature { row, column, value } => {
            assert_eq!(row, 2);
            assert_eq!(column, 1);
            assert!(value.is_nan());
        }
        other => panic!("expected NonFiniteFeature, got {other:?}"),
    }
    assert_eq!(
        error_message(features.view()),
        "feature at row 2, column 1 is NaN, expected a finite number"
    );
}

fn error_message(features: ndarray::ArrayView2<f32>) -> String {
    let labels = vec![0; features.nrows()];
    match SoftmaxReadout::fit(features, &labels, 2, &ReadoutConfig::default()) {
        Ok(_) => String::from("no error"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn infinite_feature_is_rejected() {
    let mut features = Array2::<f32>::zeros((2, 3));
    features[[0, 2]] = f32::NEG_INFINITY;

    assert_eq!(
        error_message(features.view()),
        "feature at row 0, column 2 is -inf, expected a finite number"
    );
}

#[test]
fn empty_input_is_rejected() {
    let features = Array2::<f32>::zeros((0, 4));
    let error = SoftmaxReadout::fit(features.view(), &[], 2, &ReadoutConfig::default())
        .expect_err("no rows");

    assert!(
        matches!(
            error,
            ReadoutError::EmptyInput {
                rows: 0,
                columns: 4
            }
        ),
        "{error:?}"
    );
}

#[test]
fn zero_batch_size_is_rejected() {
    let features = Array2::<f32>::zeros((2, 2));
    let config = ReadoutConfig {
        batch_size: 0,
        ..ReadoutConfig::default()
    };
    let error = SoftmaxReadout::fit(features.view(), &[0, 1], 2, &config).expect_err("batch 0");

    assert!(
        matches!(
            error,
            ReadoutError::InvalidConfig {
                name: "batch_size",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn wrong_column_count_is_rejected_at_prediction() {
    let (features, labels) = gaussian_blobs(&SEPARATED_CENTRES, 10, 0.5, 5);
    let readout = SoftmaxReadout::fit(features.view(), &labels, 3, &ReadoutConfig::default())
        .expect("valid input");
    let error = readout
        .try_predict(Array2::<f32>::zeros((1, 3)).view())
        .expect_err("three columns for a two-column readout");

    assert!(
        matches!(
            error,
            ReadoutError::FeatureCount {
                expected: 2,
                found: 3
            }
        ),
        "{error:?}"
    );
}

#[test]
fn inconsistent_parameters_are_rejected() {
    let error = SoftmaxReadout::from_parameters(
        Array2::zeros((2, 3)),
        Array1::zeros(2),
        Array1::zeros(2),
        Array1::ones(2),
    )
    .expect_err("bias of length 2 for 3 classes");
    assert!(
        matches!(
            error,
            ReadoutError::ParameterShape {
                name: "bias",
                found: 2,
                expected: 3
            }
        ),
        "{error:?}"
    );

    let error = SoftmaxReadout::from_parameters(
        Array2::zeros((2, 3)),
        Array1::zeros(3),
        Array1::zeros(2),
        array![1.0_f32, 0.0],
    )
    .expect_err("zero scale");
    assert!(
        matches!(error, ReadoutError::NonPositiveScale { value: 0.0 }),
        "{error:?}"
    );
}

/// Reads a gzipped IDX file and returns its dimensions and bytes.
fn read_idx(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("decompress {}: {e}", path.display()));
    assert_eq!(bytes[..2], [0, 0], "IDX magic of {}", path.display());
    assert_eq!(bytes[2], 0x08, "IDX element type u8 of {}", path.display());
    let rank = usize::from(bytes[3]);
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            let start = 4 + 4 * i;
            let field: [u8; 4] = bytes[start..start + 4].try_into().expect("four bytes");
            u32::from_be_bytes(field) as usize
        })
        .collect();
    let data = bytes.split_off(4 + 4 * rank);
    assert_eq!(data.len(), dims.iter().product::<usize>());
    (dims, data)
}

fn load_mnist(images: &str, labels: &str, count: usize) -> (Array2<f32>, Vec<u8>) {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let (dims, pixels) = read_idx(&directory.join(images));
    let (_, mut classes) = read_idx(&directory.join(labels));
    let count = count.min(dims[0]);
    let size = dims[1] * dims[2];
    let features = Array2::from_shape_vec((count, size), pixels[..count * size].to_vec())
        .expect("IDX image shape")
        .mapv(|p| f32::from(p) / 255.0);
    classes.truncate(count);
    (features, classes)
}

/// Measures the raw-pixel baseline on MNIST. Run with
/// `cargo test --release --test readout -- --ignored --nocapture`, and set
/// READOUT_TRAIN_SIZE to change the number of training images (20,000).
#[test]
#[ignore = "reads MNIST from data/mnist and takes seconds in release mode"]
fn raw_mnist_error_is_near_eight_percent() {
    let train_size = std::env::var("READOUT_TRAIN_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let (train, train_labels) = load_mnist(
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        train_size,
    );
    let (test, test_labels) = load_mnist(
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        10_000,
    );

    let config = ReadoutConfig::default();
    let start = Instant::now();
    let readout = SoftmaxReadout::fit(train.view(), &train_labels, 10, &config).expect("fit");
    let seconds = start.elapsed().as_secs_f64();
    let train_error = readout.error_rate(train.view(), &train_labels);
    let test_error = readout.error_rate(test.view(), &test_labels);
    println!(
        "raw pixels: {} train images, {config:?}: train error {train_error:.4}, \
         test error {test_error:.4}, fit {seconds:.1} s",
        train.nrows()
    );

    assert!(test_error < 0.09, "test error {test_error}");
}
