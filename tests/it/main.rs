//! The single integration-test binary: every integration test lives in a module below, so
//! the crate is linked once. Run with `cargo nextest run` (one process per test).

mod auth;
mod cluster;
mod drills;
mod edge;
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
mod mqtt;
mod mqtt_auth_limits;
mod mqtt_faults;
mod mqtt_kill;
mod observability;
mod operator;
mod pipeline;
mod privilege;
mod secrets;
mod status_page;
mod store_postgres;
mod support;
mod tenant;
mod timescale;
mod tls;
