//! Integration tests of `ign::data`: the shipped MNIST files, every accepted
//! file name and encoding, the cache, and one test per kind of bad input.
//!
//! Synthetic releases have 5 train and 3 test images of 28x28 pixels, with
//! pixel `p` of image `i` equal to `(37 * i + 11 * p) % 256`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use ign::data::{DataError, FileRole, IdxKind, LoadInfo, Parser, Splits, load_splits_with_info};
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
const TRAIN_LABELS: [u8; 5] = [3, 0, 9, 1, 7];
const TEST_LABELS: [u8; 3] = [2, 8, 5];
const PIXELS: usize = 28 * 28;

fn pixel(image: usize, index: usize) -> u8 {
    ((37 * image + 11 * index) % 256) as u8
}

fn images_idx(count: u32, rows: u32, cols: u32, stored: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = [0x803, count, rows, cols]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    let size = (rows * cols) as usize;
    for image in 0..stored {
        bytes.extend((0..size).map(|index| pixel(image, index)));
    }
    bytes
}

fn labels_idx(labels: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = [0x801, labels.len() as u32]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    bytes.extend_from_slice(labels);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Returns the four raw files of the valid synthetic release, in `DASHED`
/// order.
fn release() -> [Vec<u8>; 4] {
    [
        images_idx(5, 28, 28, 5),
        labels_idx(&TRAIN_LABELS),
        images_idx(3, 28, 28, 3),
        labels_idx(&TEST_LABELS),
    ]
}

fn write_files(dir: &Path, names: [&str; 4], contents: &[Vec<u8>; 4]) {
    for (name, bytes) in names.iter().zip(contents) {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A data directory and a cache directory, both temporary.
struct Dirs {
    data: TempDir,
    cache: TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        Dirs {
            data: tempfile::tempdir().unwrap(),
            cache: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes the valid release under the dashed names, then replaces file
    /// `role` with `bytes`.
    fn with_file(role: FileRole, bytes: Vec<u8>) -> Dirs {
        let dirs = Dirs::new();
        let mut files = release();
        files[role as usize] = bytes;
        write_files(dirs.data.path(), DASHED, &files);
        dirs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.data.path().join(name)
    }

    fn load(&self) -> Result<(Splits, LoadInfo), DataError> {
        load_splits_with_info(self.data.path(), self.cache.path())
    }

    fn load_err(&self) -> DataError {
        match self.load() {
            Ok(_) => panic!("loading {} succeeded", self.data.path().display()),
            Err(error) => error,
        }
    }
}

fn assert_mentions(error: &DataError, parts: &[&str]) {
    let message = error.to_string();
    for part in parts {
        assert!(
            message.contains(part),
            "{message:?} does not mention {part:?}"
        );
    }
    assert!(!message.contains('\n'), "{message:?} is not one line");
}

fn plain_splits() -> Splits {
    let dirs = Dirs::new();
    write_files(dirs.data.path(), DASHED, &release());
    dirs.load().unwrap().0
}

#[test]
fn shipped_mnist_loads_through_mnist_crate() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let cache = tempfile::tempdir().unwrap();
    let (splits, info) = load_splits_with_info(&data, cache.path()).unwrap();

    assert_eq!(info.parser, Parser::MnistCrate);
    assert!(!info.cache_reused);
    assert_eq!(splits.train.len(), 60_000);
    assert_eq!(splits.test.len(), 10_000);
    assert_eq!(splits.train.images.dim(), (60_000, 784));
    assert_eq!(splits.test.images.dim(), (10_000, 784));
    assert_eq!((splits.train.rows, splits.train.cols), (28, 28));

    let mut counts = [0usize; 10];
    for &label in &splits.train.labels {
        counts[label as usize] += 1;
    }
    assert_eq!(
        counts,
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(splits.train.labels[0], 5);
    assert_eq!(splits.test.labels[0], 7);

    assert!(
        splits
            .train
            .images
            .iter()
            .all(|&p| (0.0..=1.0).contains(&p))
    );
    assert_eq!(splits.train.images.iter().cloned().fold(0.0, f32::max), 1.0);
    // The first training image: byte 156 is 126, and its bytes sum to 27525.
    assert_eq!(splits.train.images[[0, 156]], 126.0 / 255.0);
    let first_sum: f32 = splits.train.images.row(0).sum();
    assert!(
        (first_sum - 27525.0 / 255.0).abs() < 1e-3,
        "sum {first_sum}"
    );

    let cached = info.cache_dir.join("train-images-idx3-ubyte");
    assert_eq!(fs::metadata(&cached).unwrap().len(), 47_040_016);
    let written = fs::metadata(&cached).unwrap().modified().unwrap();

    let (again, info_again) = load_splits_with_info(&data, cache.path()).unwrap();
    assert!(info_again.cache_reused);
    assert_eq!(info_again.cache_dir, info.cache_dir);
    assert_eq!(fs::metadata(&cached).unwrap().modified().unwrap(), written);
    assert_eq!(again.train.labels, splits.train.labels);
    assert_eq!(again.test.images, splits.test.images);
}

#[test]
#[ignore = "needs the Debian package dataset-fashion-mnist"]
fn installed_fashion_mnist_loads() {
    let cache = tempfile::tempdir().unwrap();
    let data = Path::new("/usr/share/datasets/fashion-mnist");
    let (splits, info) = load_splits_with_info(data, cache.path()).unwrap();
    assert_eq!(info.parser, Parser::MnistCrate);
    assert_eq!(splits.train.len(), 60_000);
    assert_eq!(splits.test.len(), 10_000);
    let mut counts = [0usize; 10];
    for &label in &splits.train.labels {
        counts[label as usize] += 1;
    }
    assert_eq!(counts, [6000; 10]);
    assert_eq!(splits.train.labels[0], 9);
}

#[test]
fn synthetic_release_loads_exact_pixels() {
    let dirs = Dirs::new();
    write_files(dirs.data.path(), DASHED, &release());
    let (splits, info) = dirs.load().unwrap();

    assert_eq!(info.parser, Parser::Builtin);
    assert!(!info.cache_reused);
    assert!(info.cache_dir.starts_with(dirs.cache.path()));
    assert_eq!(splits.train.labels, TRAIN_LABELS);
    assert_eq!(splits.test.labels, TEST_LABELS);
    assert_eq!(splits.train.images.dim(), (5, PIXELS));
    assert_eq!(splits.test.images.dim(), (3, PIXELS));
    for (image, row) in splits.train.images.rows().into_iter().enumerate() {
        for (index, &value) in row.iter().enumerate() {
            assert_eq!(
                value,
                f32::from(pixel(image, index)) / 255.0,
                "image {image} px {index}"
            );
        }
    }
    // Spot checks against `pixel`: test image 2, pixel 1 is 37 * 2 + 11 = 85.
    assert_eq!(splits.train.images[[0, 0]], 0.0);
    assert_eq!(splits.test.images[[2, 1]], f32::from(85u8) / 255.0);
}

#[test]
fn second_load_reuses_cache() {
    let dirs = Dirs::new();
    write_files(dirs.data.path(), DASHED, &release());
    let (first, first_info) = dirs.load().unwrap();
    let cached = first_info.cache_dir.join("t10k-labels-idx1-ubyte");
    let written = fs::metadata(&cached).unwrap().modified().unwrap();

    let (second, second_info) = dirs.load().unwrap();
    assert!(second_info.cache_reused);
    assert_eq!(second_info.cache_dir, first_info.cache_dir);
    assert_eq!(fs::metadata(&cached).unwrap().modified().unwrap(), written);
    assert_eq!(second, first);
}

#[test]
fn changed_source_is_decompressed_again() {
    let dirs = Dirs::new();
    let mut files = release();
    files = files.map(|bytes| gzip(&bytes));
    write_files(dirs.data.path(), DASHED, &files);
    let (_, first_info) = dirs.load().unwrap();

    // Same length, different labels, and a distinct modification time.
    let path = dirs.path("train-labels-idx1-ubyte");
    fs::write(&path, gzip(&labels_idx(&[4, 4, 4, 4, 4]))).unwrap();
    let later = SystemTime::now() + Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();

    let (splits, second_info) = dirs.load().unwrap();
    assert!(!second_info.cache_reused);
    assert_ne!(second_info.cache_dir, first_info.cache_dir);
    assert_eq!(splits.train.labels, [4, 4, 4, 4, 4]);
}

#[test]
fn truncated_cache_file_is_rebuilt() {
    let dirs = Dirs::new();
    write_files(dirs.data.path(), DASHED, &release());
    let (first, first_info) = dirs.load().unwrap();
    let cached = first_info.cache_dir.join("train-images-idx3-ubyte");
    fs::write(&cached, &fs::read(&cached).unwrap()[..100]).unwrap();

    let (second, second_info) = dirs.load().unwrap();
    assert!(!second_info.cache_reused);
    assert_eq!(second, first);
    assert_eq!(fs::metadata(&cached).unwrap().len(), 16 + 5 * 784);
}

#[test]
fn gzip_under_raw_name_loads() {
    let dirs = Dirs::new();
    let files = release().map(|bytes| gzip(&bytes));
    write_files(dirs.data.path(), DASHED, &files);
    assert_eq!(dirs.load().unwrap().0, plain_splits());
}

#[test]
fn raw_under_gz_name_loads() {
    let dirs = Dirs::new();
    let names = DASHED.map(|name| format!("{name}.gz"));
    write_files(
        dirs.data.path(),
        names.each_ref().map(String::as_str),
        &release(),
    );
    assert_eq!(dirs.load().unwrap().0, plain_splits());
}

#[test]
fn dotted_names_load() {
    let dirs = Dirs::new();
    write_files(dirs.data.path(), DOTTED, &release());
    assert_eq!(dirs.load().unwrap().0, plain_splits());
}

#[test]
fn dotted_gz_names_load() {
    let dirs = Dirs::new();
    let names = DOTTED.map(|name| format!("{name}.gz"));
    let files = release().map(|bytes| gzip(&bytes));
    write_files(
        dirs.data.path(),
        names.each_ref().map(String::as_str),
        &files,
    );
    assert_eq!(dirs.load().unwrap().0, plain_splits());
}

#[test]
fn dashed_raw_name_wins_over_gz() {
    let dirs = Dirs::new();
    write_files(dirs.data.path(), DASHED, &release());
    // A broken file under a later name in the search order is never opened.
    fs::write(dirs.path("train-images-idx3-ubyte.gz"), b"\x1f\x8bbroken").unwrap();
    assert_eq!(dirs.load().unwrap().0, plain_splits());
}

#[test]
fn missing_file_lists_paths_tried() {
    let dirs = Dirs::new();
    let files = release();
    for (name, bytes) in DASHED.iter().zip(&files).take(3) {
        fs::write(dirs.path(name), bytes).unwrap();
    }
    let error = dirs.load_err();
    let DataError::MissingFile {
        role, ref tried, ..
    } = error
    else {
        panic!("unexpected error {error:?}");
    };
    assert_eq!(role, FileRole::TestLabels);
    let expected: Vec<PathBuf> = [
        "t10k-labels-idx1-ubyte",
        "t10k-labels-idx1-ubyte.gz",
        "t10k-labels.idx1-ubyte",
        "t10k-labels.idx1-ubyte.gz",
    ]
    .iter()
    .map(|name| dirs.path(name))
    .collect();
    assert_eq!(tried, &expected);
    let shown: Vec<String> = expected.iter().map(|p| p.display().to_string()).collect();
    let mut parts: Vec<&str> = shown.iter().map(String::as_str).collect();
    parts.extend(["missing MNIST test labels file", "--data DIR"]);
    assert_mentions(&error, &parts);
}

#[test]
fn missing_directory_is_named() {
    let dirs = Dirs::new();
    let missing = dirs.data.path().join("nope");
    let error = load_splits_with_info(&missing, dirs.cache.path()).unwrap_err();
    assert!(matches!(error, DataError::MissingDir { .. }), "{error:?}");
    assert_mentions(&error, &[&missing.display().to_string(), "does not exist"]);
}

#[test]
fn truncated_images_report_sizes() {
    // The header declares 5 images, but the payload contains 4.
    let dirs = Dirs::with_file(FileRole::TrainImages, images_idx(5, 28, 28, 4));
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::Length {
                expected: 3936,
                actual: 3152,
                count: 5,
                ..
            }
        ),
        "{error:?}"
    );
    let path = dirs.path("train-images-idx3-ubyte").display().to_string();
    assert_mentions(
        &error,
        &[
            &path,
            "3936 bytes were expected",
            "3152 bytes",
            "truncated by 784",
        ],
    );
}

#[test]
fn truncated_gzipped_images_report_sizes() {
    let dirs = Dirs::with_file(FileRole::TestImages, gzip(&images_idx(3, 28, 28, 2)));
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::Length {
                expected: 2368,
                actual: 1584,
                ..
            }
        ),
        "{error:?}"
    );
    let path = dirs.path("t10k-images-idx3-ubyte").display().to_string();
    assert_mentions(&error, &[&path, "2368", "1584", "after decompression"]);
}

