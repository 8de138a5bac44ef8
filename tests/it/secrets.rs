//! No secret in any output: real `nsready serve` processes (scale-out, debug logs) use every
//! secret there is — a PostgreSQL password in DATABASE_URL, in POSTGRES_PASSWORD_FILE and in
//! DATABASE_URL_FILE, a NATS user/password (settings and `user:pass@` in NATS_URL), a NATS
//! token (NATS_TOKEN_FILE), the ingest token (plain and INGEST_AUTH_TOKEN_FILE) — against
//! servers that demand them. Everything the processes print (stdout, stderr), `nsready
//! status` (text and JSON) and the `/v1/health` body are captured and searched for each
//! secret value. Failing starts (a wrong PostgreSQL or NATS password) are searched too.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nsready::config::PgConnect;
use nsready::store::{PostgresStore, Store};
use reqwest::StatusCode;

use crate::support::app::{wait_ready, wait_until};
use crate::support::servers::{NatsServer, PgOptions, Postgres, free_port};
use crate::support::{Proc, event, signal};

/// A secret value no other text contains.
fn secret(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// A nats-server with JetStream that accepts only `authorization` (a NATS config block).
fn nats_with_auth(dir: &Path, name: &str, authorization: &str) -> NatsServer {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, format!("authorization {{ {authorization} }}\n")).expect("nats conf");
    NatsServer::start_with_args(&["-c", &conf.display().to_string()])
}

