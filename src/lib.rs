//! nsready: device telemetry over HTTP, through a durable queue, into a time-series table,
//! exactly once in effect.
//!
//! # Layout
//!
//! - [`config`]: flags and environment into typed settings; resolves the deployment once.
//! - [`event`]: `NormalizedEvent`, parsed from untrusted JSON; the queue envelope.
//! - [`collector`]: the HTTP side: ingest, batch ingest, health, readiness, metrics.
//! - [`queue`]: the `Queue` trait; JetStream and embedded implementations.
//! - [`worker`]: pulls batches, checks them, writes them, settles every message.
//! - [`store`]: the `Store` trait; PostgreSQL and SQLite implementations, migrations.
//! - [`registry`]: the registry cache and import format; the demo registry.
//! - [`metrics`]: every Prometheus metric, named in one place.
//! - [`app`]: wires a role (serve, collector, worker) for a deployment and runs it.
//! - [`shutdown`]: the shutdown handle passed to every long-running task.
//! - [`telemetry`]: logging setup.
//! - [`procstat`]: this process's CPU, memory and descriptors from `/proc`, for metrics.
//! - [`checkpointer`]: background WAL checkpoints of embedded mode's SQLite files.
//! - [`private_fs`]: embedded mode's `DATA_DIR` 0700 and files 0600.

// No unwrap() on anything input or the network can break: tests may, the service may not.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod app;
pub mod checkpointer;
pub mod collector;
pub mod config;
pub mod event;
pub mod metrics;
pub mod private_fs;
pub mod procstat;
pub mod queue;
pub mod registry;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod worker;
