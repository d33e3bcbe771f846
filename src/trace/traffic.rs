//! Message traffic per directed edge of the actor graph over a run, written as
//! a table (`traffic.csv`) and as a sender × receiver heat map
//! (`traffic.png`). The module also owns the atomic file writer that the
//! Chrome trace writer in `chrome.rs` reuses.
//!
//! Invariant: an output file appears at its final path only when complete.
//! Each file is written to a temporary file in the destination directory,
//! synced and renamed over the destination, which is atomic on one file
//! system. The temporary file is removed when any step fails.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Traffic on one directed edge of the actor graph over a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeTraffic {
    /// Id of the sending actor.
    pub from: usize,
    /// Id of the receiving actor.
    pub to: usize,
    /// Message kind, such as the name of a `MessageKind` variant.
    pub kind: &'static str,
    pub messages: u64,
    /// Payload bytes of all those messages together.
    pub bytes: u64,
}

/// Errors from writing `traffic.csv` or `traffic.png`.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("failed to {operation} for {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("failed to encode PNG {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: png::EncodingError,
    },

    #[error("output path {} has no file name", path.display())]
    NoFileName { path: PathBuf },

    #[error("cannot draw a traffic map of 0 actors, expected at least 1")]
    NoActors,

    #[error("edge {from} -> {to} names an actor outside 0..{actors}")]
    ActorOutOfRange {
        from: usize,
        to: usize,
        actors: usize,
    },

    #[error(
        "traffic map of {actors} actors at {cell} pixels per cell is too large for PNG, \
         expected at most 2^31 - 1 pixels per side"
    )]
    ImageTooLarge { actors: usize, cell: usize },

    #[error("failed to allocate a {side} x {side} traffic map")]
    Allocation { side: usize },
}

/// Header row of `traffic.csv`.
const CSV_HEADER: &str = "from,to,kind,messages,bytes";

/// Colour of a cell whose sender sent no message to its receiver. It is
/// white, which the viridis map never reaches, because viridis runs from dark
/// purple `#440154` to yellow `#fde725`.
pub const BACKGROUND: [u8; 3] = [255, 255, 255];

/// Largest cell side in pixels, reached for maps of at most 64 actors.
const MAX_CELL: usize = 16;

/// Image side in pixels that cells shrink towards as actors are added, down
/// to one pixel per cell.
const TARGET_SIDE: usize = 1024;

/// Largest PNG width or height, 2³¹ − 1, because PNG stores each dimension
/// as a four-byte integer limited to that value.
const PNG_MAX_DIMENSION: usize = (1 << 31) - 1;

/// Writes `traffic.csv`: the header `from,to,kind,messages,bytes`, then one
/// row per edge, sorted by `(from, to, kind)`.
///
/// `from` and `to` are written as the actor names `names[id]` (for example
/// `input[0..8]`, `layer1[3]` or `lambda`). An id outside `names` is written
/// as the number. Entries of `edges` with the same `(from, to, kind)` are
/// merged into one row by adding their counts. A field that contains a
/// comma, a double quote or a line break is quoted as RFC 4180 describes.
pub fn write_traffic_csv(
    path: &Path,
    edges: &[EdgeTraffic],
    names: &[String],
) -> Result<(), TrafficError> {
    let mut rows: BTreeMap<(usize, usize, &'static str), (u64, u64)> = BTreeMap::new();
    for edge in edges {
        let totals = rows.entry((edge.from, edge.to, edge.kind)).or_default();
        totals.0 = totals.0.saturating_add(edge.messages);
        totals.1 = totals.1.saturating_add(edge.bytes);
    }

    let name_of = |id: usize| -> Cow<'_, str> {
        match names.get(id) {
            Some(name) => csv_field(name),
            None => Cow::Owned(id.to_string()),
        }
    };
    let result = write_atomically(path, |writer| {
        writeln!(writer, "{CSV_HEADER}")?;
        for (&(from, to, kind), &(messages, bytes)) in &rows {
            let (from, to, kind) = (name_of(from), name_of(to), csv_field(kind));
            writeln!(writer, "{from},{to},{kind},{messages},{bytes}")?;
        }
        Ok(())
    });
    result.map_err(|failure| {
        failure.into_traffic_error(path, |source, path| TrafficError::Io {
            operation: "write CSV data",
            path,
            source,
        })
    })
}

