//! The command line: one clap enum, one module with `run()` per group of subcommands.
//!
//! Settings (flags and environment) are global so every subcommand sees the same names;
//! `anyhow` is used here and in `main.rs` only.

mod dlq;
mod loadgen;
mod notify;
mod registry;
mod serve;
mod status;
mod table;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nsready::config::Settings;

/// nsready: device telemetry over HTTP, through a durable queue, into a time-series table.
///
/// With nothing configured it runs on one machine (embedded queue and store in DATA_DIR).
/// Set NATS_URL and DATABASE_URL to run on NATS JetStream and PostgreSQL instead.
#[derive(Parser, Debug)]
#[command(name = "nsready", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the collector and the worker pool in one process.
    Serve {
        /// Load the demo registry first and print a curl command that works as printed.
        #[arg(long)]
        demo: bool,
    },
    /// Run the HTTP collector only (scale-out deployment).
    Collector,
    /// Run the worker pool only (scale-out deployment).
    Worker,
    /// Apply database migrations and exit.
    Migrate {
        /// Also create the NOLOGIN roles `nsready_ingest` (what collectors and workers
        /// need) and `nsready_read` (the SCADA views) and grant their rights; idempotent.
        /// PostgreSQL only; run as the schema owner with CREATEROLE. See SECURITY.md.
        #[arg(long)]
        create_roles: bool,
    },
    /// Show the service's health (queue depth, consumer, DLQ, database); exit 0 healthy,
    /// 1 warning, 2 critical.
    Status(status::StatusArgs),
    /// Inspect, replay or purge dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Load, list or export the registry (customers, projects, sites, devices, parameters).
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Create, list or revoke per-device ingest tokens (INGEST_AUTH=token).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Show the newest value of each device parameter (v_scada_latest).
    Latest {
        /// Only this device.
        #[arg(long)]
        device: Option<uuid::Uuid>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send realistic traffic to a running nsready and report its capacity: accepted/s,
    /// committed rows/s, latency percentiles, and a check that every accepted event landed
    /// exactly once (exit 1 when not). Needs the service's store settings and an otherwise
    /// idle database (it counts rows before and after).
    Loadgen(loadgen::LoadgenArgs),
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut s = cli.settings;
    // Once, before anything validates or uses a secret.
    s.resolve_secret_files()?;
    if !matches!(
        cli.command,
        Command::Serve { .. } | Command::Collector | Command::Worker | Command::Loadgen(_)
    ) {
        // A command that prints and exits ends quietly when its reader does
        // (`nsready latest | head`), as other Unix tools do, instead of panicking on a
        // broken pipe. The long-running roles keep Rust's default (SIGPIPE ignored: a
        // closed socket is an error to handle, never a reason to die).
        restore_default_sigpipe();
    }
    match cli.command {
        Command::Serve { demo } => serve::run(&s, nsready::app::Role::Serve, demo).await,
        Command::Collector => serve::run(&s, nsready::app::Role::Collector, false).await,
        Command::Worker => serve::run(&s, nsready::app::Role::Worker, false).await,
        Command::Migrate { create_roles } => registry::migrate(&s, create_roles).await,
        Command::Status(args) => status::run(&s, args).await,
        Command::Dlq(cmd) => dlq::run(&s, cmd).await,
        Command::Registry(cmd) => registry::run(&s, cmd).await,
        Command::Token(cmd) => token::run(&s, cmd).await,
        Command::Latest { device, json } => registry::latest(&s, device, json).await,
        Command::Loadgen(args) => loadgen::run(&s, args).await,
    }
}

/// SIGPIPE back to its default action (terminate) for this process.
fn restore_default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL installs no handler and touches no
    // memory of ours; done before any output.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
