//! Line plots (plotters, bitmap backend) with a font shipped in the
//! repository, so a figure renders the same on a machine without system
//! fonts.
//!
//! Invariant: like every figure, a plot appears at its final path only when
//! complete (drawn to a temporary PNG in the destination directory, then
//! renamed), and values that are not finite, or not positive on a log axis,
//! are left out rather than drawn.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// DejaVu Sans (Bitstream Vera licence, `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// One line of a plot.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// The title, axes and size of a plot.
#[derive(Clone, Debug)]
pub struct PlotSpec<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_y: bool,
    pub width: u32,
    pub height: u32,
}

/// Errors from drawing or writing a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("failed to draw {}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
    #[error("failed to move {} into place: {source}", path.display())]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Draws `series` as lines with a legend and writes the PNG to `path`.
/// A series with no drawable point is listed in the legend only by name.
pub fn write_line_plot(path: &Path, spec: &PlotSpec, series: &[Series]) -> Result<(), PlotError> {
    REGISTER.call_once(|| {
        // The bytes are the TrueType font in `assets/`; the plot test draws
        // text with it, so a broken font file fails that test.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let temporary = temporary_path(path);
    let result = draw(&temporary, spec, series);
    let result = result.and_then(|()| {
        std::fs::rename(&temporary, path).map_err(|source| PlotError::Rename {
            path: path.to_owned(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plot.png".to_owned());
    path.with_file_name(format!(".{name}.tmp-{}.png", std::process::id()))
}

/// Keeps the points a plot can show.
fn drawable(points: &[(f64, f64)], log_y: bool) -> Vec<(f64, f64)> {
    points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
        .collect()
}

fn draw(path: &Path, spec: &PlotSpec, series: &[Series]) -> Result<(), PlotError> {
    let fail = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let lines: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| drawable(&s.points, spec.log_y))
        .collect();
    let all = lines.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 10.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = if spec.log_y { y0 * 10.0 } else { y0 + 1.0 };
    }

    let root = BitMapBackend::new(path, (spec.width, spec.height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(spec.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let colours = |i: usize| Palette99::pick(i).to_rgba();
    if spec.log_y {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(spec.x_label)
            .y_desc(spec.y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, (s, points)) in series.iter().zip(&lines).enumerate() {
            let colour = colours(i);
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| fail(&e))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc(spec.x_label)
            .y_desc(spec.y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, (s, points)) in series.iter().zip(&lines).enumerate() {
            let colour = colours(i);
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| fail(&e))?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_is_written_and_skips_bad_points() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.png");
        let series = vec![
            Series {
                name: "a".into(),
                points: vec![(0.0, 1.0), (1.0, 0.1), (2.0, f64::NAN), (3.0, 0.0)],
            },
            Series {
                name: "empty".into(),
                points: Vec::new(),
            },
        ];
        let spec = PlotSpec {
            title: "residual",
            x_label: "updates",
            y_label: "residual",
            log_y: true,
            width: 320,
            height: 240,
        };
        write_line_plot(&path, &spec, &series).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (320, 240));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "a temporary file was left behind");
        assert_eq!(
            drawable(&series[0].points, true),
            vec![(0.0, 1.0), (1.0, 0.1)]
        );
        assert_eq!(drawable(&series[0].points, false).len(), 3);
    }
}