#[test]
fn trailing_junk_is_rejected() {
    let mut labels = labels_idx(&TRAIN_LABELS);
    labels.extend_from_slice(b"junk");
    let dirs = Dirs::with_file(FileRole::TrainLabels, labels);
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::Length {
                expected: 13,
                actual: 17,
                ..
            }
        ),
        "{error:?}"
    );
    let path = dirs.path("train-labels-idx1-ubyte").display().to_string();
    assert_mentions(
        &error,
        &[
            &path,
            "13 bytes were expected",
            "17 bytes",
            "4 bytes of trailing",
        ],
    );
}

#[test]
fn gzipped_trailing_junk_is_rejected() {
    let mut labels = labels_idx(&TEST_LABELS);
    labels.extend_from_slice(&[0; 1000]);
    let dirs = Dirs::with_file(FileRole::TestLabels, gzip(&labels));
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::Length {
                expected: 11,
                actual: 1011,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn count_mismatch_names_both_files() {
    let dirs = Dirs::with_file(FileRole::TrainLabels, labels_idx(&[3, 0, 9, 1]));
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::CountMismatch {
                split: "train",
                images: 5,
                labels: 4,
                ..
            }
        ),
        "{error:?}"
    );
    let images = dirs.path("train-images-idx3-ubyte").display().to_string();
    let labels = dirs.path("train-labels-idx1-ubyte").display().to_string();
    assert_mentions(
        &error,
        &[&images, &labels, "5 images", "4 labels", "train split"],
    );
}

