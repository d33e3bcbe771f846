//! Tests of the PNG figure writers: exact layout and grey levels of the
//! projective-field mosaic, input validation and atomic writes.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ign::report::figure::{BAND_GAP, GAP_LEVEL, TILE_GAP};
use ign::report::{FigureError, write_grey_png, write_projective_fields};
use ndarray::{Array2, array};

/// Decodes an 8-bit greyscale PNG into `(width, height, pixels)`.
fn read_grey_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut reader = png::Decoder::new(BufReader::new(file))
        .read_info()
        .expect("valid PNG header");
    let mut buffer = vec![0; reader.output_buffer_size().expect("buffer size fits")];
    let info = reader.next_frame(&mut buffer).expect("valid PNG data");
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buffer.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buffer)
}

/// Lists the names in `directory`, sorted.
fn directory_entries(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .expect("readable directory")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Builds a band of three 2 × 2 images, one per column:
/// column 0 = [1, −1; 0.5, 0], column 1 all zero, column 2 = [−2, −1; 0, −0.5].
fn first_band() -> Array2<f32> {
    array![
        [1.0_f32, 0.0, -2.0],
        [-1.0, 0.0, -1.0],
        [0.5, 0.0, 0.0],
        [0.0, 0.0, -0.5],
    ]
}

/// Builds a band of two 2 × 2 images: column 0 = [0, 0; 0, 3], column 1 = [4, 2; 0, −4].
fn second_band() -> Array2<f32> {
    array![[0.0_f32, 4.0], [0.0, 2.0], [0.0, 0.0], [3.0, -4.0]]
}

#[test]
fn gaps_have_documented_widths() {
    assert_eq!(TILE_GAP, 2);
    assert_eq!(BAND_GAP, 6);
    assert_eq!(GAP_LEVEL, 0);
}

#[test]
fn projective_fields_have_exact_layout_and_levels() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("fields.png");
    let first = first_band();
    let second = second_band();
    let columns = vec![vec![0, 1, 2], vec![1]];

    write_projective_fields(&path, &[first.view(), second.view()], &columns, 2, 2, 2)
        .expect("valid figure");
    let (width, height, pixels) = read_grey_png(&path);

    // Tiles are 4 × 4 at scale 2: width 3·4 + 2·2, height 2·4 + 6.
    assert_eq!(width, 16);
    assert_eq!(height, 14);
    let at = |row: usize, column: usize| pixels[row * width + column];

    // Band 0, tile 0 (x 0..4): max |value| 1.
    assert_eq!(at(0, 0), 255, "+max is white");
    assert_eq!(at(1, 1), 255, "pixel enlarged to 2 x 2");
    assert_eq!(at(0, 2), 0, "-max is black");
    assert_eq!(at(2, 0), 191, "0.5 of max is round(1.5 * 127.5)");
    assert_eq!(at(3, 3), 128, "zero is mid-grey");

    // Tile gap at x 4..6, then the all-zero tile at x 6..10.
    for row in 0..4 {
        assert_eq!(at(row, 4), GAP_LEVEL, "gap row {row}");
        assert_eq!(at(row, 5), GAP_LEVEL, "gap row {row}");
        for column in 6..10 {
            assert_eq!(at(row, column), 128, "zero tile at ({row}, {column})");
        }
    }

    // Negative tile at x 12..16: max |value| 2.
    assert_eq!(at(0, 12), 0, "-2 is black");
    assert_eq!(at(1, 14), 64, "-1 is round(0.5 * 127.5)");
    assert_eq!(at(2, 12), 128, "zero is mid-grey");
    assert_eq!(at(3, 15), 96, "-0.5 is round(0.75 * 127.5)");

    // Band gap at y 4..10 across the whole width.
    for row in 4..10 {
        assert!(
            (0..width).all(|column| at(row, column) == GAP_LEVEL),
            "row {row}"
        );
    }

    // Band 1 draws its column 1 at y 10..14: max |value| 4.
    assert_eq!(at(10, 0), 255);
    assert_eq!(at(10, 2), 191, "2 of 4 is round(1.5 * 127.5)");
    assert_eq!(at(12, 0), 128);
    assert_eq!(at(13, 3), 0);
    // The rest of the short band is background.
    assert!((4..width).all(|column| at(11, column) == GAP_LEVEL));
}

#[test]
fn projective_fields_file_is_the_only_entry() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("fields.png");
    let first = first_band();

    write_projective_fields(&path, &[first.view()], &[vec![2, 0]], 2, 2, 1).expect("valid figure");

    assert_eq!(directory_entries(directory.path()), vec!["fields.png"]);
    let (width, height, pixels) = read_grey_png(&path);
    assert_eq!((width, height), (6, 2));
    assert_eq!(
        pixels,
        vec![
            0, 64, GAP_LEVEL, GAP_LEVEL, 255, 0, 128, 96, GAP_LEVEL, GAP_LEVEL, 191, 128
        ]
    );
}

