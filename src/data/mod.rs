//! MNIST-format data loading: MNIST, Fashion-MNIST and any release with the
//! same four IDX files.
//!
//! [`load_splits`] finds the four files in a directory, validates each one in
//! full ([`idx`]), writes the raw bytes into a per-source cache ([`cache`])
//! and parses the cached files with the `mnist` crate. Invariant: the `mnist`
//! crate only reads files that passed validation, because it panics on
//! missing or malformed files and does not check that a payload is as long as
//! its header declares.
//!
//! Limits:
//! - Only 28x28 images are accepted, because the `mnist` crate 0.6 accepts
//!   nothing else.
//! - The `mnist` crate 0.6 asserts that the train files hold exactly 60,000
//!   items and the test files 10,000, whatever lengths its builder is given.
//!   Releases of other sizes (such as small test fixtures) are parsed from the
//!   same validated cache files by this module instead; [`LoadInfo::parser`]
//!   records which parser ran.

mod cache;
mod idx;

use std::fmt;
use std::fs;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ndarray::{Array2, s};
use tracing::{debug, info};

pub use idx::IdxKind;

/// Train item count that the `mnist` crate 0.6 accepts, because its reader
/// asserts this exact header count.
const MNIST_CRATE_TRAIN_LEN: u32 = 60_000;
/// Test item count that the `mnist` crate 0.6 accepts, for the same reason.
const MNIST_CRATE_TEST_LEN: u32 = 10_000;

/// One split of an image dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// One row per image, `rows * cols` columns, pixels scaled to [0, 1].
    pub images: Array2<f32>,
    /// `labels[i]` is the class (0..=9) of row `i` of `images`.
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Copies the first `n` images and labels, or all of them when `n` is
    /// larger than the dataset.
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset {
            images: self.images.slice(s![..n, ..]).to_owned(),
            labels: self.labels[..n].to_vec(),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Returns the images shrunk to `side x side` pixels by averaging blocks
    /// of `f x f` pixels, `f = min(rows, cols) / side`, over the centred
    /// square of `side·f` pixels (28 x 28 to 8 x 8 averages 3 x 3 blocks of
    /// the centre 24 x 24). Returns `None` when `side` is 0 or larger than
    /// the images.
    pub fn downsample(&self, side: usize) -> Option<Dataset> {
        let shortest = self.rows.min(self.cols);
        if side == 0 || side > shortest {
            return None;
        }
        let factor = shortest / side;
        let top = (self.rows - side * factor) / 2;
        let left = (self.cols - side * factor) / 2;
        let area = (factor * factor) as f32;
        let mut images = Array2::zeros((self.len(), side * side));
        for (image, mut out) in self.images.rows().into_iter().zip(images.rows_mut()) {
            for r in 0..side {
                for c in 0..side {
                    let mut total = 0.0;
                    for dr in 0..factor {
                        for dc in 0..factor {
                            let row = top + r * factor + dr;
                            let col = left + c * factor + dc;
                            total += image[row * self.cols + col];
                        }
                    }
                    out[r * side + c] = total / area;
                }
            }
        }
        Some(Dataset {
            images,
            labels: self.labels.clone(),
            rows: side,
            cols: side,
        })
    }
}

/// The train and test splits of one release.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
}

/// Details of one [`load_splits_with_info`] call: the cache used and the
/// parser that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadInfo {
    /// The cache subdirectory holding the raw files for this source.
    pub cache_dir: PathBuf,
    /// True when the cache already held valid files for this source, so
    /// nothing was decompressed or written.
    pub cache_reused: bool,
    pub parser: Parser,
}

/// The code that parsed the cached IDX files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parser {
    /// `mnist::MnistBuilder`, used for 60,000 train and 10,000 test items.
    MnistCrate,
    /// This module's own reader, used for every other size because the
    /// `mnist` crate 0.6 rejects them.
    Builtin,
}

/// One of the four files of an MNIST-format release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRole {
    TrainImages,
    TrainLabels,
    TestImages,
    TestLabels,
}

impl FileRole {
    /// All roles. `role as usize` is the index of `role` here and in every
    /// array indexed by role.
    pub const ALL: [FileRole; 4] = [
        FileRole::TrainImages,
        FileRole::TrainLabels,
        FileRole::TestImages,
        FileRole::TestLabels,
    ];

