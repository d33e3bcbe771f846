//! Reports of a run: PNG figures and plots, written atomically so a reader
//! never sees a half-written file.

pub mod figure;
pub mod plot;

pub use figure::{FigureError, write_grey_png, write_projective_fields};
pub use plot::{PlotError, PlotSpec, Series, write_line_plot};
