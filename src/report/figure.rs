//! PNG figures: mosaics of projective fields and a general 8-bit greyscale
//! writer that the other figures reuse.
//!
//! Invariant: a figure appears at its final path only when complete. Every
//! PNG is written to a temporary file in the destination directory and then
//! renamed over the destination, which is atomic on one file system, and the
//! temporary file is removed when any step fails.

use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayView1, ArrayView2};

/// Dark pixels between neighbouring tiles of a band.
pub const TILE_GAP: usize = 2;
/// Dark pixel rows between bands, wider than [`TILE_GAP`] so bands read as
/// separate rows.
pub const BAND_GAP: usize = 6;
/// Grey level of the gaps and of the unused space right of a short band.
pub const GAP_LEVEL: u8 = 0;

/// Largest PNG width or height, 2³¹ − 1, because PNG stores each dimension
/// as a four-byte integer limited to that value.
const PNG_MAX_DIMENSION: usize = (1 << 31) - 1;

/// Errors from building or writing a figure.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("failed to {operation} for {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("failed to encode PNG {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: png::EncodingError,
    },

    #[error("output path {} has no file name", path.display())]
    NoFileName { path: PathBuf },

    #[error("got {bands} bands but {lists} column lists, expected one list per band")]
    BandCount { bands: usize, lists: usize },

    #[error(
        "invalid tile size {image_rows} x {image_cols} at scale {scale}, expected all at least 1"
    )]
    InvalidTileSize {
        image_rows: usize,
        image_cols: usize,
        scale: usize,
    },

    #[error("band {band} has {rows} rows, expected {expected} (image_rows x image_cols)")]
    BandRows {
        band: usize,
        rows: usize,
        expected: usize,
    },

    #[error("column index {index} in band {band} is out of range for {columns} columns")]
    ColumnOutOfRange {
        band: usize,
        index: usize,
        columns: usize,
    },

    #[error("band {band}, column {column}, pixel {pixel} is {value}, expected a finite number")]
    NonFinite {
        band: usize,
        column: usize,
        pixel: usize,
        value: f32,
    },

    #[error("no columns selected in any band, expected at least one tile")]
    NoTiles,

    #[error("invalid image size {width} x {height}, expected each from 1 to 2^31 - 1")]
    InvalidImageSize { width: usize, height: usize },

    #[error("got {len} pixels for a {width} x {height} image, expected width x height")]
    PixelCount {
        width: usize,
        height: usize,
        len: usize,
    },

    #[error("failed to allocate a {width} x {height} figure")]
    Allocation { width: usize, height: usize },
}

/// Writes a PNG of projective fields like figure 1 of Rolfe, Cook and LeCun,
/// "Intrinsic gradient networks". There, band 1 shows columns of W1, each a
/// rows x cols image. Band 2 shows columns of W1·W2, which are the fields of
/// the second layer's units projected to pixel space.
///
/// `bands[b]` has `image_rows * image_cols` rows, and each of its columns is a
/// row-major image. `columns[b]` lists the columns of band `b` to draw, in
/// order, as one row of tiles. Each tile is normalised by its own maximum
/// |value| `m`, so a pixel `v` gets grey level `round((v / m + 1) · 127.5)`:
/// `−m` is 0 (black), 0 is 128 and `+m` is 255 (white). An all-zero tile is
/// flat 128. Every image pixel becomes a `scale` × `scale` block. Tiles are
/// [`TILE_GAP`] pixels apart and bands [`BAND_GAP`] pixels apart, so the
/// figure measures
///
/// ```text
/// width  = n·cols·scale + (n − 1)·TILE_GAP       n = longest column list
/// height = B·rows·scale + (B − 1)·BAND_GAP       B = number of bands
/// ```
///
/// A band with an empty column list stays as an empty row of the figure.
pub fn write_projective_fields(
    path: &Path,
    bands: &[ArrayView2<f32>],
    columns: &[Vec<usize>],
    image_rows: usize,
    image_cols: usize,
    scale: usize,
) -> Result<(), FigureError> {
    let layout = MosaicLayout::new(bands.len(), columns, image_rows, image_cols, scale)?;
    validate_bands(bands, columns, layout.image_rows * layout.image_cols)?;

    let mut pixels = allocate_pixels(layout.width, layout.height)?;
    for (band_index, (band, selected)) in bands.iter().zip(columns).enumerate() {
        for (position, &column) in selected.iter().enumerate() {
            let origin = layout.tile_origin(band_index, position);
            draw_tile(&mut pixels, &layout, origin, band.column(column));
        }
    }
    write_grey_png(path, layout.width, layout.height, &pixels)
}

