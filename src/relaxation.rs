//! Settings and results of one relaxation, shared by every schedule (the
//! synchronous solver and the actor runtime), so that their outputs compare
//! field by field.

use serde::Serialize;

/// Settings of a relaxation: its stopping rule and step size.
#[derive(Clone, Copy, Debug)]
pub struct RelaxConfig {
    /// A row of a layer is settled when its projected-gradient residual
    /// `max |x − max(0, x − ∂V/∂x)|` and, on layer 1, `|‖p_1‖ − 1|` are both
    /// below this.
    pub tolerance: f64,
    /// Cap on the updates of any one layer in one relaxation.
    pub max_steps: usize,
    /// Step size as a fraction of each layer's stability bound; above 2 the
    /// projected-gradient step is unstable and the relaxation diverges.
    pub step_scale: f64,
    /// A relaxation whose residual grows past this multiple of its starting
    /// residual, or becomes NaN or infinite, is reported as diverged.
    pub divergence_factor: f64,
}

impl Default for RelaxConfig {
    fn default() -> Self {
        RelaxConfig {
            tolerance: 1e-2,
            max_steps: 400,
            step_scale: 0.9,
            divergence_factor: 1e4,
        }
    }
}

/// The end state of a relaxation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every layer settled below the tolerance.
    Converged,
    /// Some layer reached `max_steps` with a residual above the tolerance.
    Capped,
    /// The residual grew past the divergence limit or became non-finite.
    Diverged,
}

/// Measurements of one relaxation.
#[derive(Clone, Debug, Serialize)]
pub struct RelaxReport {
    pub outcome: Outcome,
    /// Updates (steps) taken by each layer, layer 1 first.
    pub layer_updates: Vec<usize>,
    /// Largest row residual over all layers at the end.
    pub max_residual: f64,
    /// Largest `|‖p_1‖ − 1|` at the end.
    pub max_constraint_violation: f64,
    /// Rows whose residual is still above the tolerance at the end.
    pub rows_above_tolerance: usize,
    /// Rows skipped because their input is all zero.
    pub blank_rows: usize,
    /// Data messages sent during the relaxation (zero for the solver).
    pub messages: u64,
}

impl RelaxReport {
    /// Returns the total number of layer updates.
    pub fn updates(&self) -> usize {
        self.layer_updates.iter().sum()
    }
}
