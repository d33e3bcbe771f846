//! ign: a simulator of intrinsic gradient networks.
pub mod cli;
pub mod data;
pub mod error;
pub mod experiment;
pub mod gradcheck;
pub mod learn;
pub mod model;
pub mod quiescence;
pub mod readout;
pub mod relaxation;
pub mod report;
pub mod runtime;
pub mod scenario;
pub mod solver;
pub mod trace;