/// The fixed environment of every process (fast retries, debug logs, no inherited settings).
fn base_env(port: u16) -> BTreeMap<String, String> {
    [
        ("SERVICE_HOST", "127.0.0.1".to_string()),
        ("SERVICE_PORT", port.to_string()),
        ("LOG_LEVEL", "debug".to_string()),
        ("LOG_FORMAT", "json".to_string()),
        ("WORKER_BATCH_TIMEOUT", "0.05".to_string()),
        ("DB_CONNECT_RETRIES", "2".to_string()),
        ("DB_CONNECT_DELAY", "0.2".to_string()),
        ("NATS_CONNECT_RETRIES", "2".to_string()),
        ("NATS_CONNECT_DELAY", "0.2".to_string()),
        ("SHUTDOWN_TIMEOUT", "5".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn nsready(args: &[&str], env: &BTreeMap<String, String>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nsready"));
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null());
    c
}

/// Runs `nsready serve` with `env`, posts one event with the ingest token, waits for its
/// row, reads `/v1/health` and `nsready status` (text and JSON), stops the process with
/// SIGTERM, and returns everything it and they printed.
async fn serve_and_capture(
    env: &BTreeMap<String, String>,
    port: u16,
    ingest_token: &str,
    pg: &Postgres,
    db: &str,
    dir: &Path,
) -> String {
    let out = dir.join(format!("serve-{port}.out"));
    let err = dir.join(format!("serve-{port}.err"));
    let mut cmd = nsready(&["serve"], env);
    cmd.stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    let mut proc = Proc(cmd.spawn().expect("spawn nsready serve"));
    let base = format!("http://127.0.0.1:{port}");
    let ready = tokio::time::timeout(Duration::from_secs(30), wait_ready(&base)).await;
    if ready.is_err() || proc.0.try_wait().ok().flatten().is_some() {
        panic!(
            "nsready serve did not become ready; output:\n{}{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default()
        );
    }
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/ingest"))
        .bearer_auth(ingest_token)
        // A distinct event per run: runs share a NATS server, whose duplicate window would
        // drop a repeat.
        .json(&event(i64::from(port), &[("voltage", 1.0)]))
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );
    // Also a refused attempt with a wrong token (its 401 and log lines are captured too).
    let r = http
        .post(format!("{base}/v1/ingest"))
        .bearer_auth("wrong-token")
        .json(&event(1, &[("voltage", 1.0)]))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let landed = tokio::time::timeout(
        Duration::from_secs(30),
        wait_until("the event is a row", Duration::from_secs(60), || async {
            pg.psql(db, "SELECT count(*) FROM ingest_events") == "1"
        }),
    )
    .await;
    if landed.is_err() {
        panic!(
            "the event did not land in {db}; output:\n{}{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default()
        );
    }
    let health = http
        .get(format!("{base}/v1/health"))
        .send()
        .await
        .expect("health")
        .text()
        .await
        .expect("health body");
    assert!(health.contains("\"db\""), "{health}");
    let mut captured = format!("--- /v1/health\n{health}\n");
    for args in [
        vec!["status", "--url", &base],
        vec!["status", "--url", &base, "--json"],
    ] {
        let o = nsready(&args, env).output().expect("nsready status");
        captured.push_str(&format!(
            "--- {args:?}\n{}{}\n",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    signal(&proc.0, libc::SIGTERM);
    let status = proc.0.wait().expect("wait for nsready");
    assert!(status.success(), "clean stop: {status}");
    for f in [&out, &err] {
        captured.push_str(&std::fs::read_to_string(f).expect("captured output"));
    }
    captured
}

fn assert_none_in(text: &str, secrets: &[&str], what: &str) {
    assert!(
        text.len() > 200,
        "{what}: too little output captured to prove anything"
    );
    for s in secrets {
        assert!(!text.contains(s), "{what} printed a secret ({s}):\n{text}");
    }
}

async fn prepare_db(pg: &Postgres, db: &str, owner: &str, password: &str) {
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {owner} LOGIN PASSWORD '{password}'"),
    );
    // The migration reads shared_preload_libraries when TimescaleDB is installed on the
    // machine; a non-superuser owner needs this role for that.
    pg.psql(
        "postgres",
        &format!("GRANT pg_read_all_settings TO {owner}"),
    );
    pg.psql("postgres", &format!("CREATE DATABASE {db} OWNER {owner}"));
    let url = format!("postgres://{owner}:{password}@127.0.0.1:{}/{db}", pg.port());
    let store = PostgresStore::connect(
        &PgConnect::from_url(&url).expect("url"),
        1,
        Duration::from_secs(5),
    )
    .expect("pool");
    store.migrate().await.expect("migrate");
    store
        .import_registry(&nsready::registry::demo())
        .await
        .expect("import demo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_errors_status_or_health() {
    let dir = tempfile::tempdir().expect("dir");
    let pg = Postgres::start_with(PgOptions {
        tls: None,
        hba: Some(PgOptions::password_auth()),
    });
    let pg_url_pw = secret("pgurl");
    let pg_file_pw = secret("pgfile");
    let nats_pw = secret("natspw");
    let nats_token = secret("natstoken");
    let ingest_a = secret("ingesta");
    let ingest_b = secret("ingestb");
    prepare_db(&pg, "db_a", "app_a", &pg_url_pw).await;
    prepare_db(&pg, "db_b", "app_b", &pg_file_pw).await;
    prepare_db(&pg, "db_c", "app_c", &pg_url_pw).await;
    let nats_user = nats_with_auth(
        dir.path(),
        "user",
        &format!("user: nsready, password: \"{nats_pw}\""),
    );
    let nats_tok = nats_with_auth(dir.path(), "token", &format!("token: \"{nats_token}\""));
    let file = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{content}\n")).expect("secret file");
        p.display().to_string()
    };
    let all = [
        pg_url_pw.as_str(),
        pg_file_pw.as_str(),
        nats_pw.as_str(),
        nats_token.as_str(),
        ingest_a.as_str(),
        ingest_b.as_str(),
    ];

    // A: password in DATABASE_URL, NATS_USER / NATS_PASSWORD, INGEST_AUTH_TOKEN.
    let port = free_port();
    let mut env = base_env(port);
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://app_a:{pg_url_pw}@127.0.0.1:{}/db_a", pg.port()),
    );
    env.insert("NATS_URL".into(), nats_user.url());
    env.insert("NATS_USER".into(), "nsready".into());
    env.insert("NATS_PASSWORD".into(), nats_pw.clone());
    env.insert("INGEST_AUTH_TOKEN".into(), ingest_a.clone());
    let a = serve_and_capture(&env, port, &ingest_a, &pg, "db_a", dir.path()).await;
    assert_none_in(&a, &all, "run A (URL password, NATS user/password)");

    // B: seed-style variables with POSTGRES_PASSWORD_FILE, NATS_TOKEN_FILE,
    // INGEST_AUTH_TOKEN_FILE.
    let port = free_port();
    let mut env = base_env(port);
    env.insert("DB_HOST".into(), "127.0.0.1".into());
    env.insert("DB_PORT".into(), pg.port().to_string());
    env.insert("POSTGRES_DB".into(), "db_b".into());
    env.insert("POSTGRES_USER".into(), "app_b".into());
    env.insert("POSTGRES_PASSWORD_FILE".into(), file("pg_pw", &pg_file_pw));
    env.insert("NATS_URL".into(), nats_tok.url());
    env.insert("NATS_TOKEN_FILE".into(), file("nats_token", &nats_token));
    env.insert("INGEST_AUTH_TOKEN_FILE".into(), file("ingest", &ingest_b));
    let b = serve_and_capture(&env, port, &ingest_b, &pg, "db_b", dir.path()).await;
    assert_none_in(&b, &all, "run B (*_FILE secrets, NATS token)");

    // C: DATABASE_URL_FILE and `user:password@` in NATS_URL, NATS_PASSWORD_FILE unused.
    let port = free_port();
    let mut env = base_env(port);
    env.insert(
        "DATABASE_URL_FILE".into(),
        file(
            "db_url",
            &format!("postgres://app_c:{pg_url_pw}@127.0.0.1:{}/db_c", pg.port()),
        ),
    );
    env.insert(
        "NATS_URL".into(),
        format!("nats://nsready:{nats_pw}@127.0.0.1:{}", nats_user.port()),
    );
    env.insert("INGEST_AUTH_TOKEN".into(), ingest_a.clone());
    let c = serve_and_capture(&env, port, &ingest_a, &pg, "db_c", dir.path()).await;
    assert_none_in(
        &c,
        &all,
        "run C (DATABASE_URL_FILE, credentials in NATS_URL)",
    );
}

#[test]
fn a_failing_start_with_a_wrong_password_does_not_print_it() {
    let dir = tempfile::tempdir().expect("dir");
    let pg = Postgres::start_with(PgOptions {
        tls: None,
        hba: Some(PgOptions::password_auth()),
    });
    let right = secret("right");
    let wrong = secret("wrong");
    pg.psql(
        "postgres",
        &format!("CREATE ROLE app LOGIN PASSWORD '{right}'"),
    );
    pg.psql("postgres", "CREATE DATABASE db OWNER app");
    let nats_pw = secret("natspw");
    let nats = nats_with_auth(
        dir.path(),
        "user",
        &format!("user: nsready, password: \"{nats_pw}\""),
    );
    let run = |env: &BTreeMap<String, String>| {
        let o = nsready(&["serve"], env).output().expect("run nsready");
        assert!(!o.status.success(), "the start must fail");
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // A wrong PostgreSQL password in DATABASE_URL (NATS is right).
    let mut env = base_env(free_port());
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://app:{wrong}@127.0.0.1:{}/db", pg.port()),
    );
    env.insert(
        "NATS_URL".into(),
        format!("nats://nsready:{nats_pw}@127.0.0.1:{}", nats.port()),
    );
    let out = run(&env);
    assert!(out.contains("password authentication failed"), "{out}");
    assert_none_in(
        &out,
        &[&wrong, &right, &nats_pw],
        "a wrong PostgreSQL password",
    );

    // A wrong NATS password, in NATS_URL and in NATS_PASSWORD_FILE.
    let bad_nats = secret("badnats");
    let mut env = base_env(free_port());
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://app:{right}@127.0.0.1:{}/db", pg.port()),
    );
    env.insert(
        "NATS_URL".into(),
        format!("nats://nsready:{bad_nats}@127.0.0.1:{}", nats.port()),
    );
    let out = run(&env);
    assert!(out.to_lowercase().contains("authorization"), "{out}");
    assert_none_in(
        &out,
        &[&bad_nats, &right, &nats_pw],
        "a wrong password in NATS_URL",
    );
    let file = dir.path().join("nats_pw");
    std::fs::write(&file, format!("{bad_nats}\n")).expect("secret file");
    env.insert("NATS_URL".into(), nats.url());
    env.insert("NATS_USER".into(), "nsready".into());
    env.insert("NATS_PASSWORD_FILE".into(), file.display().to_string());
    let out = run(&env);
    assert_none_in(
        &out,
        &[&bad_nats, &right, &nats_pw],
        "a wrong NATS_PASSWORD_FILE",
    );

    // Both ways at once, and an unreadable file: refused by name, never by value.
    env.insert("NATS_PASSWORD".into(), bad_nats.clone());
    let out = run(&env);
    assert!(
        out.contains("NATS_PASSWORD") && out.contains("NATS_PASSWORD_FILE"),
        "{out}"
    );
    assert!(!out.contains(&bad_nats), "{out}");
    env.remove("NATS_PASSWORD");
    env.insert("NATS_PASSWORD_FILE".into(), "/nonexistent/nats_pw".into());
    let out = run(&env);
    assert!(
        out.contains("NATS_PASSWORD_FILE") && out.contains("/nonexistent/nats_pw"),
        "{out}"
    );
}