    /// Returns the dashed file name, which the `mnist` crate expects.
    pub fn dashed_name(self) -> &'static str {
        match self {
            FileRole::TrainImages => "train-images-idx3-ubyte",
            FileRole::TrainLabels => "train-labels-idx1-ubyte",
            FileRole::TestImages => "t10k-images-idx3-ubyte",
            FileRole::TestLabels => "t10k-labels-idx1-ubyte",
        }
    }

    /// Returns the names accepted in a data directory, in the order tried:
    /// dashed, dashed `.gz`, dotted (`train-images.idx3-ubyte`), dotted `.gz`.
    pub fn candidate_names(self) -> [String; 4] {
        let dashed = self.dashed_name();
        // The dotted form replaces the dash before `idx`.
        let dotted = dashed.replacen("-idx", ".idx", 1);
        [
            dashed.to_owned(),
            format!("{dashed}.gz"),
            dotted.clone(),
            format!("{dotted}.gz"),
        ]
    }

    pub fn kind(self) -> IdxKind {
        match self {
            FileRole::TrainImages | FileRole::TestImages => IdxKind::Images,
            FileRole::TrainLabels | FileRole::TestLabels => IdxKind::Labels,
        }
    }
}

impl fmt::Display for FileRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileRole::TrainImages => "train images",
            FileRole::TrainLabels => "train labels",
            FileRole::TestImages => "test images",
            FileRole::TestLabels => "test labels",
        })
    }
}

/// Everything that can go wrong while loading a release. Every variant names
/// the file or directory involved; the binary maps all of them to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "MNIST data directory {} does not exist (relative paths are taken from the current directory); pass --data DIR with the four IDX files",
        .dir.display()
    )]
    MissingDir { dir: PathBuf },

    #[error(
        "missing MNIST {role} file in {}: tried {}; pass --data DIR with the four IDX files",
        .dir.display(),
        join_paths(.tried)
    )]
    MissingFile {
        dir: PathBuf,
        role: FileRole,
        tried: Vec<PathBuf>,
    },

    #[error("failed to read {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error(
        "{} starts with the gzip magic bytes but failed to decompress ({source}); \
         the file is corrupt or truncated, download it again",
        .path.display()
    )]
    Gzip { path: PathBuf, source: io::Error },

    #[error(
        "{} is not an IDX file (bad magic 0x{magic:08x}): it starts with `{start}` and looks \
         like an HTML page, probably a failed download; replace it with the real IDX {kind} \
         file",
        .path.display()
    )]
    Html {
        path: PathBuf,
        kind: IdxKind,
        magic: u32,
        start: String,
    },

    #[error(
        "{} is an IDX {found} file, but an IDX {expected} file was expected at this name; \
         the images and labels files may be swapped",
        .path.display()
    )]
    WrongKind {
        path: PathBuf,
        expected: IdxKind,
        found: IdxKind,
    },

    #[error(
        "{} is not an IDX file: bad magic 0x{found:08x}, expected 0x{expected:08x}",
        .path.display()
    )]
    BadMagic {
        path: PathBuf,
        expected: u32,
        found: u32,
    },

    #[error(
        "{} is too short to be an IDX {kind} file: {len} bytes, but the header alone is \
         {header_len} bytes",
        .path.display()
    )]
    TooShort {
        path: PathBuf,
        kind: IdxKind,
        len: usize,
        header_len: usize,
    },

    #[error(
        "{} contains {rows}x{cols} images, but MNIST-format images must be 28x28",
        .path.display()
    )]
    Dimensions { path: PathBuf, rows: u32, cols: u32 },

    #[error(
        "{} has the wrong length: its header declares {count} {kind} of {item_size} bytes, \
         so {expected} bytes were expected, but {actual} bytes were found{}; {}",
        .path.display(),
        if *.gzip { " after decompression" } else { "" },
        describe_length_mismatch(*.expected, *.actual)
    )]
    Length {
        path: PathBuf,
        kind: IdxKind,
        count: u32,
        item_size: u64,
        expected: u64,
        actual: u64,
        /// Whether the lengths are of the decompressed content.
        gzip: bool,
    },

    #[error(
        "{} contains label {value} at index {index}, but MNIST labels must be 0..=9",
        .path.display()
    )]
    BadLabel {
        path: PathBuf,
        index: usize,
        value: u8,
    },

    #[error(
        "the {split} split is inconsistent: {} contains {images} images but {} contains \
         {labels} labels; both files must come from the same release",
        .images_path.display(),
        .labels_path.display()
    )]
    CountMismatch {
        split: &'static str,
        images_path: PathBuf,
        images: u32,
        labels_path: PathBuf,
        labels: u32,
    },

    #[error(
        "failed to write the MNIST cache at {}: {source}; set IGN_CACHE_DIR to a writable \
         directory",
        .path.display()
    )]
    Cache { path: PathBuf, source: io::Error },

    #[error(
        "cache directory {} is not valid UTF-8, which the mnist crate requires; set \
         IGN_CACHE_DIR to a UTF-8 path",
        .dir.display()
    )]
    NonUtf8CacheDir { dir: PathBuf },

    #[error(
        "the mnist crate failed to parse the cached files in {}: {message}; delete that \
         directory and retry",
        .dir.display()
    )]
    MnistCrate { dir: PathBuf, message: String },
}

