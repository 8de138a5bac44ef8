//! HTTP that a slow or greedy client cannot hold (issue 8, item 4), and configuration that
//! cannot lie (item 5), on both deployments.
//!
//! Raw sockets play the hostile clients: a body stalled half-way across SIGTERM (the real
//! binary as a child process), headers trickled byte by byte (slowloris), idle connections
//! beyond the cap, requests beyond the in-flight cap, broken and late bodies, multi-member
//! gzip and gzip followed by garbage. Every test ends by counting (accepted = rows, queue
//! back to 0) and checks that the service still answers.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nsready::app::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app::{Kind, RunningApp, TestEnv, wait_until};
use crate::support::servers::free_port;
use crate::support::{Proc, event, signal};

/// Bound on anything that should happen "soon": a hang, not a timing assertion.
const BOUND: Duration = Duration::from_secs(30);

fn one(i: i64) -> Value {
    event(i, &[("voltage", i as f64)])
}

/// Request head of an ingest POST with a declared body length.
fn head(path: &str, content_length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n\r\n"
    )
}

/// Reads one HTTP response from a raw socket: status and body (until the declared length
/// or the end of the stream).
async fn response(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((h, b)) = text.split_once("\r\n\r\n") {
                let len = h
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(usize::MAX);
                if b.len() >= len {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("a response within the bound");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// True once the server has closed the socket (read gives EOF or an error).
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match tokio::time::timeout(BOUND, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // Any answer the server sent before closing is fine.
            Ok(Ok(_)) => {}
        }
    }
}

/// Waits until `n` rows landed and the queue is empty, then checks exactly `n` rows.
async fn assert_landed(env: &TestEnv, n: u64) {
    wait_until("the queue drains", Duration::from_secs(60), || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    wait_until("the rows land", Duration::from_secs(60), || async {
        env.row_count().await >= n
    })
    .await;
    assert_eq!(env.row_count().await, n, "accepted = rows");
    assert_eq!(env.queue_stats().await.depth(), 0, "queue back to 0");
}

async fn assert_alive(app: &RunningApp) {
    let h = app.health().await;
    assert_eq!(h["service"], "ok", "{h}");
}

/// A request that sent its head and part of its body and then stalls, holding a slot of
/// a cap. If it reached the server while a probe request held the last slot, the server
/// answered it (503) and it holds nothing: `restall` opens it again.
struct StalledRequest {
    path: &'static str,
    content_length: usize,
    sent: Vec<u8>,
    sock: TcpStream,
}

impl StalledRequest {
    async fn open(
        app: &RunningApp,
        path: &'static str,
        content_length: usize,
        sent: Vec<u8>,
    ) -> Self {
        let mut sock = TcpStream::connect(("127.0.0.1", app.port))
            .await
            .expect("connect");
        sock.write_all(head(path, content_length).as_bytes())
            .await
            .expect("head");
        sock.write_all(&sent).await.expect("part of the body");
        Self {
            path,
            content_length,
            sent,
            sock,
        }
    }

    /// True once the server answered or closed it (it then holds no slot).
    fn answered(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.sock.try_read(&mut byte) {
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => true,
        }
    }
}

/// Opens again every stalled request the server already answered.
async fn restall(app: &RunningApp, stalled: &mut [StalledRequest]) {
    for s in stalled.iter_mut() {
        if s.answered() {
            *s = StalledRequest::open(app, s.path, s.content_length, s.sent.clone()).await;
        }
    }
}

/// POSTs `event(n)` for n = 0, 1, … (pausing 50 ms between) until one is answered 503;
/// every earlier answer must be 200. Before each POST, the stalled requests the server
/// answered meanwhile are opened again (one that arrived while a POST of this loop held
/// the last slot got the 503 instead). Returns how many were served, and the 503's
/// headers and body.
async fn post_until_503(
    app: &RunningApp,
    stalled: &mut [StalledRequest],
    mut event: impl FnMut(u64) -> Value,
) -> (u64, reqwest::header::HeaderMap, Value) {
    let started = Instant::now();
    for n in 0.. {
        restall(app, stalled).await;
        let (status, headers, body) = app
            .post_full(
                "/v1/ingest",
                "application/json",
                event(n).to_string().into_bytes(),
            )
            .await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return (n, headers, body);
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(started.elapsed() < BOUND, "never answered 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!("the loop only ends by returning")
}

/// A client stalled half-way through a body does not keep the real binary alive past
/// SHUTDOWN_TIMEOUT: SIGTERM, and the process exits 0 (the drain was cut at the deadline;
/// the log says so). An event accepted before the signal lands.
async fn a_body_stalled_across_sigterm_does_not_hold_the_process(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let port = free_port();
    let log = std::fs::File::create(env.dir.path().join("serve.log")).expect("log file");
    let child = env
        .command(
            "serve",
            &[
                "--service-port",
                &port.to_string(),
                "--shutdown-timeout",
                "2",
            ],
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nsready");
    let mut serve = Proc(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_until("the process is ready", BOUND, || {
        let url = format!("{base}/v1/ready");
        async move { reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/ingest"))
        .json(&one(0))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);

    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stalled
        .write_all(head("/v1/ingest", 1000).as_bytes())
        .expect("head");
    stalled.write_all(&[b' '; 500]).expect("half a body");
    stalled.flush().expect("flush");
    // The handler is now waiting for the other half (HTTP_BODY_TIMEOUT is 30 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&serve.0, libc::SIGTERM);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = serve.0.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(2) + BOUND {
            let log = std::fs::read_to_string(env.dir.path().join("serve.log"));
            panic!("still running long after SHUTDOWN_TIMEOUT: {log:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
    // The stalled client got its connection closed, not a hang.
    stalled.set_read_timeout(Some(BOUND)).expect("read timeout");
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);

    let app = env.start(Role::Serve, &[]).await;
    assert_landed(&env, 1).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(a_body_stalled_across_sigterm_does_not_hold_the_process);

/// Slowloris: headers trickled one byte every 100 ms are cut off by HTTP_HEADER_TIMEOUT,
/// while other clients are served all along.
async fn a_slowloris_client_is_cut_off_while_others_are_served(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env
        .start(Role::Serve, &["--http-header-timeout", "1"])
        .await;
    let mut slow = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let trickle = async {
        let started = Instant::now();
        let bytes = b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'));
        let mut b = [0u8; 64];
        for byte in bytes {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            let answer = tokio::time::timeout(Duration::from_millis(100), slow.read(&mut b));
            if let Ok(Ok(0) | Err(_)) = answer.await {
                break;
            }
            if started.elapsed() > BOUND {
                return None;
            }
        }
        Some(started.elapsed())
    };
    let others = async {
        for i in 0..10 {
            let (status, body) = app.post_event(&one(i)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (cut, ()) = tokio::join!(trickle, others);
    let cut = cut.expect("the slow client is disconnected within the bound");
    eprintln!("slowloris cut after {cut:?}");
    assert_landed(&env, 10).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(a_slowloris_client_is_cut_off_while_others_are_served);

/// The header timeout counts from a request's first byte, not from the end of the previous
/// answer: a keep-alive connection quiet for longer than HTTP_HEADER_TIMEOUT (but less than
/// HTTP_IDLE_TIMEOUT) still carries the next request.
async fn a_quiet_keep_alive_connection_outlives_the_header_timeout(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env
        .start(Role::Serve, &["--http-header-timeout", "1"])
        .await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    for i in 0..2 {
        let body = one(i).to_string();
        s.write_all(head("/v1/ingest", body.len()).as_bytes())
            .await
            .expect("head");
        s.write_all(body.as_bytes()).await.expect("body");
        let (status, answer) = response(&mut s).await;
        assert_eq!(status, 200, "request {i} on the same connection: {answer}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_landed(&env, 2).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(a_quiet_keep_alive_connection_outlives_the_header_timeout);

/// Idle connections beyond HTTP_MAX_CONNECTIONS: the cap holds (they wait in the backlog),
/// the idle ones are closed after HTTP_IDLE_TIMEOUT, and a new client is then served.
async fn idle_connections_beyond_the_cap_do_not_lock_out_a_new_client(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env
        .start(
            Role::Serve,
            &["--http-max-connections", "4", "--http-idle-timeout", "1"],
        )
        .await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(
            TcpStream::connect(("127.0.0.1", app.port))
                .await
                .expect("connect (the backlog takes it)"),
        );
    }
    let (status, body) = app.post_event(&one(0)).await;
    assert_eq!(status, StatusCode::OK, "served once idle ones left: {body}");
    for (n, s) in idle.iter_mut().enumerate() {
        assert!(closed_by_server(s).await, "idle connection {n} closed");
    }
    assert_landed(&env, 1).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(idle_connections_beyond_the_cap_do_not_lock_out_a_new_client);

/// Beyond HTTP_MAX_INFLIGHT ingest requests in progress, ingest answers 503 with
/// Retry-After at once (health still answers); once they finish, ingest is served again.
async fn over_the_inflight_cap_ingest_gets_503_with_retry_after(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &["--http-max-inflight", "2"]).await;
    let mut stalled = Vec::new();
    for path in ["/v1/ingest", "/v1/ingest/batch"] {
        stalled.push(StalledRequest::open(&app, path, 1000, b"[".to_vec()).await);
    }
    // The stalled requests reach their handlers within moments; until then a request may
    // still be served (and counted).
    let (served, headers, body) = post_until_503(&app, &mut stalled, |n| one(100 + n as i64)).await;
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("HTTP_MAX_INFLIGHT"),
        "{body}"
    );
    assert_alive(&app).await;
    drop(stalled);
    wait_until("ingest is served again", BOUND, || async {
        app.post_event(&one(0)).await.0 == StatusCode::OK
    })
    .await;
    assert_landed(&env, 1 + served).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(over_the_inflight_cap_ingest_gets_503_with_retry_after);

/// Bodies in progress are bounded in bytes as well as in number: two clients that sent
/// most of a large batch body and stalled hold what they sent of INGEST_MAX_INFLIGHT_BYTES;
/// a request whose body does not fit in the rest gets 503 with Retry-After, one that fits
/// is served (a stalled client holds only what it sent); once they go away, the larger
/// request is served too.
async fn over_the_body_byte_budget_ingest_gets_503_with_retry_after(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env
        .start(
            Role::Serve,
            &[
                "--ingest-max-body-bytes",
                "8192",
                "--ingest-max-batch-bytes",
                "65536",
                "--ingest-max-inflight-bytes",
                "131072",
            ],
        )
        .await;
    let mut stalled = Vec::new();
    let mut part = vec![b' '; 62_000];
    part[0] = b'[';
    for _ in 0..2 {
        stalled.push(StalledRequest::open(&app, "/v1/ingest/batch", 64_000, part.clone()).await);
    }
    let mut big = one(1);
    big["metadata"] = json!({"pad": "p".repeat(7_000)});
    // The stalled bodies may not all have arrived yet: until then the big one is served.
    let (_, headers, body) = post_until_503(&app, &mut stalled, |n| {
        big["metadata"]["n"] = json!(n);
        big.clone()
    })
    .await;
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("INGEST_MAX_INFLIGHT_BYTES"),
        "{body}"
    );
    // A small body still fits beside the stalled ones.
    let (status, body) = app.post_event(&one(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_alive(&app).await;
    drop(stalled);
    big["metadata"]["n"] = json!("after");
    wait_until("the larger body is served again", BOUND, || async {
        app.post_event(&big).await.0 == StatusCode::OK
    })
    .await;
    // Every 200 of the loop and the two after it wrote the same two keys (events 1 and 2).
    assert_landed(&env, 2).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(over_the_body_byte_budget_ingest_gets_503_with_retry_after);

/// A body that cannot be read is 400 naming `body` (not 413): a malformed chunked
/// encoding, a body cut short by the client; one that does not arrive in time is 408.
/// Nothing of them is queued, and the service goes on serving.
async fn broken_and_late_bodies_are_400_and_408_not_413(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &["--http-body-timeout", "1"]).await;
    let connect = || TcpStream::connect(("127.0.0.1", app.port));

    let mut s = connect().await.expect("connect");
    s.write_all(
        b"POST /v1/ingest/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n2\r\n[1\r\nzz-not-a-size\r\n",
    )
    .await
    .expect("write");
    let (status, body) = response(&mut s).await;
    assert_eq!(status, 400, "malformed chunked body: {body}");
    assert!(body.contains("\"body\""), "{body}");

    let mut s = connect().await.expect("connect");
    s.write_all(head("/v1/ingest", 1000).as_bytes())
        .await
        .expect("head");
    s.write_all(b"{\"project_id\":").await.expect("part");
    s.shutdown().await.expect("half-close");
    let (status, body) = response(&mut s).await;
    assert_eq!(status, 400, "body cut short: {body}");
    assert!(body.contains("\"body\""), "{body}");

    let mut s = connect().await.expect("connect");
    s.write_all(head("/v1/ingest", 1000).as_bytes())
        .await
        .expect("head");
    s.write_all(b"{\"project_id\":").await.expect("part");
    let (status, body) = response(&mut s).await;
    assert_eq!(status, 408, "body not received in time: {body}");
    assert!(
        body.contains("\"body\"") && body.contains("HTTP_BODY_TIMEOUT"),
        "{body}"
    );

    // A body over the limit is still 413.
    let (status, _) = app
        .post("/v1/ingest", "application/json", vec![b' '; (1 << 20) + 1])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(env.queue_stats().await.depth(), 0, "nothing queued");
    assert_eq!(app.post_event(&one(0)).await.0, StatusCode::OK);
    assert_landed(&env, 1).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(broken_and_late_bodies_are_400_and_408_not_413);

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

async fn post_gzip(app: &RunningApp, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let r = app
        .http
        .post(format!("{}/v1/ingest/batch", app.base))
        .header("content-type", content_type)
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .expect("post");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A gzip body of several members (NDJSON flushed in two members; a JSON array split
/// across two members) gives every event: `accepted` is the total.
async fn a_multi_member_gzip_batch_gives_every_event(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let lines: Vec<String> = (0..5).map(|i| one(i).to_string()).collect();
    let mut body = gzip(lines[..3].join("\n").as_bytes());
    body.extend(gzip(format!("\n{}\n", lines[3..].join("\n")).as_bytes()));
    let (status, report) = post_gzip(&app, "application/x-ndjson", body).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["accepted"], 5, "{report}");
    assert_eq!(report["rejected"], 0, "{report}");

    let array = Value::Array((5..9).map(one).collect()).to_string();
    let (a, b) = array.split_at(array.len() / 2);
    let mut body = gzip(a.as_bytes());
    body.extend(gzip(b.as_bytes()));
    let (status, report) = post_gzip(&app, "application/json", body).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["accepted"], 4, "{report}");

    assert_landed(&env, 9).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(a_multi_member_gzip_batch_gives_every_event);

/// Bytes after the last gzip member are refused (400 naming `body`), and nothing of the
/// body is queued.
async fn gzip_followed_by_garbage_is_400_and_queues_nothing(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let array = Value::Array((0..3).map(one).collect()).to_string();
    let mut body = gzip(array.as_bytes());
    body.extend_from_slice(b"this is not gzip");
    let (status, report) = post_gzip(&app, "application/json", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{report}");
    assert_eq!(report["errors"][0]["loc"][0], "body", "{report}");
    assert_eq!(env.queue_stats().await.depth(), 0, "nothing queued");
    assert_landed(&env, 0).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(gzip_followed_by_garbage_is_400_and_queues_nothing);

/// A request without Content-Type is read as JSON (the documented choice), on both ingest
/// routes.
async fn a_missing_content_type_is_read_as_json(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    for (path, body) in [
        ("/v1/ingest", one(0).to_string()),
        (
            "/v1/ingest/batch",
            Value::Array(vec![one(1), one(2)]).to_string(),
        ),
    ] {
        let r = app
            .http
            .post(format!("{}{path}", app.base))
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    assert_landed(&env, 3).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(a_missing_content_type_is_read_as_json);

/// An empty or blank INGEST_AUTH_TOKEN is refused at start, naming the variable: it used
/// to turn authentication off.
#[test]
fn an_empty_or_blank_auth_token_refuses_to_start() {
    let env = TestEnv::new(Kind::Embedded);
    for value in ["", "  "] {
        let mut cmd = env.command("serve", &[]);
        cmd.env("INGEST_AUTH_TOKEN", value)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = Proc(cmd.spawn().expect("spawn"));
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.0.try_wait().expect("wait") {
                break s;
            }
            assert!(started.elapsed() < BOUND, "{value:?}: it started anyway");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        if let Some(mut e) = child.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(!status.success(), "{value:?}: exit non-zero");
        assert!(err.contains("INGEST_AUTH_TOKEN"), "{value:?}: {err}");
        assert!(err.contains("empty"), "{value:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        !env.dir.path().join("queue.db").exists(),
        "refused before opening anything"
    );
}

/// A request head larger than hyper's per-connection buffer (`MAX_HEAD_BYTES`) is refused
/// (431, or the connection closed) without buffering it, and the service goes on serving.
async fn an_oversized_request_head_is_refused(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let mut s = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let big = "a".repeat(nsready::collector::serve::MAX_HEAD_BYTES * 2);
    let head = format!("POST /v1/ingest HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The server may close before it has read everything: a failed write is fine too.
    let _ = s.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(BOUND, s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    let (status, body) = app.post_event(&one(1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_landed(&env, 1).await;
    assert_alive(&app).await;
    app.stop().await;
}
crate::both_deployments!(an_oversized_request_head_is_refused);