/// Writes `pixels` (row-major, one byte per pixel, `width * height` bytes) as
/// an 8-bit greyscale PNG, atomically.
pub fn write_grey_png(
    path: &Path,
    width: usize,
    height: usize,
    pixels: &[u8],
) -> Result<(), FigureError> {
    let valid = |d: usize| (1..=PNG_MAX_DIMENSION).contains(&d);
    if !(valid(width) && valid(height)) {
        return Err(FigureError::InvalidImageSize { width, height });
    }
    if width.checked_mul(height) != Some(pixels.len()) {
        return Err(FigureError::PixelCount {
            width,
            height,
            len: pixels.len(),
        });
    }
    // Both casts are lossless because each dimension is at most 2^31 - 1.
    let (png_width, png_height) = (width as u32, height as u32);

    write_atomically(path, |file| {
        let mut encoder = png::Encoder::new(file, png_width, png_height);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(pixels)?;
        writer.finish()
    })
}

/// Pixel geometry of a projective-field mosaic.
#[derive(Debug)]
struct MosaicLayout {
    image_rows: usize,
    image_cols: usize,
    scale: usize,
    /// Tile width in figure pixels, `image_cols · scale`.
    tile_width: usize,
    /// Tile height in figure pixels, `image_rows · scale`.
    tile_height: usize,
    width: usize,
    height: usize,
}

impl MosaicLayout {
    /// Computes the figure size, or returns an error for a mismatched band
    /// count, an empty tile, no tiles at all or a size PNG cannot store.
    fn new(
        band_count: usize,
        columns: &[Vec<usize>],
        image_rows: usize,
        image_cols: usize,
        scale: usize,
    ) -> Result<Self, FigureError> {
        if band_count != columns.len() {
            return Err(FigureError::BandCount {
                bands: band_count,
                lists: columns.len(),
            });
        }
        if image_rows == 0 || image_cols == 0 || scale == 0 {
            return Err(FigureError::InvalidTileSize {
                image_rows,
                image_cols,
                scale,
            });
        }
        let tiles_per_row = columns.iter().map(Vec::len).max().unwrap_or(0);
        if tiles_per_row == 0 {
            return Err(FigureError::NoTiles);
        }

        // Saturating arithmetic: an overflowing size is reported as usize::MAX,
        // which the PNG limit check below rejects.
        let tile_width = image_cols.saturating_mul(scale);
        let tile_height = image_rows.saturating_mul(scale);
        let width = span(tiles_per_row, tile_width, TILE_GAP);
        let height = span(band_count, tile_height, BAND_GAP);
        if width > PNG_MAX_DIMENSION || height > PNG_MAX_DIMENSION {
            return Err(FigureError::InvalidImageSize { width, height });
        }

        Ok(Self {
            image_rows,
            image_cols,
            scale,
            tile_width,
            tile_height,
            width,
            height,
        })
    }

    /// Returns the figure pixel `(row, column)` of the top-left corner of
    /// tile `position` in band `band`.
    fn tile_origin(&self, band: usize, position: usize) -> (usize, usize) {
        let row = band * (self.tile_height + BAND_GAP);
        let column = position * (self.tile_width + TILE_GAP);
        (row, column)
    }
}

/// Returns `count · size + (count − 1) · gap` for `count >= 1`, saturating at
/// usize::MAX.
fn span(count: usize, size: usize, gap: usize) -> usize {
    let items = count.saturating_mul(size);
    let gaps = (count - 1).saturating_mul(gap);
    items.saturating_add(gaps)
}

/// Checks band row counts, column indices and that every drawn value is
/// finite.
fn validate_bands(
    bands: &[ArrayView2<f32>],
    columns: &[Vec<usize>],
    pixels_per_image: usize,
) -> Result<(), FigureError> {
    for (band_index, (band, selected)) in bands.iter().zip(columns).enumerate() {
        if band.nrows() != pixels_per_image {
            return Err(FigureError::BandRows {
                band: band_index,
                rows: band.nrows(),
                expected: pixels_per_image,
            });
        }
        for &column in selected {
            if column >= band.ncols() {
                return Err(FigureError::ColumnOutOfRange {
                    band: band_index,
                    index: column,
                    columns: band.ncols(),
                });
            }
            let image = band.column(column);
            let found = image.indexed_iter().find(|(_, v)| !v.is_finite());
            if let Some((pixel, &value)) = found {
                return Err(FigureError::NonFinite {
                    band: band_index,
                    column,
                    pixel,
                    value,
                });
            }
        }
    }
    Ok(())
}

