//! Device identity and protected mode (issue 10, items 1, 2 and 4), on both deployments.
//!
//! Tokens are made by the real binary (`nsready token create`), the service runs with
//! INGEST_AUTH=token and a short REGISTRY_REFRESH_INTERVAL, and every test ends by counting
//! (rows = accepted events × metrics). The refresh interval only bounds how long a test
//! waits for a revocation or a new token to be seen; nothing asserts a duration.

use std::process::Stdio;
use std::time::Duration;

use nsready::app::{App, Role};
use nsready::registry::demo_ids;
use nsready::shutdown::Shutdown;
use nsready::store::{NewToken, Store};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::{AsyncStoreFn, Kind, RunningApp, TestEnv, metric, wait_until};
use crate::support::event_for;

/// Bound on anything that should happen "soon": a hang, not a timing assertion.
const BOUND: Duration = Duration::from_secs(30);

/// Token mode with a refresh short enough for the tests not to wait long.
const TOKEN_MODE: &[&str] = &[
    "--ingest-auth",
    "token",
    "--registry-refresh-interval",
    "0.2",
];

fn d1() -> Uuid {
    demo_ids::DEVICE_01_1
}
fn d2() -> Uuid {
    demo_ids::device(1, 2)
}

fn ev(device: Uuid, i: i64) -> Value {
    event_for(device, i, &[("voltage", i as f64)])
}

