//! The decompressed-file cache behind [`super::load_splits`].
//!
//! Each source directory gets its own subdirectory of the cache directory.
//! The subdirectory is named by a hash of the canonical source path and the
//! name, size and modification time of each of its four files, so changing
//! any source file leads to a fresh subdirectory. Invariant: a file appears under its
//! final name only through a rename of a fully written temporary file, so a
//! reader never sees a partly written cache file. This module never deletes
//! old subdirectories. Deleting the cache directory between runs is safe,
//! because a missing cache is rebuilt.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use super::DataError;

/// Bumped whenever the cache layout changes, so old subdirectories are
/// ignored instead of misread.
const CACHE_FORMAT: &str = "ign-mnist-cache-v1";

/// One located source file and the metadata that goes into the cache key.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub len: u64,
    /// Modification time in nanoseconds since the Unix epoch, or 0 where the
    /// platform does not report one.
    pub modified_ns: u128,
}

impl SourceFile {
    /// Reads the metadata of the file at `path`.
    pub fn stat(path: PathBuf) -> Result<SourceFile, DataError> {
        let metadata = fs::metadata(&path).map_err(|source| DataError::Read {
            path: path.clone(),
            source,
        })?;
        let modified_ns = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |age| age.as_nanos());
        Ok(SourceFile {
            path,
            len: metadata.len(),
            modified_ns,
        })
    }
}

/// Returns the subdirectory of `cache_dir` for the source directory
/// `canonical_dir` holding `sources`, e.g. `<cache_dir>/mnist-3f0c9a1e5b7d2c44`.
pub fn source_cache_dir(cache_dir: &Path, canonical_dir: &Path, sources: &[SourceFile]) -> PathBuf {
    let mut key = Vec::new();
    for part in [
        CACHE_FORMAT.as_bytes(),
        canonical_dir.as_os_str().as_encoded_bytes(),
    ] {
        key.extend_from_slice(part);
        key.push(0);
    }
    for source in sources {
        let name = source.path.file_name().unwrap_or_default();
        key.extend_from_slice(name.as_encoded_bytes());
        key.extend_from_slice(format!("\0{}\0{}\0", source.len, source.modified_ns).as_bytes());
    }

    // The directory's own name keeps the subdirectory recognisable by eye.
    let label: String = canonical_dir
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let label = if label.is_empty() {
        "data".to_owned()
    } else {
        label
    };
    cache_dir.join(format!("{label}-{:016x}", fnv1a_64(&key)))
}

/// FNV-1a, 64-bit: stable across Rust versions and platforms, unlike
/// `std::hash::DefaultHasher`. It guards against stale data, not tampering.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, so `path` either keeps its old content or has all of `bytes`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp_name = format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
    );
    let temp_path = path.with_file_name(temp_name);

    let written = File::create_new(&temp_path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp_path, path));
    written.map_err(|source| {
        // Best effort: a leftover temporary file wastes space but is never
        // read, because it has no final name.
        let _ = fs::remove_file(&temp_path);
        DataError::Cache {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Picks the cache directory from the values of `IGN_CACHE_DIR`,
/// `XDG_CACHE_HOME` and `HOME`. Empty values count as unset, and so does a
/// relative `XDG_CACHE_HOME`, as the XDG Base Directory specification directs.
pub fn cache_dir_from(
    ign_cache_dir: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    let set = |value: Option<OsString>| value.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(ign_cache_dir) {
        return dir;
    }
    if let Some(dir) = set(xdg_cache_home).filter(|dir| dir.is_absolute()) {
        return dir.join("ign");
    }
    if let Some(home) = set(home) {
        return home.join(".cache").join("ign");
    }
    PathBuf::from(".ign-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(value: &str) -> Option<OsString> {
        Some(OsString::from(value))
    }

    #[test]
    fn cache_dir_precedence() {
        assert_eq!(
            cache_dir_from(os("/c"), os("/x"), os("/h")),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(None, os("/x"), os("/h")),
            PathBuf::from("/x/ign")
        );
        assert_eq!(
            cache_dir_from(os(""), os("/x"), os("/h")),
            PathBuf::from("/x/ign")
        );
        assert_eq!(
            cache_dir_from(None, os("rel"), os("/h")),
            PathBuf::from("/h/.cache/ign")
        );
        assert_eq!(
            cache_dir_from(None, None, os("/h")),
            PathBuf::from("/h/.cache/ign")
        );
        assert_eq!(
            cache_dir_from(None, None, None),
            PathBuf::from(".ign-cache")
        );
    }

    #[test]
    fn fnv1a_known_values() {
        // Published FNV-1a 64 values: the empty input hashes to the offset basis.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cache_dir_changes_with_source_size() {
        let source = |len| SourceFile {
            path: PathBuf::from("/d/mnist/train-images-idx3-ubyte.gz"),
            len,
            modified_ns: 5,
        };
        let dir = Path::new("/d/mnist");
        let first = source_cache_dir(Path::new("/c"), dir, &[source(10)]);
        let second = source_cache_dir(Path::new("/c"), dir, &[source(11)]);
        assert!(first.starts_with("/c"));
        assert!(
            first
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("mnist-")
        );
        assert_ne!(first, second);
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
