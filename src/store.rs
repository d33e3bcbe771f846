//! Model files: a trained network and the scenario that produced it, in one
//! numpy `.npz` archive that `numpy.load` opens directly.
//!
//! Members, each a `.npy` array in an uncompressed zip (what `numpy.savez`
//! writes):
//!
//! ```text
//! format     uint32  [1]                  file format version, FORMAT_VERSION
//! scenario   uint8   [bytes]              UTF-8 text of the resolved scenario TOML
//! W1 … WL    float32 n_{i-1} x n_i        W_i maps layer i down onto layer i-1
//! alpha      float32 [L]                  sparsity weight of layers 1 … L
//! ```
//!
//! Read one in numpy with
//! `m = numpy.load("model.npz"); m["W1"]; bytes(m["scenario"]).decode()`.
//!
//! Invariants: [`save_model`] replaces the destination by a rename, so a
//! reader sees the old file or the whole new one, never a part. A process
//! killed while saving can leave a `.NAME.tmp-PID` file beside the
//! destination, but never a broken destination. Every file that
//! [`save_model`] writes loads again, and [`load_model`] returns an error,
//! never a panic, on any other byte sequence. It checks each member's
//! declared shape against the bytes the member contains before allocating
//! the array, so no array is larger than the file.
//!
//! Limits: only uncompressed members are read, because the `zip` crate is
//! built without compression. A file written by `numpy.savez_compressed` is
//! rejected with a message naming the member. [`load_model`] does not check
//! that the columns of each `W_i` have unit norm, which training maintains
//! and [`crate::model::Layer::new`] expects.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::mem;
use std::path::{Path, PathBuf};

use ndarray::{Array, Array1, Array2, Dimension};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{NpzWriter, ReadNpyError, ReadNpyExt, ReadableElement};
use thiserror::Error;
use zip::ZipArchive;
use zip::result::ZipError;

use crate::model::Network;
use crate::scenario::Scenario;

/// The file format version that [`save_model`] writes and [`load_model`]
/// reads.
pub const FORMAT_VERSION: u32 = 1;

/// The name `ign run` gives the model file in its output directory.
pub const MODEL_FILE: &str = "model.npz";

/// A model read from a file.
#[derive(Clone, Debug)]
pub struct Model {
    /// The weights and sparsity weights, checked against `scenario`.
    pub network: Network<f32>,
    /// The scenario parsed from `scenario_text`.
    pub scenario: Scenario,
    /// The scenario text exactly as stored in the file.
    pub scenario_text: String,
}

