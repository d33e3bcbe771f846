//! The `ign` command: parse the command line, run, map errors to exit codes.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = ign::cli::Cli::parse();
    let interrupted = Arc::new(AtomicBool::new(false));
    if let Err(e) =
        signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted))
    {
        tracing::warn!(error = %e, "could not install the Ctrl-C handler");
    }
    match ign::cli::dispatch(cli, interrupted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ign: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