/// Writes `traffic.png`, a heat map with one row per sender and one column
/// per receiver, and returns the cell side in pixels.
///
/// A cell's colour shows the messages `m` from its sender to its receiver,
/// summed over kinds, on a log scale through the viridis colour map:
///
/// ```text
/// t = log10(1 + m) / log10(1 + max)      max = largest m of any pair
/// ```
///
/// so the busiest pair is yellow and a pair with one message is near dark
/// purple. A pair with no message is [`BACKGROUND`] (white). Each cell is
/// `max(1, min(16, 1024 / actors))` pixels square, and the image is 8-bit
/// RGB, `actors · cell` pixels per side.
pub fn write_traffic_png(
    path: &Path,
    actors: usize,
    edges: &[EdgeTraffic],
) -> Result<usize, TrafficError> {
    if actors == 0 {
        return Err(TrafficError::NoActors);
    }
    let pairs = messages_per_pair(actors, edges)?;
    let cell = cell_size(actors);
    let side = actors
        .checked_mul(cell)
        .filter(|&side| side <= PNG_MAX_DIMENSION)
        .ok_or(TrafficError::ImageTooLarge { actors, cell })?;

    let mut pixels = allocate_rgb(side)?;
    let max = pairs.values().copied().max().unwrap_or(0);
    for (&(from, to), &messages) in &pairs {
        if messages > 0 {
            let colour = heat_colour(messages, max);
            paint_cell(&mut pixels, side, cell, (from, to), colour);
        }
    }

    // The cast is lossless because `side` is at most 2^31 - 1.
    let png_side = side as u32;
    let result = write_atomically(path, |writer| {
        let mut encoder = png::Encoder::new(writer, png_side, png_side);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut png_writer = encoder.write_header()?;
        png_writer.write_image_data(&pixels)?;
        png_writer.finish()
    });
    result.map_err(|failure| {
        failure.into_traffic_error(path, |error, path| match error {
            png::EncodingError::IoError(source) => TrafficError::Io {
                operation: "write PNG data",
                path,
                source,
            },
            source => TrafficError::Encode { path, source },
        })
    })?;
    Ok(cell)
}

/// Returns the cell side in pixels for a map of `actors` actors:
/// `max(1, min(16, 1024 / actors))`.
fn cell_size(actors: usize) -> usize {
    (TARGET_SIDE / actors).clamp(1, MAX_CELL)
}

/// Sums messages over kinds per `(from, to)` pair, or returns an error for
/// an edge with an actor id `>= actors`.
fn messages_per_pair(
    actors: usize,
    edges: &[EdgeTraffic],
) -> Result<BTreeMap<(usize, usize), u64>, TrafficError> {
    let mut pairs = BTreeMap::new();
    for edge in edges {
        if edge.from >= actors || edge.to >= actors {
            return Err(TrafficError::ActorOutOfRange {
                from: edge.from,
                to: edge.to,
                actors,
            });
        }
        let total: &mut u64 = pairs.entry((edge.from, edge.to)).or_default();
        *total = total.saturating_add(edge.messages);
    }
    Ok(pairs)
}

/// Maps `messages` in `1..=max` to viridis at `log10(1 + messages) /
/// log10(1 + max)`. The ratio of natural logarithms is the same number.
fn heat_colour(messages: u64, max: u64) -> [u8; 3] {
    // Counts above 2^53 lose precision as f64, which moves the colour by far
    // less than one step of the 8-bit map.
    let t = (messages as f64).ln_1p() / (max as f64).ln_1p();
    let colour = colorous::VIRIDIS.eval_continuous(t);
    [colour.r, colour.g, colour.b]
}

