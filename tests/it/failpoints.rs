//! A crash between commit and ack, through the `crash-after-commit` failpoint: the batch is
//! redelivered and the redelivery adds no rows. Compiled only with the `test-failpoints`
//! feature (the suite's command enables it), since a release build has no failpoint.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nsready::app::Role;
use reqwest::StatusCode;

use crate::both_deployments;
use crate::support::Proc;
use crate::support::app::{Kind, TestEnv, metric, wait_until};
use crate::support::event;
use crate::support::servers::free_port;

async fn wait_ready(port: u16) {
    crate::support::app::wait_ready(&format!("http://127.0.0.1:{port}")).await;
}

/// Fails with the cause when the binary under test has no failpoints: cargo builds it with
/// the suite's features, but a `cargo build`/`cargo run` in the same target directory while
/// the suite runs replaces it with one built without them.
fn assert_binary_has_failpoints(role: &str) {
    // The setting is hidden from --help; clap refuses an unknown one before printing help.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nsready"))
        .args([role, "--failpoint", "crash-after-commit", "--help"])
        .output()
        .expect("run nsready --help");
    assert!(
        out.status.success(),
        "{} has no --failpoint: it was rebuilt without the test-failpoints feature (a cargo \
         build or run in the same target directory while the suite ran?); rerun the suite",
        env!("CARGO_BIN_EXE_nsready")
    );
}

/// A process killed after its commit and before its acks: the batch is redelivered, and
/// the redelivery adds no rows.
async fn redelivery_after_a_crash_between_commit_and_ack_adds_no_rows(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let port = free_port().to_string();
    let role = match kind {
        Kind::ScaleOut | Kind::ScaleOutTimescale => "worker",
        Kind::Embedded => "serve",
    };
    assert_binary_has_failpoints(role);
    let args = ["--service-port", port.as_str(), "--worker-ack-wait", "1"];
    let mut crashing: Vec<&str> = args.to_vec();
    crashing.extend(["--failpoint", "crash-after-commit"]);
    let mut child = Proc(
        env.command(role, &crashing)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn nsready"),
    );
    let port: u16 = port.parse().expect("port");
    wait_ready(port).await;
    let collector = match kind {
        Kind::ScaleOut | Kind::ScaleOutTimescale => Some(env.start(Role::Collector, &[]).await),
        Kind::Embedded => None,
    };
    let body = event(0, &[("voltage", 1.0), ("current", 2.0), ("power", 3.0)]).to_string();
    let url = match &collector {
        Some(c) => format!("{}/v1/ingest", c.base),
        None => format!("http://127.0.0.1:{port}/v1/ingest"),
    };
    let r = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), StatusCode::OK),
        // Embedded: the same process answers and commits; the abort can beat the response.
        // The rows below prove the event was accepted and committed.
        Err(e) if kind == Kind::Embedded => eprintln!("response lost to the abort: {e}"),
        Err(e) => panic!("post failed: {e}"),
    }
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "failpoint never fired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "the process was aborted");
    assert_eq!(env.row_count().await, 3, "committed before the crash");
    assert_eq!(env.queue_stats().await.depth(), 1, "but not acknowledged");

    let _restarted = Proc(
        env.command(role, &args)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn nsready"),
    );
    wait_ready(port).await;
    wait_until(
        "the redelivered message is acked",
        Duration::from_secs(30),
        || async { env.queue_stats().await.depth() == 0 },
    )
    .await;
    let m = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metric(&m, "ingest_redeliveries_total").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert_eq!(env.row_count().await, 3, "the redelivery added no rows");
    assert!(env.dead_letters().await.is_empty());
}
both_deployments!(redelivery_after_a_crash_between_commit_and_ack_adds_no_rows);