#[test]
fn column_out_of_range_names_band_and_index() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("fields.png");
    let first = first_band();
    let second = second_band();

    let error = write_projective_fields(
        &path,
        &[first.view(), second.view()],
        &[vec![0], vec![1, 2]],
        2,
        2,
        1,
    )
    .expect_err("band 1 has two columns");

    assert!(
        matches!(
            error,
            FigureError::ColumnOutOfRange {
                band: 1,
                index: 2,
                columns: 2
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "column index 2 in band 1 is out of range for 2 columns"
    );
    assert!(directory_entries(directory.path()).is_empty());
}

#[test]
fn wrong_band_row_count_is_rejected() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let band = Array2::<f32>::zeros((5, 2));

    let error = write_projective_fields(
        &directory.path().join("fields.png"),
        &[band.view()],
        &[vec![0]],
        2,
        2,
        1,
    )
    .expect_err("5 rows for 2 x 2 images");

    assert!(
        matches!(
            error,
            FigureError::BandRows {
                band: 0,
                rows: 5,
                expected: 4
            }
        ),
        "{error:?}"
    );
    assert!(directory_entries(directory.path()).is_empty());
}

#[test]
fn non_finite_value_is_rejected() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut band = first_band();
    band[[3, 2]] = f32::INFINITY;

    let error = write_projective_fields(
        &directory.path().join("fields.png"),
        &[band.view()],
        &[vec![0, 2]],
        2,
        2,
        1,
    )
    .expect_err("infinite value in column 2");

    assert!(
        matches!(
            error,
            FigureError::NonFinite {
                band: 0,
                column: 2,
                pixel: 3,
                value: f32::INFINITY
            }
        ),
        "{error:?}"
    );
}

#[test]
fn mismatched_band_and_column_lists_are_rejected() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let first = first_band();

    let error = write_projective_fields(
        &directory.path().join("fields.png"),
        &[first.view()],
        &[vec![0], vec![0]],
        2,
        2,
        1,
    )
    .expect_err("one band, two lists");

    assert!(
        matches!(error, FigureError::BandCount { bands: 1, lists: 2 }),
        "{error:?}"
    );
}

#[test]
fn empty_selection_and_zero_scale_are_rejected() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("fields.png");
    let first = first_band();

    let error =
        write_projective_fields(&path, &[first.view()], &[vec![]], 2, 2, 1).expect_err("no tiles");
    assert!(matches!(error, FigureError::NoTiles), "{error:?}");

    let error = write_projective_fields(&path, &[first.view()], &[vec![0]], 2, 2, 0)
        .expect_err("zero scale");
    assert!(
        matches!(
            error,
            FigureError::InvalidTileSize {
                image_rows: 2,
                image_cols: 2,
                scale: 0
            }
        ),
        "{error:?}"
    );
}

#[test]
fn grey_png_round_trips_pixels() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("grey.png");
    let pixels = [0, 50, 100, 150, 200, 255];

    write_grey_png(&path, 3, 2, &pixels).expect("valid image");

    assert_eq!(read_grey_png(&path), (3, 2, pixels.to_vec()));
}

#[test]
fn grey_png_replaces_existing_file() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("grey.png");
    std::fs::write(&path, b"old contents").expect("writable directory");

    write_grey_png(&path, 1, 1, &[77]).expect("valid image");

    assert_eq!(read_grey_png(&path), (1, 1, vec![77]));
    assert_eq!(directory_entries(directory.path()), vec!["grey.png"]);
}

#[test]
fn grey_png_with_wrong_pixel_count_writes_nothing() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("grey.png");

    let error = write_grey_png(&path, 3, 2, &[0; 5]).expect_err("5 pixels for 3 x 2");

    assert!(
        matches!(
            error,
            FigureError::PixelCount {
                width: 3,
                height: 2,
                len: 5
            }
        ),
        "{error:?}"
    );
    assert!(directory_entries(directory.path()).is_empty());
}

#[test]
fn grey_png_with_zero_width_is_rejected() {
    let directory = tempfile::tempdir().expect("temporary directory");

    let error =
        write_grey_png(&directory.path().join("grey.png"), 0, 2, &[]).expect_err("zero width");

    assert!(
        matches!(
            error,
            FigureError::InvalidImageSize {
                width: 0,
                height: 2
            }
        ),
        "{error:?}"
    );
}

#[test]
fn failed_rename_leaves_no_temporary_file() {
    let directory = tempfile::tempdir().expect("temporary directory");
    // A non-empty directory at the destination makes the final rename fail
    // after the PNG data has been written.
    let destination = directory.path().join("occupied");
    std::fs::create_dir(&destination).expect("writable directory");
    std::fs::write(destination.join("keep"), b"x").expect("writable directory");

    let error = write_grey_png(&destination, 1, 1, &[0]).expect_err("destination is a directory");

    match &error {
        FigureError::Io {
            operation, path, ..
        } => {
            assert_eq!(*operation, "rename the temporary file");
            assert_eq!(path, &destination);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(directory_entries(directory.path()), vec!["occupied"]);
}

#[test]
fn missing_directory_error_names_the_path() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let path = directory.path().join("missing").join("grey.png");

    let error = write_grey_png(&path, 1, 1, &[0]).expect_err("parent does not exist");

    let message = error.to_string();
    assert!(
        message.starts_with("failed to create a temporary file for "),
        "{message}"
    );
    assert!(message.contains("missing/grey.png"), "{message}");
}
