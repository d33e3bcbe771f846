//! IDX file reading and validation for the four MNIST-format files.
//!
//! This module owns everything that looks inside one file: gzip detection by
//! magic bytes, the IDX header, the exact length check and the label range
//! check. Invariant: a file that passes [`read_validated`] is exactly
//! `header_len + count * item_size` bytes long, its images are 28x28 and its
//! labels are 0..=9, so the `mnist` crate (which panics on anything else) can
//! parse it.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::DataError;

/// Rows and columns of an MNIST-format image, the only size the `mnist`
/// crate 0.6 accepts.
pub const IMAGE_SIDE: u32 = 28;

/// The first two bytes of every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Bytes read before the header is decoded: a whole IDX header, and enough
/// of a non-IDX file to quote its first line in the error.
const PEEK_LEN: u64 = 64;

/// Upper bound on the buffer reserved from a header's declared size, so that
/// a header declaring billions of images cannot make us allocate that much
/// before the length check rejects it.
const MAX_RESERVE: u64 = 1 << 27;

/// The kind of an IDX file in an MNIST-format release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxKind {
    /// `idx3-ubyte`: magic 0x00000803, then count, rows and columns.
    Images,
    /// `idx1-ubyte`: magic 0x00000801, then count.
    Labels,
}

impl IdxKind {
    /// Returns the big-endian magic number that opens a file of this kind.
    pub fn magic(self) -> u32 {
        match self {
            IdxKind::Images => 0x0000_0803,
            IdxKind::Labels => 0x0000_0801,
        }
    }

    /// Header length in bytes: the magic and one `u32` per dimension.
    pub fn header_len(self) -> usize {
        match self {
            IdxKind::Images => 16,
            IdxKind::Labels => 8,
        }
    }

    fn other(self) -> IdxKind {
        match self {
            IdxKind::Images => IdxKind::Labels,
            IdxKind::Labels => IdxKind::Images,
        }
    }
}

impl fmt::Display for IdxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdxKind::Images => "images",
            IdxKind::Labels => "labels",
        })
    }
}

/// The decoded header of an IDX file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdxHeader {
    pub kind: IdxKind,
    /// Number of images or labels the header declares.
    pub count: u32,
    /// Image rows; 1 for label files.
    pub rows: u32,
    /// Image columns; 1 for label files.
    pub cols: u32,
}

impl IdxHeader {
    /// Bytes per item: `rows * cols` for an image, 1 for a label.
    pub fn item_size(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.cols)
    }

    /// Returns the exact file length this header implies.
    pub fn expected_len(&self) -> u64 {
        self.kind.header_len() as u64 + u64::from(self.count) * self.item_size()
    }
}

/// A validated IDX file, decompressed if its source was gzipped.
#[derive(Debug)]
pub struct IdxFile {
    pub header: IdxHeader,
    /// The whole raw file, header included.
    pub bytes: Vec<u8>,
}

/// Reads the file at `path`, gunzips it if it starts with the gzip magic
/// bytes whatever its name, and validates it as an IDX file of `kind`.
pub fn read_validated(path: &Path, kind: IdxKind) -> Result<IdxFile, DataError> {
    let read_error = |source| DataError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let mut start = Vec::with_capacity(GZIP_MAGIC.len());
    (&mut file)
        .take(GZIP_MAGIC.len() as u64)
        .read_to_end(&mut start)
        .map_err(read_error)?;
    file.seek(SeekFrom::Start(0)).map_err(read_error)?;

    let idx = if start == GZIP_MAGIC {
        let mut decoder = MultiGzDecoder::new(io::BufReader::new(file));
        read_stream(path, kind, &mut decoder, None).map_err(|error| match error {
            // Every read error inside the decoder means the stream is bad.
            DataError::Read { path, source } => DataError::Gzip { path, source },
            other => other,
        })?
    } else {
        let file_len = file.metadata().map_err(read_error)?.len();
        read_stream(path, kind, &mut io::BufReader::new(file), Some(file_len))?
    };

    if kind == IdxKind::Labels {
        check_labels(path, &idx.bytes[kind.header_len()..])?;
    }
    Ok(idx)
}

/// Reads one IDX stream, `raw_len` being the file length when the stream is
/// the file itself (so the length check needs no read) and `None` when it is
/// decompressed.
fn read_stream(
    path: &Path,
    kind: IdxKind,
    reader: &mut dyn Read,
    raw_len: Option<u64>,
) -> Result<IdxFile, DataError> {
    let read_error = |source| DataError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Peeking past the header lets a rejection quote the start of the file.
    let mut bytes = Vec::with_capacity(PEEK_LEN as usize);
    reader
        .take(PEEK_LEN)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let header = parse_header(path, kind, &bytes)?;
    let expected = header.expected_len();
    if let Some(actual) = raw_len {
        check_len(path, &header, actual, false)?;
    }

    let remaining = expected.saturating_sub(bytes.len() as u64);
    bytes.reserve(remaining.min(MAX_RESERVE) as usize);
    reader
        .take(remaining)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let mut actual = bytes.len() as u64;
    if actual >= expected && raw_len.is_none() {
        // Count trailing bytes without keeping them, only for the message.
        actual += io::copy(reader, &mut io::sink()).map_err(read_error)?;
    }
    check_len(path, &header, actual, raw_len.is_none())?;
    Ok(IdxFile { header, bytes })
}