/// Allocates a `side × side` RGB canvas filled with [`BACKGROUND`], or
/// returns an error instead of aborting when memory runs out.
fn allocate_rgb(side: usize) -> Result<Vec<u8>, TrafficError> {
    let allocation_error = TrafficError::Allocation { side };
    let Some(len) = side.checked_mul(side).and_then(|area| area.checked_mul(3)) else {
        return Err(allocation_error);
    };
    let mut pixels = Vec::new();
    if pixels.try_reserve_exact(len).is_err() {
        return Err(allocation_error);
    }
    pixels.extend(BACKGROUND.iter().copied().cycle().take(len));
    Ok(pixels)
}

/// Fills the cell of sender row `from` and receiver column `to` with
/// `colour`.
fn paint_cell(
    pixels: &mut [u8],
    side: usize,
    cell: usize,
    (from, to): (usize, usize),
    colour: [u8; 3],
) {
    let left = to * cell;
    for row in from * cell..(from + 1) * cell {
        let start = (row * side + left) * 3;
        for pixel in pixels[start..start + cell * 3].chunks_exact_mut(3) {
            pixel.copy_from_slice(&colour);
        }
    }
}

/// Returns `value` quoted as RFC 4180 describes when it contains a comma, a
/// double quote or a line break, and unchanged otherwise.
fn csv_field(value: &str) -> Cow<'_, str> {
    if value.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", value.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(value)
    }
}

/// A failed atomic write: which step failed, or the error that the caller's
/// write step returned.
#[derive(Debug)]
pub(super) enum AtomicWriteError<E> {
    NoFileName,
    Io {
        operation: &'static str,
        source: io::Error,
    },
    Write(E),
}

impl<E> AtomicWriteError<E> {
    /// Converts to a [`TrafficError`] for `path`, passing an error of the
    /// caller's write step to `write_error`.
    fn into_traffic_error(
        self,
        path: &Path,
        write_error: impl FnOnce(E, PathBuf) -> TrafficError,
    ) -> TrafficError {
        let path = path.to_path_buf();
        match self {
            AtomicWriteError::NoFileName => TrafficError::NoFileName { path },
            AtomicWriteError::Io { operation, source } => TrafficError::Io {
                operation,
                path,
                source,
            },
            AtomicWriteError::Write(error) => write_error(error, path),
        }
    }
}