fn join_paths(paths: &[PathBuf]) -> String {
    let displayed: Vec<String> = paths
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    displayed.join(", ")
}

fn describe_length_mismatch(expected: u64, actual: u64) -> String {
    if actual < expected {
        format!("the file is truncated by {} bytes", expected - actual)
    } else {
        format!("the file has {} bytes of trailing data", actual - expected)
    }
}

/// Returns the cache directory: `$IGN_CACHE_DIR`, else `$XDG_CACHE_HOME/ign`,
/// else `$HOME/.cache/ign`, else `./.ign-cache`.
pub fn default_cache_dir() -> PathBuf {
    cache::cache_dir_from(
        std::env::var_os("IGN_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// Loads the train and test splits of the MNIST-format release in `dir`,
/// caching the decompressed files under `cache_dir`.
pub fn load_splits(dir: &Path, cache_dir: &Path) -> Result<Splits, DataError> {
    load_splits_with_info(dir, cache_dir).map(|(splits, _)| splits)
}

/// Same as [`load_splits`], and also reports where the cache is, whether it
/// was reused and which parser ran.
pub fn load_splits_with_info(
    dir: &Path,
    cache_dir: &Path,
) -> Result<(Splits, LoadInfo), DataError> {
    let canonical_dir = fs::canonicalize(dir).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => DataError::MissingDir {
            dir: dir.to_path_buf(),
        },
        _ => DataError::Read {
            path: dir.to_path_buf(),
            source,
        },
    })?;
    let sources = try_each_role(|role| locate_source(dir, role))?;
    let source_dir = cache::source_cache_dir(cache_dir, &canonical_dir, &sources);
    let cached_paths = FileRole::ALL.map(|role| source_dir.join(role.dashed_name()));

    let (headers, cache_reused) = match check_cache(&cached_paths) {
        Ok(headers) => (headers, true),
        Err(reason) => {
            debug!(cache = %source_dir.display(), %reason, "MNIST cache not usable, rebuilding");
            (fill_cache(&sources, &source_dir, &cached_paths)?, false)
        }
    };

    let [train_images, _, test_images, _] = headers.map(|header| header.count);
    let parser = if train_images == MNIST_CRATE_TRAIN_LEN && test_images == MNIST_CRATE_TEST_LEN {
        Parser::MnistCrate
    } else {
        Parser::Builtin
    };
    let raw = match parser {
        Parser::MnistCrate => parse_with_mnist_crate(&source_dir, train_images, test_images)?,
        Parser::Builtin => parse_builtin(&cached_paths)?,
    };
    let splits = to_splits(raw, &cached_paths)?;

    info!(
        source = %dir.display(),
        train = splits.train.len(),
        test = splits.test.len(),
        cache = %source_dir.display(),
        cache_reused,
        ?parser,
        "loaded MNIST-format data"
    );
    let load_info = LoadInfo {
        cache_dir: source_dir,
        cache_reused,
        parser,
    };
    Ok((splits, load_info))
}

/// Calls `f` for each role in [`FileRole::ALL`] order, stopping at the first
/// error.
fn try_each_role<T>(
    mut f: impl FnMut(FileRole) -> Result<T, DataError>,
) -> Result<[T; 4], DataError> {
    let [train_images, train_labels, test_images, test_labels] = FileRole::ALL;
    Ok([
        f(train_images)?,
        f(train_labels)?,
        f(test_images)?,
        f(test_labels)?,
    ])
}

/// Finds the file for `role` in `dir`, trying the names in
/// [`FileRole::candidate_names`] order.
fn locate_source(dir: &Path, role: FileRole) -> Result<cache::SourceFile, DataError> {
    let tried = role.candidate_names().map(|name| dir.join(name));
    let found = tried.iter().find(|path| {
        let exists = path.is_file();
        debug!(path = %path.display(), exists, "looked for MNIST {role} file");
        exists
    });
    match found {
        Some(path) => cache::SourceFile::stat(path.clone()),
        None => Err(DataError::MissingFile {
            dir: dir.to_path_buf(),
            role,
            tried: tried.to_vec(),
        }),
    }
}

/// Checks the cached files cheaply (headers, lengths, label values and the
/// split counts) and returns their headers.
fn check_cache(cached_paths: &[PathBuf; 4]) -> Result<[idx::IdxHeader; 4], DataError> {
    let headers =
        try_each_role(|role| idx::check_cached(&cached_paths[role as usize], role.kind()))?;
    check_split_counts(cached_paths, &headers)?;
    Ok(headers)
}

/// Validates the four source files in full and writes their raw bytes into
/// `source_dir` under the dashed names.
fn fill_cache(
    sources: &[cache::SourceFile; 4],
    source_dir: &Path,
    cached_paths: &[PathBuf; 4],
) -> Result<[idx::IdxHeader; 4], DataError> {
    let files =
        try_each_role(|role| idx::read_validated(&sources[role as usize].path, role.kind()))?;
    let headers = files.each_ref().map(|file| file.header);
    let source_paths = sources.clone().map(|source| source.path);
    check_split_counts(&source_paths, &headers)?;

    fs::create_dir_all(source_dir).map_err(|source| DataError::Cache {
        path: source_dir.to_path_buf(),
        source,
    })?;
    for (file, path) in files.iter().zip(cached_paths) {
        cache::write_atomically(path, &file.bytes)?;
    }
    Ok(headers)
}

fn check_split_counts(
    paths: &[PathBuf; 4],
    headers: &[idx::IdxHeader; 4],
) -> Result<(), DataError> {
    for (split, images, labels) in [("train", 0, 1), ("test", 2, 3)] {
        if headers[images].count != headers[labels].count {
            return Err(DataError::CountMismatch {
                split,
                images_path: paths[images].clone(),
                images: headers[images].count,
                labels_path: paths[labels].clone(),
                labels: headers[labels].count,
            });
        }
    }
    Ok(())
}

/// Raw pixel and label bytes of both splits, headers stripped.
struct RawSplits {
    train_images: Vec<u8>,
    train_labels: Vec<u8>,
    test_images: Vec<u8>,
    test_labels: Vec<u8>,
}

fn parse_with_mnist_crate(
    source_dir: &Path,
    train_len: u32,
    test_len: u32,
) -> Result<RawSplits, DataError> {
    let base_path = source_dir
        .to_str()
        .ok_or_else(|| DataError::NonUtf8CacheDir {
            dir: source_dir.to_path_buf(),
        })?;
    // Validation should make a panic impossible. The guard still turns one
    // into an error (after the panic hook prints it), in case a cache file
    // changed between validation and parsing.
    let parsed = panic::catch_unwind(AssertUnwindSafe(|| {
        mnist::MnistBuilder::new()
            .base_path(base_path)
            .label_format_digit()
            .training_set_length(train_len)
            .validation_set_length(0)
            .test_set_length(test_len)
            .finalize()
    }));
    let mnist = parsed.map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".to_owned());
        DataError::MnistCrate {
            dir: source_dir.to_path_buf(),
            message,
        }
    })?;
    Ok(RawSplits {
        train_images: mnist.trn_img,
        train_labels: mnist.trn_lbl,
        test_images: mnist.tst_img,
        test_labels: mnist.tst_lbl,
    })
}