/// A model file that cannot be read or written. Every variant names the file
/// and, where there is one, the member or value at fault.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "model file {} not found; pass the model.npz that `ign run` writes",
        .path.display()
    )]
    NotFound { path: PathBuf },

    #[error("failed to read model file {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("failed to write model file {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },

    #[error(
        "{} is not an npz archive ({reason}); pass the model.npz that `ign run` writes",
        .path.display()
    )]
    NotNpz { path: PathBuf, reason: String },

    #[error("{}: member `{member}` is missing", .path.display())]
    MissingMember { path: PathBuf, member: String },

    /// A member that is not a readable `.npy` array: a truncated or invalid
    /// header, a length that disagrees with its shape, or a compressed entry.
    #[error("{}: member `{member}` is not a valid .npy array: {reason}", .path.display())]
    InvalidMember {
        path: PathBuf,
        member: String,
        reason: String,
    },

    #[error(
        "{}: member `{member}` has dtype {found}, expected {expected}",
        .path.display()
    )]
    WrongDtype {
        path: PathBuf,
        member: String,
        expected: &'static str,
        found: String,
    },

    #[error(
        "{}: member `{member}` has shape {shape:?}, expected {expected}",
        .path.display()
    )]
    WrongShape {
        path: PathBuf,
        member: String,
        shape: Vec<usize>,
        expected: String,
    },

    #[error(
        "{}: member `{member}` has {rows} rows, but `{below}` is {below_rows}x{below_cols}, \
         so `{member}` needs {below_cols} rows",
        .path.display()
    )]
    ShapesDoNotChain {
        path: PathBuf,
        below: String,
        below_rows: usize,
        below_cols: usize,
        member: String,
        rows: usize,
    },

    #[error(
        "{}: member `{member}` is {rows}x{cols}, but network.layers = {layers:?} in the \
         scenario requires {}x{}",
        .path.display(),
        .expected.0,
        .expected.1
    )]
    ScenarioMismatch {
        path: PathBuf,
        member: String,
        rows: usize,
        cols: usize,
        expected: (usize, usize),
        layers: Vec<usize>,
    },

    #[error(
        "{}: the network has {found} weight matrices, but network.layers = {layers:?} in the \
         scenario requires {}",
        .path.display(),
        .layers.len().saturating_sub(1)
    )]
    LayerCount {
        path: PathBuf,
        found: usize,
        layers: Vec<usize>,
    },

    #[error(
        "{}: member `{member}` matches no layer of network.layers = {layers:?} in the \
         scenario",
        .path.display()
    )]
    ExtraLayer {
        path: PathBuf,
        member: String,
        layers: Vec<usize>,
    },

    #[error(
        "{}: member `alpha` has {found} values, but the network has {expected} layers",
        .path.display()
    )]
    AlphaCount {
        path: PathBuf,
        found: usize,
        expected: usize,
    },

    #[error(
        "{}: member `{member}` contains {value} at row {row}, column {column}; weights must \
         be finite",
        .path.display()
    )]
    NonFinite {
        path: PathBuf,
        member: String,
        row: usize,
        column: usize,
        value: f32,
    },

    #[error(
        "{}: member `alpha` contains {value} for layer {layer}; it must be a finite number \
         >= 0",
        .path.display()
    )]
    InvalidAlpha {
        path: PathBuf,
        layer: usize,
        value: f32,
    },

    #[error(
        "{}: member `format` is {found:?}, but this ign reads format [{FORMAT_VERSION}]; \
         use the ign version that wrote the file",
        .path.display()
    )]
    UnknownFormat { path: PathBuf, found: Vec<u32> },

    /// The `scenario` member is not UTF-8 or not a valid scenario. `message`
    /// is the scenario error's one-line message.
    #[error(
        "{}: member `scenario` is not a valid scenario: {message}",
        .path.display()
    )]
    ScenarioText { path: PathBuf, message: String },
}

/// Saves a network and the scenario that produced it to `path`, replacing
/// any file there by a rename.
///
/// The network is checked first as [`load_model`] checks it, so a file that
/// saves also loads. The stored scenario text is the resolved scenario with
/// `ign_version` set, as `scenario.resolved.toml` contains it.
pub fn save_model(
    path: &Path,
    network: &Network<f32>,
    scenario: &Scenario,
) -> Result<(), StoreError> {
    check_network(path, network, scenario)?;
    let text = scenario_text(path, scenario)?;
    let write_error = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    write_atomic(path, |file| write_members(file, network, &text)).map_err(write_error)
}

/// Loads and checks a model file written by [`save_model`] (or by numpy with
/// the same members).
pub fn load_model(path: &Path) -> Result<Model, StoreError> {
    let mut archive = open_archive(path)?;
    let mut reader = MemberReader {
        path,
        archive: &mut archive.zip,
        limit: archive.len,
    };

    let format: Array1<u32> = reader.array("format", Dtype::U32)?;
    if format.len() != 1 {
        return Err(StoreError::WrongShape {
            path: path.to_owned(),
            member: "format".to_owned(),
            shape: format.shape().to_vec(),
            expected: "[1]".to_owned(),
        });
    }
    if format[0] != FORMAT_VERSION {
        return Err(StoreError::UnknownFormat {
            path: path.to_owned(),
            found: format.to_vec(),
        });
    }

    let bytes: Array1<u8> = reader.array("scenario", Dtype::U8)?;
    let (scenario, scenario_text) = parse_scenario(path, bytes.to_vec())?;
    let layers = &scenario.network.layers;
    reader.reject_extra_layers(layers)?;

    let mut weights = Vec::with_capacity(layers.len() - 1);
    for i in 1..layers.len() {
        let w: Array2<f32> = reader.array(&weight_name(i), Dtype::F32)?;
        weights.push(w);
    }
    let alpha: Array1<f32> = reader.array("alpha", Dtype::F32)?;
    let network = Network {
        weights,
        alpha: alpha.to_vec(),
    };
    check_network(path, &network, &scenario)?;
    Ok(Model {
        network,
        scenario,
        scenario_text,
    })
}