#[test]
fn html_page_is_not_idx() {
    let page = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n";
    let dirs = Dirs::with_file(FileRole::TrainImages, page.to_vec());
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::Html {
                magic: 0x3c21_444f,
                ..
            }
        ),
        "{error:?}"
    );
    let path = dirs.path("train-images-idx3-ubyte").display().to_string();
    assert_mentions(
        &error,
        &[
            &path,
            "is not an IDX file",
            "0x3c21444f",
            "`<!DOCTYPE html>`",
            "HTML page",
        ],
    );
}

#[test]
fn gzipped_html_page_is_not_idx() {
    let page = gzip(b"<html><body>Service Unavailable</body></html>");
    let dirs = Dirs::with_file(FileRole::TestLabels, page);
    let error = dirs.load_err();
    assert!(matches!(error, DataError::Html { .. }), "{error:?}");
}

#[test]
fn label_eleven_is_rejected() {
    let dirs = Dirs::with_file(FileRole::TrainLabels, labels_idx(&[3, 0, 11, 1, 7]));
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::BadLabel {
                index: 2,
                value: 11,
                ..
            }
        ),
        "{error:?}"
    );
    let path = dirs.path("train-labels-idx1-ubyte").display().to_string();
    assert_mentions(&error, &[&path, "label 11 at index 2", "0..=9"]);
}