/// Reads the validated cache files directly, for sizes the `mnist` crate
/// rejects.
fn parse_builtin(cached_paths: &[PathBuf; 4]) -> Result<RawSplits, DataError> {
    let payload = |role: FileRole| -> Result<Vec<u8>, DataError> {
        let path = &cached_paths[role as usize];
        let mut bytes = fs::read(path).map_err(|source| DataError::Read {
            path: path.clone(),
            source,
        })?;
        let header = idx::parse_header(path, role.kind(), &bytes)?;
        if bytes.len() as u64 != header.expected_len() {
            return Err(DataError::Length {
                path: path.clone(),
                kind: header.kind,
                count: header.count,
                item_size: header.item_size(),
                expected: header.expected_len(),
                actual: bytes.len() as u64,
                gzip: false,
            });
        }
        bytes.drain(..role.kind().header_len());
        Ok(bytes)
    };
    Ok(RawSplits {
        train_images: payload(FileRole::TrainImages)?,
        train_labels: payload(FileRole::TrainLabels)?,
        test_images: payload(FileRole::TestImages)?,
        test_labels: payload(FileRole::TestLabels)?,
    })
}

fn to_splits(raw: RawSplits, cached_paths: &[PathBuf; 4]) -> Result<Splits, DataError> {
    let [
        train_images_path,
        train_labels_path,
        test_images_path,
        test_labels_path,
    ] = cached_paths;
    Ok(Splits {
        train: to_dataset(
            raw.train_images,
            raw.train_labels,
            train_images_path,
            train_labels_path,
        )?,
        test: to_dataset(
            raw.test_images,
            raw.test_labels,
            test_images_path,
            test_labels_path,
        )?,
    })
}