/// Writes a file through a temporary file in the same directory, which is
/// flushed, synced and renamed over `path`. The temporary file is removed on
/// any error, so `path` is left as it was.
pub(crate) fn write_atomic<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> io::Result<()>,
{
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = dir.join(temp_name);

    let result = (|| {
        let mut file = BufWriter::new(File::create(&temp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        // The write error is the one to report, so a failure to remove the
        // temporary file as well is ignored.
        let _ = std::fs::remove_file(&temp);
        return result;
    }
    // Syncing the directory makes the rename durable. Some file systems
    // cannot sync a directory, and the file itself is already complete, so a
    // failure here is not an error.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Returns the member name of `W_i` (`i` counts from 1).
fn weight_name(i: usize) -> String {
    format!("W{i}")
}

fn write_members<W: Write + Seek>(file: W, network: &Network<f32>, text: &str) -> io::Result<()> {
    let mut npz = NpzWriter::new(file);
    let to_io = |e: ndarray_npy::WriteNpzError| io::Error::other(e.to_string());
    npz.add_array("format", &Array1::from(vec![FORMAT_VERSION]))
        .map_err(to_io)?;
    npz.add_array("scenario", &Array1::from(text.as_bytes().to_vec()))
        .map_err(to_io)?;
    for (i, w) in network.weights.iter().enumerate() {
        npz.add_array(weight_name(i + 1), w).map_err(to_io)?;
    }
    npz.add_array("alpha", &Array1::from(network.alpha.clone()))
        .map_err(to_io)?;
    npz.finish().map_err(to_io)?;
    Ok(())
}

/// Serializes the resolved scenario and checks that the text parses back,
/// so that the saved file loads.
fn scenario_text(path: &Path, scenario: &Scenario) -> Result<String, StoreError> {
    let mut resolved = scenario.clone();
    resolved.ign_version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let text = toml::to_string_pretty(&resolved).map_err(|e| StoreError::ScenarioText {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    parse_scenario(path, text.clone().into_bytes())?;
    Ok(text)
}

/// Parses the bytes of the `scenario` member.
fn parse_scenario(path: &Path, bytes: Vec<u8>) -> Result<(Scenario, String), StoreError> {
    let invalid = |message: String| StoreError::ScenarioText {
        path: path.to_owned(),
        message,
    };
    let text = String::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8 ({e})")))?;
    // The scenario error starts with the path it was given, which would
    // repeat the model file's path, so it is given a placeholder and the
    // placeholder is cut off.
    let placeholder = Path::new("scenario");
    let scenario = Scenario::parse(placeholder, &text, &[]).map_err(|e| {
        let message = e.to_string();
        let message = message.strip_prefix("scenario: ").unwrap_or(&message);
        invalid(message.to_owned())
    })?;
    Ok((scenario, text))
}

/// Checks a network against its scenario: one matrix per layer, shapes that
/// chain and agree with `network.layers`, finite weights, and one finite
/// `alpha >= 0` per layer.
fn check_network(
    path: &Path,
    network: &Network<f32>,
    scenario: &Scenario,
) -> Result<(), StoreError> {
    let layers = &scenario.network.layers;
    let count = layers.len().saturating_sub(1);
    if network.weights.len() != count || count == 0 {
        return Err(StoreError::LayerCount {
            path: path.to_owned(),
            found: network.weights.len(),
            layers: layers.clone(),
        });
    }
    for (i, w) in network.weights.iter().enumerate() {
        let member = weight_name(i + 1);
        if i > 0 {
            let below = &network.weights[i - 1];
            if w.nrows() != below.ncols() {
                return Err(StoreError::ShapesDoNotChain {
                    path: path.to_owned(),
                    below: weight_name(i),
                    below_rows: below.nrows(),
                    below_cols: below.ncols(),
                    member,
                    rows: w.nrows(),
                });
            }
        }
        let expected = (layers[i], layers[i + 1]);
        if w.dim() != expected {
            return Err(StoreError::ScenarioMismatch {
                path: path.to_owned(),
                member,
                rows: w.nrows(),
                cols: w.ncols(),
                expected,
                layers: layers.clone(),
            });
        }
        if let Some(((row, column), &value)) = w.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(StoreError::NonFinite {
                path: path.to_owned(),
                member,
                row,
                column,
                value,
            });
        }
    }
    if network.alpha.len() != count {
        return Err(StoreError::AlphaCount {
            path: path.to_owned(),
            found: network.alpha.len(),
            expected: count,
        });
    }
    let bad_alpha = network
        .alpha
        .iter()
        .enumerate()
        .find(|(_, a)| !(a.is_finite() && **a >= 0.0));
    if let Some((i, &value)) = bad_alpha {
        return Err(StoreError::InvalidAlpha {
            path: path.to_owned(),
            layer: i + 1,
            value,
        });
    }
    Ok(())
}

/// An open archive and the length of its file.
struct Archive {
    zip: ZipArchive<BufReader<File>>,
    len: u64,
}

fn open_archive(path: &Path) -> Result<Archive, StoreError> {
    let read_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => StoreError::NotFound {
            path: path.to_owned(),
        },
        _ => StoreError::Read {
            path: path.to_owned(),
            source,
        },
    };
    let file = File::open(path).map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    if metadata.is_dir() {
        return Err(read_error(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory",
        )));
    }
    let zip = ZipArchive::new(BufReader::new(file)).map_err(|e| match e {
        ZipError::Io(source) if source.kind() != io::ErrorKind::UnexpectedEof => read_error(source),
        other => StoreError::NotNpz {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })?;
    Ok(Archive {
        zip,
        len: metadata.len(),
    })
}

/// The element types of the members, as numpy names them.
#[derive(Clone, Copy, Debug)]
enum Dtype {
    F32,
    U8,
    U32,
}

impl Dtype {
    /// Returns the numpy type code without its byte-order character.
    fn code(self) -> &'static str {
        match self {
            Dtype::F32 => "f4",
            Dtype::U8 => "u1",
            Dtype::U32 => "u4",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::U8 => "uint8",
            Dtype::U32 => "uint32",
        }
    }
}

/// Reads members of one archive, naming the file in every error.
struct MemberReader<'a> {
    path: &'a Path,
    archive: &'a mut ZipArchive<BufReader<File>>,
    /// The file's length, which no member can exceed.
    limit: u64,
}

impl MemberReader<'_> {
    fn invalid(&self, member: &str, reason: impl Into<String>) -> StoreError {
        invalid_member(self.path, member, reason)
    }

    /// Rejects `W{k}` members beyond the layers of the scenario.
    fn reject_extra_layers(&self, layers: &[usize]) -> Result<(), StoreError> {
        let extra = self.archive.file_names().find_map(|name| {
            let member = name.strip_suffix(".npy")?;
            let index: usize = member.strip_prefix('W')?.parse().ok()?;
            (index == 0 || index >= layers.len()).then(|| member.to_owned())
        });
        match extra {
            Some(member) => Err(StoreError::ExtraLayer {
                path: self.path.to_owned(),
                member,
                layers: layers.to_vec(),
            }),
            None => Ok(()),
        }
    }

    /// Reads the raw bytes of `member`.npy.
    fn bytes(&mut self, member: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path;
        let name = format!("{member}.npy");
        let entry = match self.archive.by_name(&name) {
            Ok(entry) => entry,
            Err(ZipError::FileNotFound) => {
                return Err(StoreError::MissingMember {
                    path: path.to_owned(),
                    member: member.to_owned(),
                });
            }
            Err(e) => return Err(invalid_member(path, member, e.to_string())),
        };
        let mut bytes = Vec::new();
        let read = entry.take(self.limit).read_to_end(&mut bytes);
        read.map_err(|e| invalid_member(path, member, e.to_string()))?;
        Ok(bytes)
    }

    /// Reads `member` as an array of `D`'s dimension and element type `A`,
    /// which `dtype` names.
    fn array<A, D>(&mut self, member: &str, dtype: Dtype) -> Result<Array<A, D>, StoreError>
    where
        A: ReadableElement,
        D: Dimension,
    {
        let bytes = self.bytes(member)?;
        let (header, data_len) = parse_header(&bytes).map_err(|r| self.invalid(member, r))?;

        let found = header.type_descriptor.to_string();
        let code = found
            .trim_matches('\'')
            .trim_start_matches(['<', '>', '|', '=']);
        if code != dtype.code() {
            return Err(self.wrong_dtype(member, dtype, found));
        }
        if Some(header.shape.len()) != D::NDIM {
            return Err(StoreError::WrongShape {
                path: self.path.to_owned(),
                member: member.to_owned(),
                shape: header.shape,
                expected: format!("{}-D", D::NDIM.unwrap_or(0)),
            });
        }
        // The reader allocates the array from the declared shape before it
        // reads any data, so the shape is checked against the bytes present.
        let needed = header
            .shape
            .iter()
            .try_fold(mem::size_of::<A>(), |n, &d| n.checked_mul(d));
        if needed != Some(data_len) {
            let reason = format!(
                "its header declares shape {:?}, which needs {} data bytes, but it contains {}",
                header.shape,
                needed.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
                data_len
            );
            return Err(self.invalid(member, reason));
        }

        Array::<A, D>::read_npy(bytes.as_slice()).map_err(|e| match e {
            ReadNpyError::WrongDescriptor(found) => {
                self.wrong_dtype(member, dtype, found.to_string())
            }
            other => self.invalid(member, other.to_string()),
        })
    }

    fn wrong_dtype(&self, member: &str, dtype: Dtype, found: String) -> StoreError {
        StoreError::WrongDtype {
            path: self.path.to_owned(),
            member: member.to_owned(),
            expected: dtype.name(),
            found,
        }
    }
}

fn invalid_member(path: &Path, member: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidMember {
        path: path.to_owned(),
        member: member.to_owned(),
        reason: reason.into(),
    }
}

/// Parses the header of a `.npy` file and returns it with the number of data
/// bytes after it.
///
/// The header length field is checked against the bytes present first,
/// because [`Header::from_reader`] allocates a buffer of that length before
/// reading it.
fn parse_header(bytes: &[u8]) -> Result<(Header, usize), String> {
    // Magic string (6 bytes), version (2 bytes), then the header length: a
    // little-endian u16 in version 1, a u32 in versions 2 and 3.
    let truncated = || format!("truncated header ({} bytes)", bytes.len());
    let major = *bytes.get(6).ok_or_else(truncated)?;
    let (start, header_len) = if major == 1 {
        let field = bytes.get(8..10).ok_or_else(truncated)?;
        (10, usize::from(u16::from_le_bytes([field[0], field[1]])))
    } else {
        let field = bytes.get(8..12).ok_or_else(truncated)?;
        let len = u32::from_le_bytes([field[0], field[1], field[2], field[3]]);
        (12, usize::try_from(len).unwrap_or(usize::MAX))
    };
    let data_start = start + header_len;
    if data_start > bytes.len() {
        return Err(format!(
            "its header length is {header_len} bytes, but only {} bytes follow",
            bytes.len() - start
        ));
    }
    let mut reader = bytes;
    let header = Header::from_reader(&mut reader).map_err(|e| e.to_string())?;
    Ok((header, reader.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_v1(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    #[test]
    fn header_counts_data_bytes() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        let bytes = npy_v1(header, &[0; 8]);
        let (parsed, data_len) = parse_header(&bytes).unwrap();
        assert_eq!(parsed.shape, vec![2]);
        assert_eq!(data_len, 8);
    }

    #[test]
    fn header_length_past_end_is_rejected() {
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        bytes.extend(u32::MAX.to_le_bytes());
        let reason = parse_header(&bytes).unwrap_err();
        assert_eq!(
            reason,
            "its header length is 4294967295 bytes, but only 0 bytes follow"
        );
    }

    #[test]
    fn short_header_is_truncated() {
        assert_eq!(
            parse_header(b"\x93NUM").unwrap_err(),
            "truncated header (4 bytes)"
        );
    }

    #[test]
    fn temp_file_is_removed_after_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let failed = write_atomic(&path, |_| Err(io::Error::other("disk full")));
        assert_eq!(failed.unwrap_err().to_string(), "disk full");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 0);
    }

    #[test]
    fn failed_write_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.npz");
        std::fs::write(&path, b"old contents").unwrap();
        let failed = write_atomic(&path, |file| {
            file.write_all(&[7; 100_000])?;
            file.flush()?;
            Err(io::Error::other("interrupted"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn successful_write_replaces_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.npy");
        std::fs::write(&path, b"old contents").unwrap();
        write_atomic(&path, |file| file.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}
