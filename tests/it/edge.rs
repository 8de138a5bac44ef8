//! The edge box: the real binary under a service manager's signals (SIGHUP does not stop
//! it; `READY=1` and `STOPPING=1` reach `NOTIFY_SOCKET` in order, READY only once it
//! serves), and embedded retention (`EMBEDDED_RETENTION`) deleting old rows through the
//! real pipeline while it keeps the recent ones.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use nsready::app::Role;
use reqwest::StatusCode;

use crate::support::app::{Kind, TestEnv, wait_ready, wait_until};
use crate::support::servers::free_port;
use crate::support::{Proc, event, signal};

/// Seconds from the helpers' base time (2025-11-14T12:00:00Z) to now.
fn secs_until_now() -> i64 {
    let base = chrono::DateTime::parse_from_rfc3339("2025-11-14T12:00:00Z")
        .expect("base")
        .to_utc();
    (chrono::Utc::now() - base).num_seconds()
}

async fn post(base: &str, body: &serde_json::Value) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{base}/v1/ingest"))
        .json(body)
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

/// SIGHUP (a closed terminal, `systemctl reload`, a log rotator) must not kill `nsready
/// serve`: after two of them it is alive, answers health, takes an event that lands,
/// and still stops cleanly (exit 0) on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_stop_serve() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let port = free_port();
    let mut child = Proc(
        env.command("serve", &["--service-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    signal(&child.0, libc::SIGHUP);
    signal(&child.0, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "SIGHUP killed the process"
    );
    let health = reqwest::get(format!("{base}/v1/health"))
        .await
        .expect("health after SIGHUP");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        post(&base, &event(1, &[("voltage", 1.0)])).await,
        StatusCode::OK
    );
    wait_until("the event lands", Duration::from_secs(20), || async {
        env.row_count().await == 1
    })
    .await;
    signal(&child.0, libc::SIGTERM);
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "clean stop after SIGHUP: {status:?}");
}

/// Under `Type=notify`, systemd reads `READY=1` from NOTIFY_SOCKET: it arrives, the
/// service answers `/v1/ready` 200 at that moment (the listener was bound before), and
/// SIGTERM sends `STOPPING=1` before the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_then_stopping() {
    let env = TestEnv::new(Kind::Embedded);
    let sock_dir = tempfile::tempdir().expect("dir");
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let port = free_port();
    let mut child = Proc(
        env.command("serve", &["--service-port", &port.to_string()])
            .env("NOTIFY_SOCKET", &sock_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/v1/ready"))
        .await
        .expect("ready answers once READY=1 was sent");
    assert_eq!(ready.status(), StatusCode::OK);
    signal(&child.0, libc::SIGTERM);
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.0.wait().expect("wait").success());
}

/// EMBEDDED_RETENTION: a reading older than the retention is deleted (at start, and by the
/// periodic pass for one that arrives later), a recent one stays. Counted: every accepted
/// event is a row or was old enough to be deleted; nothing else is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_retention_deletes_old_rows_and_keeps_recent_ones() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let now = secs_until_now();
    // Without retention: one old reading (a year before now), one from a minute ago.
    let app = env.start(Role::Serve, &[]).await;
    let (s, _) = app.post_event(&event(0, &[("voltage", 1.0)])).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.post_event(&event(now - 60, &[("voltage", 2.0)])).await;
    assert_eq!(s, StatusCode::OK);
    wait_until("both land", Duration::from_secs(20), || async {
        env.row_count().await == 2
    })
    .await;
    app.stop().await;

    // With 30 days of retention and a 1 s pass: the old row goes at start.
    let app = env
        .start(
            Role::Serve,
            &[
                "--embedded-retention",
                "30d",
                "--embedded-retention-interval",
                "1",
            ],
        )
        .await;
    wait_until(
        "the old row is deleted",
        Duration::from_secs(20),
        || async { env.row_count().await == 1 },
    )
    .await;
    // An old reading that arrives now lands, then a later pass deletes it.
    let (s, _) = app.post_event(&event(1, &[("current", 3.0)])).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.post_event(&event(now - 30, &[("current", 4.0)])).await;
    assert_eq!(s, StatusCode::OK);
    wait_until(
        "the queue drains and the old reading is gone",
        Duration::from_secs(30),
        || async { env.queue_stats().await.depth() == 0 && env.row_count().await == 2 },
    )
    .await;
    app.stop().await;
    let values: Vec<Option<f64>> = env.rows().iter().map(|r| r.value).collect();
    assert_eq!(values.len(), 2, "{values:?}");
    assert!(
        values.contains(&Some(2.0)) && values.contains(&Some(4.0)),
        "{values:?}"
    );
    assert!(env.dead_letters().await.is_empty());
}
