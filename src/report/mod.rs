//! Reports of a run: PNG figures, written atomically so a reader never sees a
//! half-written file.

pub mod figure;

pub use figure::{FigureError, write_grey_png, write_projective_fields};