/// Allocates a `width × height` canvas filled with [`GAP_LEVEL`], or returns
/// an error instead of aborting when memory runs out.
fn allocate_pixels(width: usize, height: usize) -> Result<Vec<u8>, FigureError> {
    let allocation_error = FigureError::Allocation { width, height };
    let Some(len) = width.checked_mul(height) else {
        return Err(allocation_error);
    };
    let mut pixels = Vec::new();
    if pixels.try_reserve_exact(len).is_err() {
        return Err(allocation_error);
    }
    pixels.resize(len, GAP_LEVEL);
    Ok(pixels)
}

/// Draws one normalised, enlarged image with its top-left corner at `origin`.
fn draw_tile(
    pixels: &mut [u8],
    layout: &MosaicLayout,
    origin: (usize, usize),
    image: ArrayView1<f32>,
) {
    let max_abs = image.iter().fold(0.0_f32, |acc, v| acc.max(v.abs()));
    let (origin_row, origin_column) = origin;
    for image_row in 0..layout.image_rows {
        for image_col in 0..layout.image_cols {
            let level = grey_level(image[image_row * layout.image_cols + image_col], max_abs);
            let top = origin_row + image_row * layout.scale;
            let left = origin_column + image_col * layout.scale;
            for row in top..top + layout.scale {
                let start = row * layout.width + left;
                pixels[start..start + layout.scale].fill(level);
            }
        }
    }
}

/// Maps `value` in [−max_abs, max_abs] to a grey level in [0, 255], with 0
/// at 128. A zero `max_abs` means an all-zero tile, drawn flat 128.
fn grey_level(value: f32, max_abs: f32) -> u8 {
    if max_abs == 0.0 {
        return 128;
    }
    let level = ((value / max_abs + 1.0) * 127.5).round();
    // |value| <= max_abs already keeps the level in [0, 255], so the clamp
    // only makes the cast obviously lossless.
    level.clamp(0.0, 255.0) as u8
}

/// Counter that keeps temporary names unique between threads of one process.
static TEMPORARY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs `encode` on a temporary file next to `path`, then syncs the file and
/// renames it to `path`. The temporary file is removed if any step fails.
fn write_atomically(
    path: &Path,
    encode: impl FnOnce(&mut BufWriter<File>) -> Result<(), png::EncodingError>,
) -> Result<(), FigureError> {
    let Some(file_name) = path.file_name() else {
        return Err(FigureError::NoFileName {
            path: path.to_path_buf(),
        });
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let counter = TEMPORARY_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temporary_name = format!(
        ".{}.{}.{counter}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    );
    let temporary = directory.join(temporary_name);

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(io_error("create a temporary file", path))?;

    let result = write_and_rename(file, &temporary, path, encode);
    if result.is_err() {
        // Best effort: the write error is the one worth reporting, and the
        // file may already be gone.
        let _ = fs::remove_file(&temporary);
    }
    result
}

fn write_and_rename(
    file: File,
    temporary: &Path,
    path: &Path,
    encode: impl FnOnce(&mut BufWriter<File>) -> Result<(), png::EncodingError>,
) -> Result<(), FigureError> {
    let mut writer = BufWriter::new(file);
    encode(&mut writer).map_err(|error| match error {
        png::EncodingError::IoError(source) => io_error("write PNG data", path)(source),
        other => FigureError::Encode {
            path: path.to_path_buf(),
            source: other,
        },
    })?;
    let file = writer
        .into_inner()
        .map_err(|error| io_error("write PNG data", path)(error.into_error()))?;
    file.sync_all()
        .map_err(io_error("sync the temporary file", path))?;
    drop(file);

    fs::rename(temporary, path).map_err(io_error("rename the temporary file", path))
}

/// Returns a closure that wraps an I/O error of `operation` on the figure at
/// `path`.
fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FigureError {
    let path = path.to_path_buf();
    move |source| FigureError::Io {
        operation,
        path,
        source,
    }
}