/// Scales pixels to [0, 1] and checks that the parser returned one image of
/// 28x28 bytes and one label in 0..=9 per item.
fn to_dataset(
    pixels: Vec<u8>,
    labels: Vec<u8>,
    images_path: &Path,
    labels_path: &Path,
) -> Result<Dataset, DataError> {
    if let Some(index) = labels.iter().position(|&label| label > 9) {
        return Err(DataError::BadLabel {
            path: labels_path.to_path_buf(),
            index,
            value: labels[index],
        });
    }

    let side = idx::IMAGE_SIDE as usize;
    let count = labels.len();
    let header_len = IdxKind::Images.header_len() as u64;
    let length_error = DataError::Length {
        path: images_path.to_path_buf(),
        kind: IdxKind::Images,
        count: u32::try_from(count).unwrap_or(u32::MAX),
        item_size: (side * side) as u64,
        expected: header_len + (count * side * side) as u64,
        actual: header_len + pixels.len() as u64,
        gzip: false,
    };
    let scaled: Vec<f32> = pixels
        .iter()
        .map(|&pixel| f32::from(pixel) / 255.0)
        .collect();
    let images = Array2::from_shape_vec((count, side * side), scaled).map_err(|_| length_error)?;
    Ok(Dataset {
        images,
        labels,
        rows: side,
        cols: side,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_averages_centred_blocks() {
        // A 5 x 5 image to 2 x 2: blocks of 2 x 2 over the centre 4 x 4
        // (rows and columns 0..4, since (5 − 4) / 2 rounds down to 0).
        let pixels: Vec<f32> = (0..25).map(|v| v as f32).collect();
        let data = Dataset {
            images: Array2::from_shape_vec((1, 25), pixels).unwrap(),
            labels: vec![3],
            rows: 5,
            cols: 5,
        };
        let small = data.downsample(2).unwrap();
        assert_eq!((small.rows, small.cols), (2, 2));
        // Top-left block: 0, 1, 5, 6; top-right: 2, 3, 7, 8.
        assert_eq!(small.images.row(0).to_vec(), vec![3.0, 5.0, 13.0, 15.0]);
        assert_eq!(small.labels, vec![3]);
        assert!(data.downsample(0).is_none());
        assert!(data.downsample(6).is_none());
    }
}