/// What a run of the binary gave back.
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(env: &TestEnv, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::from(env.command("token", args));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run nsready");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `token create --device D --json [extra]`: (id, token).
async fn create(env: &TestEnv, device: Uuid, extra: &[&str]) -> (String, String) {
    let d = device.to_string();
    let mut args = vec!["create", "--device", &d, "--json"];
    args.extend(extra);
    let out = cli(env, &args).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("create --json");
    assert_eq!(v["device_id"], json!(device));
    let id = v["id"].as_str().expect("id").to_string();
    let token = v["token"].as_str().expect("token").to_string();
    (id, token)
}

/// POSTs JSON with an optional `Authorization` value: status, headers, body.
async fn post(
    app: &RunningApp,
    path: &str,
    auth: Option<&str>,
    body: &Value,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = app
        .http
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = req.send().await.expect("request sent");
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

async fn one(app: &RunningApp, auth: Option<&str>, e: &Value) -> (StatusCode, HeaderMap, Value) {
    post(app, "/v1/ingest", auth, e).await
}

fn assert_401(status: StatusCode, headers: &HeaderMap, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    let www = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        www.starts_with("Bearer"),
        "{what}: WWW-Authenticate {www:?}"
    );
}

/// Waits until the queue is empty and the table holds `rows` rows.
async fn settled(env: &TestEnv, app: &RunningApp, rows: u64) {
    wait_until("every accepted event landed", BOUND, || async {
        app.health().await["queue_depth"] == 0 && env.row_count().await == rows
    })
    .await;
    assert_eq!(env.row_count().await, rows);
    assert!(env.dead_letters().await.is_empty());
}

/// A token row written straight through the store (an expired one, which the CLI cannot
/// make).
pub(crate) struct Insert(pub NewToken);
impl AsyncStoreFn<()> for Insert {
    async fn call<S: Store>(self, s: S) {
        s.create_token(&self.0).await.expect("insert token");
    }
}

/// Token mode end to end: a device's token writes for that device only (403 for a single
/// event of another device, a per-item error in a batch whose other items land); missing,
/// garbage, other-scheme, expired and revoked tokens get 401 + `WWW-Authenticate: Bearer`;
/// the scheme is case-insensitive; a token created while the service runs is accepted after
/// a refresh. Ends by counting rows against the accepted events and the refusal counters.
async fn a_token_writes_for_its_own_device_only(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let (_, t1) = create(&env, d1(), &["--expires", "90d"]).await;
    let (id2, t2) = create(&env, d2(), &[]).await;
    let expired = "nsr_expired-token-for-the-test".to_string();
    env.with_store(Insert(NewToken {
        id: Uuid::new_v4(),
        device_id: d1(),
        token_hash: nsready::collector::auth::hash(&expired),
        expires_at: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
    }))
    .await;
    let app = env.start(Role::Serve, TOKEN_MODE).await;
    let mut accepted = 0u64;

    for (i, scheme) in ["Bearer", "bearer", "BEARER", "bEaReR"].iter().enumerate() {
        let auth = format!("{scheme} {t1}");
        let (s, _, b) = one(&app, Some(&auth), &ev(d1(), i as i64)).await;
        assert_eq!(s, StatusCode::OK, "{scheme}: {b}");
        accepted += 1;
    }
    let bearer1 = format!("Bearer {t1}");
    let bearer2 = format!("Bearer {t2}");

    // Another device's event with d1's token: 403 naming device_id, nothing echoed.
    let (s, _, b) = one(&app, Some(&bearer1), &ev(d2(), 100)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["errors"][0]["loc"], json!(["device_id"]), "{b}");
    assert!(!b.to_string().contains(&t1), "{b}");

    // A batch mixing devices: the other device's item is a per-item error, the rest land.
    let batch = json!([ev(d1(), 200), ev(d2(), 201), ev(d1(), 202)]);
    let (s, _, b) = post(&app, "/v1/ingest/batch", Some(&bearer1), &batch).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["accepted"], 2, "{b}");
    assert_eq!(
        b["results"][1]["error"]["errors"][0]["loc"],
        json!(["device_id"]),
        "{b}"
    );
    assert!(b["results"][0]["trace_id"].is_string() && b["results"][2]["trace_id"].is_string());
    accepted += 2;
    // Only other devices' items: 403 for the whole batch.
    let batch = json!([ev(d2(), 300), ev(d2(), 301)]);
    let (s, _, b) = post(&app, "/v1/ingest/batch", Some(&bearer1), &batch).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["accepted"], 0, "{b}");

    // Missing, garbage, other scheme, expired: 401, also on the batch route.
    let garbage = format!("Bearer {}x", t1);
    let basic = format!("Basic {t1}");
    let expired_h = format!("Bearer {expired}");
    let cases: [(Option<&str>, &str); 6] = [
        (None, "missing"),
        (Some("Bearer"), "empty"),
        (Some("Bearer nsr_0000"), "unknown"),
        (Some(&garbage), "garbage"),
        (Some(&basic), "other scheme"),
        (Some(&expired_h), "expired"),
    ];
    for (auth, what) in cases {
        let (s, h, b) = one(&app, auth, &ev(d1(), 400)).await;
        assert_401(s, &h, &b, what);
        assert!(!b.to_string().contains(&t1), "{what}: {b}");
        let (s, h, b) = post(&app, "/v1/ingest/batch", auth, &json!([ev(d1(), 401)])).await;
        assert_401(s, &h, &b, what);
    }

    // d2's token works, then is revoked by the CLI: refused after a refresh.
    let (s, _, b) = one(&app, Some(&bearer2), &ev(d2(), 500)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    accepted += 1;
    let out = cli(&env, &["revoke", &id2]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    wait_until("the revocation is seen", BOUND, || async {
        one(&app, Some(&bearer2), &json!({})).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    let (s, h, b) = one(&app, Some(&bearer2), &ev(d2(), 501)).await;
    assert_401(s, &h, &b, "revoked");

    // A token made while the service runs is accepted once the cache reloads (probed with
    // an empty body: 400 means authenticated, nothing queued).
    let (_, t3) = create(&env, d2(), &[]).await;
    let bearer3 = format!("Bearer {t3}");
    wait_until("the new token is seen", BOUND, || async {
        one(&app, Some(&bearer3), &json!({})).await.0 == StatusCode::BAD_REQUEST
    })
    .await;
    let (s, _, b) = one(&app, Some(&bearer3), &ev(d2(), 600)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    accepted += 1;

    settled(&env, &app, accepted).await;
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, r#"ingest_refused_total{reason="forbidden"}"#),
        Some(4.0),
        "{m}"
    );
    assert!(
        metric(&m, r#"ingest_refused_total{reason="unauthorized"}"#).is_some_and(|n| n >= 13.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"ingest_events_total{status="queued"}"#),
        Some(accepted as f64)
    );
    app.stop().await;
}
crate::both_deployments!(a_token_writes_for_its_own_device_only);

/// `token create` prints the token once; `token list` (text, JSON, by device) never shows
/// a token or its hash; the store holds the SHA-256 and nowhere the token itself; an
/// unknown device is refused with a clear error; revoke by device removes every token of it.
async fn tokens_are_stored_only_as_hashes(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let (_, t1) = create(&env, d1(), &["--expires", "30d"]).await;
    let d2s = d2().to_string();
    let plain = cli(&env, &["create", "--device", &d2s]).await;
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let t2 = plain
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("nsr_"))
        .expect("the text output shows the token")
        .to_string();
    assert!(!plain.stderr.contains(&t2), "the token goes to stdout only");
    let tokens = [t1.clone(), t2.clone()];
    let hashes: Vec<String> = tokens
        .iter()
        .map(|t| nsready::collector::auth::hash(t))
        .collect();

    for args in [
        vec!["list"],
        vec!["list", "--json"],
        vec!["list", "--device", &d2s],
        vec!["list", "--device", &d2s, "--json"],
    ] {
        let out = cli(&env, &args).await;
        assert_eq!(out.code, 0, "{args:?}: {}", out.stderr);
        for secret in tokens.iter().chain(&hashes) {
            let body = &secret[4..];
            assert!(
                !out.stdout.contains(body) && !out.stderr.contains(body),
                "{args:?}: {}",
                out.stdout
            );
        }
    }
    let listed: Value =
        serde_json::from_str(&cli(&env, &["list", "--json"]).await.stdout).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(
        listed[0]["expires_at"].is_string() && listed[1]["expires_at"].is_null(),
        "{listed}"
    );

    // The store holds the hashes, and the token text appears nowhere in it.
    for (t, h) in tokens.iter().zip(&hashes) {
        let sql = format!("SELECT count(*) FROM tokens WHERE token_hash = '{h}'");
        assert_eq!(env.count(&sql), 1, "hash of a token stored");
        let body = &t[4..];
        match kind {
            Kind::ScaleOut | Kind::ScaleOutTimescale => {
                let sql = format!(
                    "SELECT count(*) FROM tokens x WHERE row_to_json(x)::text LIKE '%{body}%'"
                );
                assert_eq!(env.count(&sql), 0, "token text in the tokens table");
            }
            Kind::Embedded => {
                for f in ["nsready.db", "nsready.db-wal"] {
                    let bytes = std::fs::read(env.dir.path().join(f)).unwrap_or_default();
                    let found = bytes.windows(body.len()).any(|w| w == body.as_bytes());
                    assert!(!found, "token text in {f}");
                }
            }
        }
    }

    // An unknown device: a clear error, no row.
    let unknown = Uuid::new_v4().to_string();
    let out = cli(&env, &["create", "--device", &unknown]).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(&unknown) && out.stderr.contains("not in the registry"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("nsr_"), "{}", out.stdout);
    assert_eq!(env.count("SELECT count(*) FROM tokens"), 2);

    // Revoke by device; revoking what is gone says so and fails.
    let d1s = d1().to_string();
    let out = cli(&env, &["revoke", "--device", &d1s]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.count("SELECT count(*) FROM tokens"), 1);
    let out = cli(&env, &["revoke", "--device", &d1s]).await;
    assert_ne!(out.code, 0);
    let out = cli(&env, &["revoke"]).await;
    assert_ne!(out.code, 0, "revoke needs an id or --device");
}
crate::both_deployments!(tokens_are_stored_only_as_hashes);

/// Protected mode: no authentication configured on a non-loopback address refuses to
/// start, naming the fixes; INGEST_AUTH=none starts (open ingest on purpose), and so does
/// the shared token (INGEST_AUTH unset), which then wants its bearer (any scheme case).
async fn protected_mode_refuses_open_ingest_beyond_loopback(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    for role in [Role::Serve, Role::Collector] {
        if kind == Kind::Embedded && role == Role::Collector {
            continue;
        }
        let s = env.settings(&["--service-host", "0.0.0.0"]);
        let err = match App::build(&s, role, Shutdown::new()).await {
            Ok(_) => panic!("{role:?} started with open ingest on 0.0.0.0"),
            Err(e) => e.to_string(),
        };
        for fix in [
            "INGEST_AUTH=token",
            "INGEST_AUTH=none",
            "SERVICE_HOST=127.0.0.1",
        ] {
            assert!(err.contains(fix), "{err}");
        }
        assert!(!err.contains('\n'), "one line: {err}");
    }
    // Workers take no ingest: no refusal.
    if kind == Kind::ScaleOut {
        let w = env
            .start(Role::Worker, &["--service-host", "0.0.0.0"])
            .await;
        w.stop().await;
    }

    let app = env
        .start(
            Role::Serve,
            &["--service-host", "0.0.0.0", "--ingest-auth", "none"],
        )
        .await;
    let (s, _, b) = one(&app, None, &ev(d1(), 1)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    app.stop().await;

    let app = env
        .start(
            Role::Serve,
            &["--service-host", "0.0.0.0", "--ingest-auth-token", "s3cret"],
        )
        .await;
    let (s, h, b) = one(&app, None, &ev(d1(), 2)).await;
    assert_401(s, &h, &b, "shared, missing");
    let (s, h, b) = one(&app, Some("Bearer s3cre"), &ev(d1(), 2)).await;
    assert_401(s, &h, &b, "shared, wrong");
    let (s, _, b) = one(&app, Some("bearer s3cret"), &ev(d1(), 2)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    settled(&env, &app, 2).await;
    app.stop().await;
}
crate::both_deployments!(protected_mode_refuses_open_ingest_beyond_loopback);

/// The binary says it in one line on stderr and exits non-zero before opening anything;
/// with INGEST_AUTH=none it starts and warns that ingest is open.
#[test]
fn protected_mode_says_so_in_one_line() {
    let env = TestEnv::new(Kind::Embedded);
    let out = env
        .command(
            "serve",
            &["--service-host", "0.0.0.0", "--log-format", "json"],
        )
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("refusing to start"))
        .unwrap_or_else(|| panic!("no refusal line: {err}"));
    assert!(
        line.contains("INGEST_AUTH=none") && line.contains("SERVICE_HOST=127.0.0.1"),
        "{line}"
    );
    assert!(
        !env.dir.path().join("queue.db").exists(),
        "refused before opening anything"
    );

    let port = crate::support::servers::free_port().to_string();
    let mut child = crate::support::Proc(
        env.command(
            "serve",
            &[
                "--service-host",
                "0.0.0.0",
                "--service-port",
                &port,
                "--ingest-auth",
                "none",
                "--log-format",
                "json",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn"),
    );
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(crate::support::app::wait_ready(&format!(
        "http://127.0.0.1:{port}"
    )));
    crate::support::signal(&child.0, libc::SIGTERM);
    let mut logs = String::new();
    for s in [
        child
            .0
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read>),
        child
            .0
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut s = s;
        let _ = s.read_to_string(&mut logs);
    }
    let _ = child.0.wait();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("ingest is open"))
        .count();
    assert_eq!(warnings, 1, "{logs}");
}

/// The per-device rate limit: beyond the burst a single event gets 429 with Retry-After;
/// in a batch the excess items are per-item errors marked retryable (the others land), and
/// a batch that queued nothing because of it is 429 too; devices are limited apart. The
/// refusals are counted by a device-free label; rows = accepted events.
async fn the_rate_limit_is_per_device(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env
        .start(
            Role::Serve,
            &["--ingest-rate-limit", "1", "--ingest-rate-burst", "5"],
        )
        .await;
    let mut accepted = 0u64;
    let mut limited = 0u64;

    // One batch of 8 for d1: the burst (5) passes, 3 are refused per item.
    let batch: Vec<Value> = (0..8).map(|i| ev(d1(), i)).collect();
    let (s, _, b) = post(&app, "/v1/ingest/batch", None, &Value::Array(batch)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ok = b["accepted"].as_u64().expect("accepted");
    // At 1 event/s at most one more can have refilled while the batch was checked.
    assert!((5..=6).contains(&ok), "{b}");
    let errors: Vec<&Value> = b["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["error"].is_object())
        .collect();
    assert_eq!(errors.len() as u64, 8 - ok, "{b}");
    assert!(
        errors.iter().all(|e| e["error"]["retryable"] == true),
        "{b}"
    );
    accepted += ok;
    limited += 8 - ok;

    // Another device is not affected.
    let (s, _, b) = one(&app, None, &ev(d2(), 100)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    accepted += 1;

    // Single events for d1 until one is refused: 429 with Retry-After (a loop, so a slow
    // machine that refills a token between requests does not matter).
    let mut seen_429 = false;
    for i in 0..50 {
        let (s, h, b) = one(&app, None, &ev(d1(), 200 + i)).await;
        match s {
            StatusCode::OK => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let secs: u64 = h
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("Retry-After in whole seconds");
                assert!(secs >= 1, "{secs}");
                assert!(
                    b["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("INGEST_RATE_LIMIT")),
                    "{b}"
                );
                limited += 1;
                seen_429 = true;
                break;
            }
            other => panic!("{other}: {b}"),
        }
    }
    assert!(seen_429, "no 429 in 50 requests at 1 event/s");

    // A batch for d1 with nothing left: 429 for the whole answer, with Retry-After.
    let mut whole_429 = false;
    for round in 0..20 {
        let batch: Vec<Value> = (0..3).map(|i| ev(d1(), 1_000 + round * 10 + i)).collect();
        let (s, h, b) = post(&app, "/v1/ingest/batch", None, &Value::Array(batch)).await;
        let ok = b["accepted"].as_u64().expect("accepted");
        accepted += ok;
        limited += 3 - ok;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(ok, 0, "{b}");
            assert_eq!(b["status"], "rate_limited", "{b}");
            assert!(h.get("retry-after").is_some());
            whole_429 = true;
            break;
        }
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    assert!(whole_429, "no whole-batch 429");

    settled(&env, &app, accepted).await;
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, r#"ingest_refused_total{reason="rate_limited"}"#),
        Some(limited as f64),
        "{m}"
    );
    assert!(!m.contains(&d1().to_string()), "no device id in a label");
    app.stop().await;
}
crate::both_deployments!(the_rate_limit_is_per_device);

/// `loadgen --mint-tokens` loads a token-mode service: every device's events carry its own
/// token (no 4xx), the run verifies (rows = accepted × metrics), and the tokens are gone
/// afterwards.
async fn loadgen_mints_a_token_per_device(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, TOKEN_MODE).await;
    let base = app.base.clone();
    let out = tokio::process::Command::from(env.command(
        "loadgen",
        &[
            "--url",
            &base,
            "--json",
            "--quiet",
            "--log-level",
            "warn",
            "--mint-tokens",
            "--duration",
            "2",
            "--concurrency",
            "4",
            "--devices",
            "4",
        ],
    ))
    .output()
    .await
    .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim()).expect("report");
    assert_eq!(r["verification"]["status"], "PASS", "{r}");
    assert_eq!(r["rejected_4xx_events"], 0, "{r}");
    assert_eq!(r["auth"], "device tokens", "{r}");
    assert!(r["accepted_events"].as_u64().is_some_and(|n| n > 0), "{r}");
    assert_eq!(
        env.count("SELECT count(*) FROM tokens"),
        0,
        "revoked after the run"
    );
    let rows = r["accepted_rows"].as_u64().expect("rows");
    assert_eq!(env.row_count().await, rows);
    app.stop().await;
}
crate::both_deployments!(loadgen_mints_a_token_per_device);

/// `serve --demo` with INGEST_AUTH=token still prints a curl that works as printed: it
/// carries a token minted for the demo device (and the token is stored only as a hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_with_tokens_prints_a_curl_that_works() {
    use std::io::BufRead;
    let env = TestEnv::new(Kind::Embedded);
    let port = crate::support::servers::free_port().to_string();
    let mut child = crate::support::Proc(
        env.command("serve", &["--demo", "--service-port", &port])
            .env("INGEST_AUTH", "token")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let curl = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("curl "))
    })
    .await
    .expect("join")
    .expect("a curl line");
    assert!(curl.contains("Authorization: Bearer nsr_"), "{curl}");
    crate::support::app::wait_ready(&format!("http://127.0.0.1:{port}")).await;
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&curl)
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.starts_with(r#"{"status":"queued""#), "{body}");
    let unauthenticated = curl.replace("Authorization", "X-Nothing");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{unauthenticated} -o /dev/null -w '%{{http_code}}'"
        ))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    assert_eq!(env.count("SELECT count(*) FROM tokens"), 1);
}