/// Checks a cached file cheaply: header, exact length, and for labels the
/// value range, which costs one read of at most 60 kB for MNIST.
pub fn check_cached(path: &Path, kind: IdxKind) -> Result<IdxHeader, DataError> {
    let read_error = |source| DataError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let mut head = Vec::with_capacity(kind.header_len());
    (&mut file)
        .take(kind.header_len() as u64)
        .read_to_end(&mut head)
        .map_err(read_error)?;
    let header = parse_header(path, kind, &head)?;
    let actual = file.metadata().map_err(read_error)?.len();
    check_len(path, &header, actual, false)?;
    if kind == IdxKind::Labels {
        let mut labels = Vec::new();
        file.read_to_end(&mut labels).map_err(read_error)?;
        check_labels(path, &labels)?;
    }
    Ok(header)
}

/// Decodes and checks the header at the start of `bytes`.
pub fn parse_header(path: &Path, kind: IdxKind, bytes: &[u8]) -> Result<IdxHeader, DataError> {
    let too_short = || DataError::TooShort {
        path: path.to_path_buf(),
        kind,
        len: bytes.len(),
        header_len: kind.header_len(),
    };
    let word = |i: usize| -> Option<u32> {
        let chunk = bytes.get(4 * i..4 * i + 4)?;
        Some(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
    };

    let magic = word(0).ok_or_else(too_short)?;
    if magic != kind.magic() {
        return Err(if let Some(start) = html_start(bytes) {
            DataError::Html {
                path: path.to_path_buf(),
                kind,
                magic,
                start,
            }
        } else if magic == kind.other().magic() {
            DataError::WrongKind {
                path: path.to_path_buf(),
                expected: kind,
                found: kind.other(),
            }
        } else {
            DataError::BadMagic {
                path: path.to_path_buf(),
                expected: kind.magic(),
                found: magic,
            }
        });
    }

    let count = word(1).ok_or_else(too_short)?;
    let header = match kind {
        IdxKind::Labels => IdxHeader {
            kind,
            count,
            rows: 1,
            cols: 1,
        },
        IdxKind::Images => {
            let rows = word(2).ok_or_else(too_short)?;
            let cols = word(3).ok_or_else(too_short)?;
            if rows != IMAGE_SIDE || cols != IMAGE_SIDE {
                return Err(DataError::Dimensions {
                    path: path.to_path_buf(),
                    rows,
                    cols,
                });
            }
            IdxHeader {
                kind,
                count,
                rows,
                cols,
            }
        }
    };
    Ok(header)
}

fn check_len(path: &Path, header: &IdxHeader, actual: u64, gzip: bool) -> Result<(), DataError> {
    if actual == header.expected_len() {
        return Ok(());
    }
    Err(DataError::Length {
        path: path.to_path_buf(),
        kind: header.kind,
        count: header.count,
        item_size: header.item_size(),
        expected: header.expected_len(),
        actual,
        gzip,
    })
}

fn check_labels(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    match labels.iter().position(|&label| label > 9) {
        None => Ok(()),
        Some(index) => Err(DataError::BadLabel {
            path: path.to_path_buf(),
            index,
            value: labels[index],
        }),
    }
}

/// Returns the first line of `bytes`, shortened, when they look like HTML or
/// XML (first non-blank byte `<`), the usual content of a failed download.
fn html_start(bytes: &[u8]) -> Option<String> {
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let first = text.iter().position(|b| !b.is_ascii_whitespace())?;
    let text = &text[first..];
    if text.first() != Some(&b'<') {
        return None;
    }
    let line: String = text
        .iter()
        .take_while(|&&b| b != b'\n' && b != b'\r')
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn image_header_decodes() {
        let bytes = header_bytes(&[0x803, 7, 28, 28]);
        let header = parse_header(Path::new("x"), IdxKind::Images, &bytes).unwrap();
        assert_eq!(header.count, 7);
        assert_eq!(header.item_size(), 784);
        assert_eq!(header.expected_len(), 16 + 7 * 784);
    }

    #[test]
    fn label_header_decodes() {
        let bytes = header_bytes(&[0x801, 60_000]);
        let header = parse_header(Path::new("x"), IdxKind::Labels, &bytes).unwrap();
        assert_eq!(header.expected_len(), 60_008);
    }

    #[test]
    fn swapped_kind_is_named() {
        let bytes = header_bytes(&[0x801, 3]);
        let error = parse_header(Path::new("x"), IdxKind::Images, &bytes).unwrap_err();
        assert!(matches!(
            error,
            DataError::WrongKind {
                expected: IdxKind::Images,
                found: IdxKind::Labels,
                ..
            }
        ));
    }

    #[test]
    fn short_header_is_rejected() {
        let bytes = header_bytes(&[0x803, 3]);
        let error = parse_header(Path::new("x"), IdxKind::Images, &bytes).unwrap_err();
        assert!(matches!(
            error,
            DataError::TooShort {
                len: 8,
                header_len: 16,
                ..
            }
        ));
    }

    #[test]
    fn html_start_skips_bom_and_blanks() {
        let start = html_start(b"\xef\xbb\xbf \n<!DOCTYPE html>\n<html>");
        assert_eq!(start.as_deref(), Some("<!DOCTYPE html>"));
        assert_eq!(html_start(b"\x00\x00\x08\x03"), None);
    }
}