#[test]
fn corrupt_gzip_checksum_names_file() {
    let mut bytes = gzip(&labels_idx(&TEST_LABELS));
    // The last 8 bytes are the CRC-32 and the length of the content.
    let crc = bytes.len() - 8;
    bytes[crc] ^= 0xff;
    let dirs = Dirs::with_file(FileRole::TestLabels, bytes);
    let error = dirs.load_err();
    assert!(matches!(error, DataError::Gzip { .. }), "{error:?}");
    let path = dirs.path("t10k-labels-idx1-ubyte").display().to_string();
    assert_mentions(
        &error,
        &[&path, "failed to decompress", "corrupt or truncated"],
    );
}

#[test]
fn cut_gzip_stream_names_file() {
    let bytes = gzip(&images_idx(5, 28, 28, 5));
    let dirs = Dirs::with_file(FileRole::TrainImages, bytes[..bytes.len() / 2].to_vec());
    let error = dirs.load_err();
    assert!(matches!(error, DataError::Gzip { .. }), "{error:?}");
    let path = dirs.path("train-images-idx3-ubyte").display().to_string();
    assert_mentions(&error, &[&path, "failed to decompress"]);
}

#[test]
fn gzip_magic_with_garbage_names_file() {
    let dirs = Dirs::with_file(FileRole::TrainLabels, b"\x1f\x8bnot really gzip".to_vec());
    let error = dirs.load_err();
    assert!(matches!(error, DataError::Gzip { .. }), "{error:?}");
    assert_mentions(
        &error,
        &[&dirs.path("train-labels-idx1-ubyte").display().to_string()],
    );
}