/// Counter that keeps temporary names unique between threads of one process.
static TEMPORARY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs `write` on a temporary file `.NAME.tmp-PID-N` next to `path`, then
/// flushes, syncs and renames it to `path`. The temporary file is removed if
/// any step fails.
pub(super) fn write_atomically<E>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
) -> Result<(), AtomicWriteError<E>> {
    let Some(file_name) = path.file_name() else {
        return Err(AtomicWriteError::NoFileName);
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let counter = TEMPORARY_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temporary_name = format!(
        ".{}.tmp-{}-{counter}",
        file_name.to_string_lossy(),
        std::process::id()
    );
    let temporary = directory.join(temporary_name);

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(|source| AtomicWriteError::Io {
            operation: "create a temporary file",
            source,
        })?;

    let result = write_and_rename(file, &temporary, path, write);
    if result.is_err() {
        // Best effort: the write error is the one worth reporting, and the
        // file may already be gone.
        let _ = fs::remove_file(&temporary);
    }
    result
}

fn write_and_rename<E>(
    file: File,
    temporary: &Path,
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
) -> Result<(), AtomicWriteError<E>> {
    let io_error = |operation| move |source| AtomicWriteError::Io { operation, source };

    let mut writer = BufWriter::new(file);
    write(&mut writer).map_err(AtomicWriteError::Write)?;
    let file = writer
        .into_inner()
        .map_err(|error| io_error("flush the temporary file")(error.into_error()))?;
    file.sync_all()
        .map_err(io_error("sync the temporary file"))?;
    drop(file);

    fs::rename(temporary, path).map_err(io_error("rename the temporary file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: usize, to: usize, kind: &'static str, messages: u64, bytes: u64) -> EdgeTraffic {
        EdgeTraffic {
            from,
            to,
            kind,
            messages,
            bytes,
        }
    }

    fn names() -> Vec<String> {
        ["input[0..8]", "layer1[3]", "lambda"]
            .iter()
            .map(|name| name.to_string())
            .collect()
    }

    /// Decodes an RGB PNG into `(width, height, pixels)`.
    fn decode_rgb(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = io::BufReader::new(File::open(path).expect("open PNG"));
        let mut reader = png::Decoder::new(file)
            .read_info()
            .expect("read PNG header");
        let size = reader.output_buffer_size().expect("buffer size");
        let mut pixels = vec![0; size];
        let info = reader.next_frame(&mut pixels).expect("decode PNG");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        pixels.truncate(info.buffer_size());
        (info.width, info.height, pixels)
    }

    /// Returns the RGB colour at the centre of cell `(from, to)`.
    fn cell_colour(pixels: &[u8], side: usize, cell: usize, from: usize, to: usize) -> [u8; 3] {
        let (row, column) = (from * cell + cell / 2, to * cell + cell / 2);
        let start = (row * side + column) * 3;
        [pixels[start], pixels[start + 1], pixels[start + 2]]
    }

    #[test]
    fn csv_sorts_rows_and_writes_names() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("traffic.csv");
        let edges = [
            edge(2, 1, "lambda", 4, 32),
            edge(1, 2, "residual", 7, 56),
            edge(1, 0, "residual", 3, 24),
        ];

        write_traffic_csv(&path, &edges, &names()).expect("write CSV");

        let text = fs::read_to_string(&path).expect("read CSV");
        assert_eq!(
            text,
            "from,to,kind,messages,bytes\n\
             layer1[3],input[0..8],residual,3,24\n\
             layer1[3],lambda,residual,7,56\n\
             lambda,layer1[3],lambda,4,32\n"
        );
    }

    #[test]
    fn csv_writes_unknown_ids_as_numbers() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("traffic.csv");
        let edges = [edge(0, 9, "state", 1, 8)];

        write_traffic_csv(&path, &edges, &names()).expect("write CSV");

        let text = fs::read_to_string(&path).expect("read CSV");
        assert_eq!(
            text,
            "from,to,kind,messages,bytes\ninput[0..8],9,state,1,8\n"
        );
    }

    #[test]
    fn csv_merges_duplicate_edges() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("traffic.csv");
        let edges = [edge(0, 1, "state", 2, 16), edge(0, 1, "state", 3, 24)];

        write_traffic_csv(&path, &edges, &names()).expect("write CSV");

        let text = fs::read_to_string(&path).expect("read CSV");
        assert_eq!(
            text,
            "from,to,kind,messages,bytes\ninput[0..8],layer1[3],state,5,40\n"
        );
    }

    #[test]
    fn csv_quotes_names_with_commas() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("traffic.csv");
        let names = vec!["a,b".to_string(), "say \"hi\"".to_string()];

        write_traffic_csv(&path, &[edge(0, 1, "state", 1, 8)], &names).expect("write CSV");

        let text = fs::read_to_string(&path).expect("read CSV");
        assert_eq!(
            text,
            "from,to,kind,messages,bytes\n\"a,b\",\"say \"\"hi\"\"\",state,1,8\n"
        );
    }

    #[test]
    fn csv_leaves_no_temporary_file() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("traffic.csv");

        write_traffic_csv(&path, &[], &names()).expect("write CSV");

        let entries: Vec<_> = fs::read_dir(directory.path())
            .expect("list directory")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("traffic.csv")]);
    }

    #[test]
    fn csv_missing_directory_is_io_error() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("missing").join("traffic.csv");

        let error = write_traffic_csv(&path, &[], &names()).expect_err("directory is missing");

        assert!(
            matches!(&error, TrafficError::Io { path: p, .. } if *p == path),
            "{error:?}"
        );
    }

    #[test]
    fn png_colours_cells_by_log_messages() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("traffic.png");
        let edges = [
            // Two kinds on one pair add up to the maximum, 1000 messages.
            edge(0, 1, "state", 600, 4800),
            edge(0, 1, "lambda", 400, 3200),
            edge(1, 0, "residual", 10, 80),
            edge(2, 0, "state", 0, 0),
        ];

        let cell = write_traffic_png(&path, 3, &edges).expect("write PNG");

        assert_eq!(cell, 16);
        let (width, height, pixels) = decode_rgb(&path);
        assert_eq!((width, height), (48, 48));
        let side = 48;
        let max_cell = cell_colour(&pixels, side, cell, 0, 1);
        let mid_cell = cell_colour(&pixels, side, cell, 1, 0);
        // viridis at t = 1 is #fde725.
        assert_eq!(max_cell, [0xfd, 0xe7, 0x25]);
        assert_ne!(mid_cell, max_cell);
        assert_ne!(mid_cell, BACKGROUND);
        // An edge with zero messages and a pair with no edge both stay white.
        assert_eq!(cell_colour(&pixels, side, cell, 2, 0), BACKGROUND);
        assert_eq!(cell_colour(&pixels, side, cell, 2, 2), BACKGROUND);
        // The last pixel of the max cell is coloured, the next one is not.
        let last = (15 * side + 31) * 3;
        assert_eq!(pixels[last..last + 3], max_cell);
        assert_eq!(pixels[last + 3..last + 6], BACKGROUND);
    }

    #[test]
    fn png_mid_cell_matches_log_scale() {
        // log10(11) / log10(1001) = 0.34712 of the way along viridis.
        let expected = colorous::VIRIDIS.eval_continuous(11f64.log10() / 1001f64.log10());

        assert_eq!(heat_colour(10, 1000), [expected.r, expected.g, expected.b]);
        assert_eq!(heat_colour(1000, 1000), [0xfd, 0xe7, 0x25]);
    }

    #[test]
    fn png_one_actor_without_edges_is_background() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("traffic.png");

        let cell = write_traffic_png(&path, 1, &[]).expect("write PNG");

        assert_eq!(cell, 16);
        let (width, height, pixels) = decode_rgb(&path);
        assert_eq!((width, height), (16, 16));
        assert!(pixels.chunks_exact(3).all(|pixel| pixel == BACKGROUND));
    }

    #[test]
    fn png_zero_actors_is_error() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("traffic.png");

        let error = write_traffic_png(&path, 0, &[]).expect_err("no actors");

        assert!(matches!(error, TrafficError::NoActors), "{error:?}");
        assert!(!path.exists());
    }

    #[test]
    fn png_out_of_range_actor_is_error() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().join("traffic.png");
        let edges = [edge(0, 1, "state", 1, 8), edge(1, 3, "state", 1, 8)];

        let error = write_traffic_png(&path, 3, &edges).expect_err("actor 3 of 3");

        assert!(
            matches!(
                error,
                TrafficError::ActorOutOfRange {
                    from: 1,
                    to: 3,
                    actors: 3
                }
            ),
            "{error:?}"
        );
        assert!(!path.exists());
    }

    #[test]
    fn cell_size_shrinks_with_actors() {
        assert_eq!(cell_size(1), 16);
        assert_eq!(cell_size(64), 16);
        assert_eq!(cell_size(65), 15);
        assert_eq!(cell_size(100), 10);
        assert_eq!(cell_size(1024), 1);
        assert_eq!(cell_size(5000), 1);
    }
}
