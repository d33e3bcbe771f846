//! The program's top-level error and its exit codes: 2 for bad input (a
//! scenario, a data file, a value out of range), 1 for a run that failed at
//! its job, 130 for an interrupted run.

use std::path::PathBuf;

use thiserror::Error;

use crate::data::DataError;
use crate::gradcheck::GradientCheckError;
use crate::readout::ReadoutError;
use crate::report::FigureError;
use crate::scenario::ScenarioError;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Data(#[from] DataError),
    /// The scenario and the data disagree (for example the input size).
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    GradientCheck(#[from] GradientCheckError),
    #[error("cannot create output directory {path}: {source}; pass --out DIR")]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Figure(#[from] FigureError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("readout failed: {0}")]
    Readout(#[from] ReadoutError),
    /// The run could not do its job; partial outputs were written.
    #[error("{0}")]
    Failed(String),
    #[error("interrupted; partial outputs written")]
    Interrupted,
    /// Ctrl-C during a job that writes its files only when complete.
    #[error("interrupted; no output was written")]
    InterruptedBeforeOutput,
}

impl Error {
    /// Returns the process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Scenario(_) | Error::Data(_) | Error::Mismatch(_) | Error::OutputDir { .. } => 2,
            Error::Store(_) => 2,
            Error::GradientCheck(
                GradientCheckError::InvalidSizes { .. }
                | GradientCheckError::TooLarge { .. }
                | GradientCheckError::InvalidAlpha { .. }
                | GradientCheckError::InvalidStep { .. },
            ) => 2,
            Error::Interrupted | Error::InterruptedBeforeOutput => 130,
            _ => 1,
        }
    }
}
