//! The embedded single-node deployment: selection rules, the DATA_DIR lock, the newcomer
//! path (`serve --demo` prints a curl that works), and crash safety of the files under
//! `kill -9`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nsready::app::Role;
use reqwest::StatusCode;

use crate::support::Proc;
use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::event;
use crate::support::servers::free_port;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nsready"));
    for var in [
        "NATS_URL",
        "NATS_HOST",
        "DATABASE_URL",
        "DB_HOST",
        "POSTGRES_HOST",
    ] {
        c.env_remove(var);
    }
    c
}

fn failing_stderr(mut c: Command) -> String {
    let out = c.output().expect("run nsready");
    assert!(!out.status.success(), "expected a refusal, got success");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_data_dir_is_refused() {
    let env = TestEnv::new(Kind::Embedded);
    let app = env.start(Role::Serve, &[]).await;
    let err = failing_stderr(env.command("serve", &[]));
    assert!(err.contains("in use by another nsready process"), "{err}");
    app.stop().await;
}

#[test]
fn collector_and_worker_alone_are_refused_in_embedded_mode() {
    let dir = tempfile::tempdir().expect("dir");
    for role in ["collector", "worker"] {
        let mut c = bin();
        c.args([role, "--data-dir"])
            .arg(dir.path())
            .args(["--service-port", "0"]);
        let err = failing_stderr(c);
        assert!(err.contains("needs the scale-out deployment"), "{err}");
        assert!(err.contains("nsready serve"), "{err}");
    }
}

#[test]
fn a_half_configured_setup_is_refused_naming_what_to_set() {
    let mut c = bin();
    c.args(["serve", "--service-port", "0"])
        .env("NATS_URL", "nats://127.0.0.1:1");
    let err = failing_stderr(c);
    assert!(
        err.contains("half-configured") && err.contains("DATABASE_URL"),
        "{err}"
    );
    let mut c = bin();
    c.args(["serve", "--service-port", "0"])
        .env("DATABASE_URL", "postgres://x@127.0.0.1:1/db");
    let err = failing_stderr(c);
    assert!(
        err.contains("half-configured") && err.contains("NATS_URL"),
        "{err}"
    );
}

#[test]
fn an_unusable_data_dir_gives_a_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let mut c = bin();
    c.args(["serve", "--service-port", "0", "--data-dir"])
        .arg(file.join("data"));
    let err = failing_stderr(c);
    assert!(
        err.contains("DATA_DIR") && err.contains("cannot be created"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// The newcomer path: `serve --demo` prints a curl command; run as printed, it queues an
/// event that `nsready latest` then shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_prints_a_curl_that_works_as_printed() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port().to_string();
    let mut c = bin();
    c.args([
        "serve",
        "--demo",
        "--service-host",
        "127.0.0.1",
        "--service-port",
        &port,
        "--data-dir",
    ])
    .arg(dir.path())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = Proc(c.spawn().expect("spawn"));
    let stdout = child.0.stdout.take().expect("stdout");
    let curl = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("curl "))
    })
    .await
    .expect("join")
    .expect("serve --demo prints a curl line");
    // A person reads the message before pasting the command; wait until the service answers.
    let ready = format!("http://127.0.0.1:{port}/v1/ready");
    wait_until("the service is ready", Duration::from_secs(30), || {
        let ready = ready.clone();
        async move {
            reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    let out = Command::new("bash")
        .arg("-c")
        .arg(&curl)
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with(r#"{"status":"queued","trace_id":""#),
        "{body} / {} / {curl}",
        String::from_utf8_lossy(&out.stderr)
    );
    let device = nsready::registry::demo_ids::DEVICE_01_1.to_string();
    wait_until("latest shows the value", Duration::from_secs(30), || {
        let dir = dir.path().to_path_buf();
        let device = device.clone();
        async move {
            let out = bin()
                .args(["latest", "--device", &device, "--data-dir"])
                .arg(&dir)
                .output()
                .expect("latest");
            String::from_utf8_lossy(&out.stdout).contains("230.5")
        }
    })
    .await;
}

/// `kill -9` of `nsready serve` in the middle of a load, restart on the same DATA_DIR:
/// everything answered 200 ends as a row (or a dead letter), including what was still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_then_restart_loses_nothing() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let port = free_port();
    let args = [
        "--service-port",
        &port.to_string(),
        "--worker-ack-wait",
        "1",
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/v1/ingest");
    let mut accepted = std::collections::BTreeSet::new();
    let mut n = 0i64;
    for round in 0..3 {
        let child = Proc(
            env.command("serve", &args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn"),
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            // Batches of 20 keep the queue busy so the kill lands mid-work.
            let events: Vec<_> = (0..20)
                .map(|k| event(n * 20 + k, &[("voltage", 1.0)]))
                .collect();
            n += 1;
            let body = serde_json::Value::Array(events).to_string();
            match http
                .post(format!("{url}/batch"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) if r.status() == StatusCode::OK => {
                    for k in 0..20 {
                        accepted.insert((n - 1) * 20 + k);
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        // SIGKILL (Child::kill) in the middle of the load.
        drop(child);
        assert!(round < 3);
    }
    assert!(!accepted.is_empty(), "the load got some 200s");
    let _last = Proc(
        env.command("serve", &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    wait_until(
        "the queue drains after the restart",
        Duration::from_secs(60),
        || async { env.queue_stats().await.depth() == 0 },
    )
    .await;
    assert!(env.dead_letters().await.is_empty());
    let base = chrono::DateTime::parse_from_rfc3339("2025-11-14T12:00:00Z")
        .expect("base")
        .to_utc();
    let landed: std::collections::BTreeSet<i64> = env
        .rows()
        .iter()
        .map(|r| (r.time - base).num_seconds())
        .collect();
    let missing: Vec<_> = accepted.difference(&landed).collect();
    assert!(missing.is_empty(), "accepted but lost: {missing:?}");
    // A request cut by the kill may have been stored without its 200 reaching us; it is
    // then a row too, never a duplicate (one row per key).
    assert!(landed.len() as i64 <= n * 20);
}

/// A full disk (a 4 MiB tmpfs as DATA_DIR): ingest answers 503 with Retry-After, the
/// process keeps serving (no panic), and every accepted event is a row or still queued.
/// Needs root for the mount, as CI and the development machine have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_503_and_loses_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot mount a tmpfs; this check runs in CI (root)");
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).expect("mkdir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(ok.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let data = mnt.to_str().expect("utf-8 path").to_string();
    let out = bin()
        .args(["registry", "demo", "--data-dir", &data])
        .output()
        .expect("registry demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port().to_string();
    let serve = Proc(
        bin()
            .args([
                "serve",
                "--service-host",
                "127.0.0.1",
                "--service-port",
                &port,
                "--data-dir",
                &data,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let base = format!("http://127.0.0.1:{port}");
    crate::support::app::wait_ready(&base).await;
    let http = reqwest::Client::new();
    let mut accepted = 0u64;
    let mut saw_503 = false;
    for n in 0..400i64 {
        let events: Vec<_> = (0..50)
            .map(|k| {
                let mut e = event(n * 50 + k, &[("voltage", 1.0)]);
                e["metadata"] = serde_json::json!({"pad": "x".repeat(2000)});
                e
            })
            .collect();
        let r = http
            .post(format!("{base}/v1/ingest/batch"))
            .header("content-type", "application/json")
            .body(serde_json::Value::Array(events).to_string())
            .send()
            .await
            .expect("the service keeps answering");
        let status = r.status();
        let retry_after = r.headers().get("retry-after").is_some();
        let body: serde_json::Value = r.json().await.expect("json body");
        accepted += body["accepted"].as_u64().unwrap_or(0);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(retry_after, "{body}");
            saw_503 = true;
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert!(saw_503, "the disk filled up and ingest said so");
    eprintln!("full disk: accepted {accepted} before the 503");
    let h: serde_json::Value = http
        .get(format!("{base}/v1/health"))
        .send()
        .await
        .expect("health still answers")
        .json()
        .await
        .expect("json");
    drop(serve);
    // Count with the service stopped: rows in the store + messages still in the queue.
    let conn = rusqlite::Connection::open(mnt.join("nsready.db")).expect("open store");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM ingest_events", [], |r| r.get(0))
        .expect("count");
    let q = rusqlite::Connection::open(mnt.join("queue.db")).expect("open queue");
    let queued: i64 = q
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .expect("count queued");
    let dead: i64 = q
        .query_row("SELECT count(*) FROM dlq", [], |r| r.get(0))
        .expect("dlq");
    assert_eq!(
        rows + queued + dead,
        accepted as i64,
        "accepted = rows + queued + dead letters (health was {h})"
    );
}

/// Commands that only read (`latest`, `registry list`, `registry export`, `dlq list`) do not
/// create a DATA_DIR that does not exist: they say which directory they looked in.
#[test]
fn read_only_commands_do_not_create_a_data_dir() {
    let env = TestEnv::new(Kind::Embedded);
    let missing = env.dir.path().join("elsewhere");
    let dir = missing.display().to_string();
    for args in [
        vec!["latest"],
        vec!["registry", "list"],
        vec!["registry", "export"],
        vec!["dlq", "list"],
    ] {
        let mut all = args.clone();
        all.extend(["--data-dir", dir.as_str()]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nsready"))
            .args(&all)
            .env_remove("DATA_DIR")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains("no nsready"), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&dir),
            "{args:?} names the directory: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created {dir}");
    }
}

/// Log lines carry the request's trace id through the `collector.ingest` span, and the
/// worker's lines the `worker.batch` span with its message count (JSON logs of the binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_the_trace_id_and_the_batch_spans() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let port = free_port().to_string();
    let child = env
        .command(
            "serve",
            &[
                "--service-port",
                &port,
                "--log-format",
                "json",
                "--log-level",
                "nsready=debug",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let base = format!("http://127.0.0.1:{port}");
    crate::support::app::wait_ready(&base).await;
    let resp: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/v1/ingest"))
        .json(&crate::support::event(0, &[("voltage", 1.0)]))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let trace_id = resp["trace_id"].as_str().expect("trace id").to_string();
    wait_until("the row lands", Duration::from_secs(30), || async {
        env.row_count().await == 1
    })
    .await;
    crate::support::signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().expect("serve exits");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let queued = lines
        .iter()
        .find(|l| l["message"] == "event queued")
        .expect("an `event queued` line");
    assert_eq!(queued["span"]["name"], "collector.ingest", "{queued}");
    assert_eq!(queued["span"]["trace_id"], trace_id.as_str(), "{queued}");
    let settled = lines
        .iter()
        .find(|l| l["message"] == "batch settled")
        .expect("a `batch settled` line");
    assert_eq!(settled["span"]["name"], "worker.batch", "{settled}");
    assert_eq!(settled["span"]["messages"], 1, "{settled}");
    assert_eq!(settled["span"]["rows"], 1, "{settled}");
}
