//! The single integration-test binary: every integration test lives in a module below, so
//! the crate is linked once. Run with `cargo nextest run` (one process per test).

mod cluster;
mod drills;
mod embedded;
#[cfg(feature = "test-failpoints")]
mod failpoints;
mod faults;
mod harness;
mod hostile_http;
mod hostile_input;
mod hostile_memory;
mod hostile_worker;
mod loadgen;
mod operator;
mod pipeline;
mod privilege;
mod store_postgres;
mod support;
mod tenant;
mod timescale;
