//! The `nsready` binary: parse the command line, set up logging, run the command.

// No unwrap() on anything input or the network can break: tests may, the service may not.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = nsready_cli::Cli::parse();
    nsready::telemetry::init(&cli.settings.log.log_level, cli.settings.log.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(nsready_cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[path = "cli/mod.rs"]
mod nsready_cli;