#[test]
fn non_28x28_images_are_rejected() {
    let dirs = Dirs::with_file(FileRole::TestImages, images_idx(3, 20, 20, 3));
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::Dimensions {
                rows: 20,
                cols: 20,
                ..
            }
        ),
        "{error:?}"
    );
    let path = dirs.path("t10k-images-idx3-ubyte").display().to_string();
    assert_mentions(&error, &[&path, "20x20", "28x28"]);
}

#[test]
fn swapped_images_and_labels_are_named() {
    let dirs = Dirs::with_file(FileRole::TrainImages, labels_idx(&TRAIN_LABELS));
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::WrongKind {
                expected: IdxKind::Images,
                found: IdxKind::Labels,
                ..
            }
        ),
        "{error:?}"
    );
    assert_mentions(
        &error,
        &["is an IDX labels file", "IDX images file was expected"],
    );
}

#[test]
fn bad_magic_is_shown_in_hex() {
    let mut bytes = labels_idx(&TEST_LABELS);
    bytes[2] = 0x0d;
    let dirs = Dirs::with_file(FileRole::TestLabels, bytes);
    let error = dirs.load_err();
    assert!(
        matches!(error, DataError::BadMagic { found: 0x0d01, .. }),
        "{error:?}"
    );
    assert_mentions(
        &error,
        &["not an IDX file", "0x00000d01", "expected 0x00000801"],
    );
}

#[test]
fn short_header_is_rejected() {
    let dirs = Dirs::with_file(
        FileRole::TrainImages,
        [0x00, 0x00, 0x08, 0x03, 0x00].to_vec(),
    );
    let error = dirs.load_err();
    assert!(
        matches!(
            error,
            DataError::TooShort {
                len: 5,
                header_len: 16,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn take_copies_first_rows() {
    let splits = plain_splits();
    let first_two = splits.train.take(2);
    assert_eq!(first_two.len(), 2);
    assert_eq!(first_two.labels, [3, 0]);
    assert_eq!(first_two.images.row(1), splits.train.images.row(1));
    assert_eq!(splits.train.take(99).len(), 5);
    assert!(splits.train.take(0).is_empty());
}
