//! TLS wherever nsready crosses a network, against real servers with certificates made in
//! the test (rcgen): the HTTPS listener (and mTLS), PostgreSQL (`sslmode` require,
//! verify-ca, verify-full, `sslrootcert`) and NATS (CA, client certificate, `verify: true`).
//! Each also tries the failure its check exists for.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use nsready::app::{App, Role};
use nsready::config::{PgConnect, Settings};
use nsready::queue::jetstream;
use nsready::shutdown::Shutdown;
use nsready::store::{PostgresStore, Store};
use reqwest::StatusCode;

use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::event;
use crate::support::servers::{Issued, NatsServer, PgOptions, Postgres, TestCa};

const SETTLE: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct SettingsOnly {
    #[command(flatten)]
    settings: Settings,
}

/// Settings for an in-process app: fast retries, port 0, then `extra`.
fn settings(extra: &[String]) -> Settings {
    let mut args: Vec<String> = [
        "nsready",
        "--worker-batch-timeout",
        "0.05",
        "--worker-retry-delay",
        "0.2",
        "--db-connect-retries",
        "2",
        "--db-connect-delay",
        "0.2",
        "--nats-connect-retries",
        "2",
        "--nats-connect-delay",
        "0.2",
        "--db-timeout",
        "5",
        "--service-host",
        "127.0.0.1",
        "--service-port",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    SettingsOnly::try_parse_from(args)
        .expect("settings parse")
        .settings
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// An HTTPS client trusting `ca`, presenting `identity` when given.
fn https_client(ca: &TestCa, identity: Option<&Issued>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).expect("CA pem"),
        )
        .timeout(Duration::from_secs(60));
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert_pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity pem"));
    }
    b.build().expect("https client")
}

async fn post(client: &reqwest::Client, port: u16, secs: i64) -> reqwest::Result<StatusCode> {
    let r = client
        .post(format!("https://127.0.0.1:{port}/v1/ingest"))
        .json(&event(secs, &[("voltage", 1.0)]))
        .send()
        .await?;
    Ok(r.status())
}

/// The listener speaks HTTPS with the configured certificate: an event posted over TLS
/// lands; plain HTTP on the same port gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_with_its_certificate_and_refuses_plain_http() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let ca = TestCa::new("nsready test CA");
    let (cert, key) = ca
        .server(&["127.0.0.1", "localhost"])
        .write(env.dir.path(), "http");
    let app = env
        .start(
            Role::Serve,
            &["--tls-cert-file", &s(&cert), "--tls-key-file", &s(&key)],
        )
        .await;
    let client = https_client(&ca, None);
    assert_eq!(
        post(&client, app.port, 0).await.expect("https"),
        StatusCode::OK
    );
    let health = client
        .get(format!("https://127.0.0.1:{}/v1/health", app.port))
        .send()
        .await
        .expect("health over https");
    assert_eq!(health.status(), StatusCode::OK);
    // `nsready status` reaches the HTTPS service, trusting the CA through SSL_CERT_FILE.
    let ca_file = ca.write(env.dir.path(), "ca.pem");
    let url = format!("https://127.0.0.1:{}", app.port);
    let out = env
        .command("status", &["--url", &url, "--json"])
        .env("SSL_CERT_FILE", &ca_file)
        .output()
        .expect("nsready status");
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status prints JSON");
    assert!(
        status["health"].is_object(),
        "status read the health document: {status}"
    );
    // Plain HTTP to the TLS port: the handshake fails, no HTTP answer at all.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let r = plain
        .get(format!("http://127.0.0.1:{}/v1/health", app.port))
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP must not be answered: {r:?}");
    // A client that does not trust the CA refuses the server.
    let other = https_client(&TestCa::new("other CA"), None);
    assert!(post(&other, app.port, 1).await.is_err());
    wait_until("the one accepted event is a row", SETTLE, || async {
        env.row_count().await == 1
    })
    .await;
    app.stop().await;
}

/// mTLS: with TLS_CLIENT_CA_FILE, a client with a certificate from that CA is served; one
/// without a certificate, or with one from another CA, is refused in the handshake (no HTTP
/// request reaches the service: rows = accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_trusted_certificate_at_the_handshake() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let ca = TestCa::new("server CA");
    let gateways = TestCa::new("gateway CA");
    let dir = env.dir.path();
    let (cert, key) = ca.server(&["127.0.0.1"]).write(dir, "http");
    let client_ca = gateways.write(dir, "gateways.pem");
    let app = env
        .start(
            Role::Serve,
            &[
                "--tls-cert-file",
                &s(&cert),
                "--tls-key-file",
                &s(&key),
                "--tls-client-ca-file",
                &s(&client_ca),
            ],
        )
        .await;
    let good = https_client(&ca, Some(&gateways.client("gateway-1")));
    assert_eq!(
        post(&good, app.port, 0).await.expect("mTLS"),
        StatusCode::OK
    );
    let anonymous = https_client(&ca, None);
    let r = post(&anonymous, app.port, 1).await;
    assert!(r.is_err(), "no client certificate must be refused: {r:?}");
    let stranger = https_client(&ca, Some(&TestCa::new("rogue CA").client("gateway-1")));
    let r = post(&stranger, app.port, 2).await;
    assert!(
        r.is_err(),
        "an untrusted client certificate must be refused: {r:?}"
    );
    assert_eq!(
        post(&good, app.port, 3).await.expect("mTLS"),
        StatusCode::OK
    );
    wait_until("the two accepted events are rows", SETTLE, || async {
        env.row_count().await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.row_count().await, 2, "refused clients wrote nothing");
    app.stop().await;
}

/// A client that opens TCP and never starts the TLS handshake holds its connection slot
/// only until HTTP_HEADER_TIMEOUT: with one slot, a real client is served after it (the
/// idle timeout is an hour, so nothing else frees the slot), and the silent one is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_handshakes_loses_its_slot_at_the_header_timeout() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let ca = TestCa::new("nsready test CA");
    let (cert, key) = ca.server(&["127.0.0.1"]).write(env.dir.path(), "http");
    let app = env
        .start(
            Role::Serve,
            &[
                "--tls-cert-file",
                &s(&cert),
                "--tls-key-file",
                &s(&key),
                "--http-max-connections",
                "1",
                "--http-header-timeout",
                "1",
                "--http-idle-timeout",
                "1h",
            ],
        )
        .await;
    let port = app.port;
    let silent = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(120)))
            .expect("read timeout");
        let mut buf = [0u8; 16];
        // Never sends a byte; the server closes it (EOF), or resets it.
        matches!(tcp.read(&mut buf), Ok(0) | Err(_)) && tcp.read(&mut buf).map_or(true, |n| n == 0)
    });
    // Let the silent client take the slot first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = https_client(&ca, None);
    assert_eq!(
        post(&client, port, 0).await.expect("served"),
        StatusCode::OK
    );
    assert!(
        silent.await.expect("silent client"),
        "the silent client was closed"
    );
    app.stop().await;
}

/// A certificate without its key (or the other way round) is a configuration error naming
/// both; an unreadable certificate a start-up error naming the variable and the path.
#[test]
fn tls_files_that_cannot_work_stop_the_start_with_their_names() {
    let env = TestEnv::new(Kind::Embedded);
    let out = env
        .command("serve", &["--tls-cert-file", "/nonexistent/cert.pem"])
        .output()
        .expect("run nsready");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS_CERT_FILE") && err.contains("TLS_KEY_FILE"),
        "{err}"
    );
    let ca = TestCa::new("ca");
    let (_, key) = ca.server(&["127.0.0.1"]).write(env.dir.path(), "http");
    let out = env
        .command(
            "serve",
            &[
                "--tls-cert-file",
                "/nonexistent/cert.pem",
                "--tls-key-file",
                &s(&key),
            ],
        )
        .output()
        .expect("run nsready");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS_CERT_FILE") && err.contains("/nonexistent/cert.pem"),
        "{err}"
    );
}

// ---------------------------------------------------------------- PostgreSQL

/// A PostgreSQL with `ssl=on` and a certificate for `names`, signed by `ca`.
fn tls_postgres(ca: &TestCa, names: &[&str]) -> Postgres {
    let server = ca.server(names);
    Postgres::start_with(PgOptions {
        tls: Some((server.cert_pem, server.key_pem)),
        hba: None,
    })
}

/// Pings through a fresh store for `url`; the error text on failure.
async fn ping(url: &str) -> Result<(), String> {
    let pg = PgConnect::from_url(url).map_err(|e| e.to_string())?;
    let store =
        PostgresStore::connect(&pg, 1, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    store.ping().await.map_err(|e| e.to_string())
}

/// Whether the connections named `app` are encrypted, from the server's own view.
fn encrypted(pg: &Postgres, app: &str) -> String {
    pg.psql(
        "postgres",
        &format!(
            "SELECT coalesce(string_agg(s.ssl::text, ','), 'none') FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{app}'"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmode_require_encrypts_and_verify_full_checks_ca_and_host() {
    let ca = TestCa::new("pg CA");
    let pg = tls_postgres(&ca, &["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().expect("dir");
    let root = ca.write(dir.path(), "root.crt");
    let port = pg.port();

    // require: encrypted, nothing verified.
    let url = format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require&application_name=req"
    );
    let pgc = PgConnect::from_url(&url).expect("url");
    let store = PostgresStore::connect(&pgc, 1, Duration::from_secs(5)).expect("pool");
    store
        .ping()
        .await
        .expect("sslmode=require against a TLS server");
    assert_eq!(
        encrypted(&pg, "req"),
        "true",
        "the pooled connection uses TLS"
    );
    // The default (prefer) encrypts when the server offers it.
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?application_name=pref");
    let pgc = PgConnect::from_url(&url).expect("url");
    let prefer = PostgresStore::connect(&pgc, 1, Duration::from_secs(5)).expect("pool");
    prefer.ping().await.expect("prefer");
    assert_eq!(encrypted(&pg, "pref"), "true");

    // verify-full with the right CA, by DNS name and by IP address.
    for host in ["localhost", "127.0.0.1"] {
        let url = format!(
            "postgres://postgres@{host}:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            root.display()
        );
        ping(&url)
            .await
            .unwrap_or_else(|e| panic!("verify-full to {host}: {e}"));
    }
    // The seed-style variables: DB_SSLMODE / DB_SSLROOTCERT.
    let seed = settings(&[
        "--db-host".into(),
        "localhost".into(),
        "--db-port".into(),
        port.to_string(),
        "--postgres-db".into(),
        "postgres".into(),
        "--db-sslmode".into(),
        "verify-full".into(),
        "--db-sslrootcert".into(),
        s(&root),
        "--nats-url".into(),
        "nats://127.0.0.1:1".into(),
    ]);
    let nsready::config::Deployment::ScaleOut { pg: seed_pg, .. } =
        seed.deployment().expect("deployment")
    else {
        panic!("scale-out expected")
    };
    PostgresStore::connect(&seed_pg, 1, Duration::from_secs(5))
        .expect("pool")
        .ping()
        .await
        .expect("DB_SSLMODE=verify-full");

    // verify-ca refuses a server whose chain leads to an unknown CA.
    let stranger = TestCa::new("unknown CA").write(dir.path(), "unknown.crt");
    let url = format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-ca&sslrootcert={}",
        stranger.display()
    );
    let e = ping(&url)
        .await
        .expect_err("verify-ca must refuse an unknown CA");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    eprintln!("verify-ca, unknown CA: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_refuses_a_certificate_for_another_host() {
    let ca = TestCa::new("pg CA");
    let pg = tls_postgres(&ca, &["db.other.example"]);
    let dir = tempfile::tempdir().expect("dir");
    let root = ca.write(dir.path(), "root.crt");
    let url = |mode: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={mode}&sslrootcert={}",
            pg.port(),
            root.display()
        )
    };
    let e = ping(&url("verify-full"))
        .await
        .expect_err("verify-full must refuse a certificate for another name");
    eprintln!("verify-full, wrong host: {e}");
    assert!(e.contains("TLS") && e.contains("certificate"), "{e}");
    assert!(
        e.to_lowercase().contains("name"),
        "the error says it is the name: {e}"
    );
    // The same chain passes verify-ca (no name check), and require with a root (libpq).
    ping(&url("verify-ca"))
        .await
        .expect("verify-ca ignores the name");
    ping(&url("require"))
        .await
        .expect("require + sslrootcert = verify-ca");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmode_require_against_a_server_without_tls_fails_clearly() {
    let pg = Postgres::start();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        pg.port()
    );
    let e = ping(&url)
        .await
        .expect_err("require must not fall back to plain");
    eprintln!("require, server without TLS: {e}");
    assert!(e.contains("TLS"), "{e}");
    // disable and the default (prefer) connect in plain text.
    ping(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port()
    ))
    .await
    .expect("disable");
    ping(&pg.url("postgres"))
        .await
        .expect("prefer falls back to plain");
}

// ---------------------------------------------------------------- NATS

/// A TLS-only nats-server with JetStream; `verify: true` when `client_ca` is given.
fn tls_nats(dir: &Path, ca: &TestCa, client_ca: Option<&Path>) -> NatsServer {
    let (cert, key) = ca.server(&["127.0.0.1", "localhost"]).write(dir, "nats");
    let verify = client_ca.map_or(String::new(), |p| {
        format!("  ca_file: \"{}\"\n  verify: true\n", p.display())
    });
    let conf = dir.join("nats-tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n{verify}  timeout: 5\n}}\n",
            cert.display(),
            key.display()
        ),
    )
    .expect("write nats conf");
    NatsServer::start_with_args(&["-c", &s(&conf)])
}

struct NatsTls {
    _dir: tempfile::TempDir,
    server: NatsServer,
    ca_file: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn nats_with_client_verification() -> NatsTls {
    let dir = tempfile::tempdir().expect("dir");
    let ca = TestCa::new("nats CA");
    let clients = TestCa::new("nats clients CA");
    let client_ca = clients.write(dir.path(), "clients.pem");
    let server = tls_nats(dir.path(), &ca, Some(&client_ca));
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (client_cert, client_key) = clients.client("nsready").write(dir.path(), "client");
    NatsTls {
        _dir: dir,
        server,
        ca_file,
        client_cert,
        client_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_needs_the_ca_and_a_client_certificate() {
    let n = nats_with_client_verification();
    let url = n.server.url();
    let with = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["--nats-url".into(), url.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        settings(&args)
    };
    let ca = s(&n.ca_file);
    let cert = s(&n.client_cert);
    let key = s(&n.client_key);
    let good = with(&[
        "--nats-tls-ca",
        &ca,
        "--nats-tls-cert",
        &cert,
        "--nats-tls-key",
        &key,
    ]);
    good.validate().expect("valid");
    let client = jetstream::connect(&url, &good.nats)
        .await
        .expect("CA + client certificate");
    drop(client);

    let no_cert = with(&["--nats-tls", "--nats-tls-ca", &ca]);
    let e = jetstream::connect(&url, &no_cert.nats)
        .await
        .expect_err("no client certificate must be refused")
        .to_string();
    eprintln!("NATS without a client certificate: {e}");
    assert!(e.contains("after 2 attempts"), "{e}");

    let untrusted_dir = tempfile::tempdir().expect("dir");
    let other = TestCa::new("other").write(untrusted_dir.path(), "other.pem");
    let untrusted = with(&[
        "--nats-tls-ca",
        &s(&other),
        "--nats-tls-cert",
        &cert,
        "--nats-tls-key",
        &key,
    ]);
    let e = jetstream::connect(&url, &untrusted.nats)
        .await
        .expect_err("a server from an untrusted CA must be refused")
        .to_string();
    eprintln!("NATS, untrusted CA: {e}");
    assert!(e.contains("after 2 attempts"), "{e}");
    assert!(
        e.to_lowercase().contains("certificate") || e.to_lowercase().contains("tls"),
        "{e}"
    );
}

/// The whole scale-out pipeline with every hop encrypted: HTTPS in, NATS over TLS with a
/// client certificate (`verify: true`), PostgreSQL with `sslmode=verify-full`. One event
/// posted is one row, and the database saw only TLS connections from nsready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_lands_an_event_over_tls_everywhere() {
    crate::support::init_logs();
    let n = nats_with_client_verification();
    let pg_ca = TestCa::new("pg CA");
    let pg = tls_postgres(&pg_ca, &["localhost"]);
    pg.psql("postgres", "CREATE DATABASE nsready_test");
    let dir = tempfile::tempdir().expect("dir");
    let root = pg_ca.write(dir.path(), "pg-root.crt");
    let http_ca = TestCa::new("http CA");
    let (http_cert, http_key) = http_ca.server(&["127.0.0.1"]).write(dir.path(), "http");
    let db_url = format!(
        "postgres://postgres@localhost:{}/nsready_test?sslmode=verify-full&sslrootcert={}&application_name=nsready_tls",
        pg.port(),
        root.display()
    );
    let settings = settings(&[
        "--nats-url".into(),
        n.server.url(),
        "--nats-tls-ca".into(),
        s(&n.ca_file),
        "--nats-tls-cert".into(),
        s(&n.client_cert),
        "--nats-tls-key".into(),
        s(&n.client_key),
        "--database-url".into(),
        db_url.clone(),
        "--tls-cert-file".into(),
        s(&http_cert),
        "--tls-key-file".into(),
        s(&http_key),
    ]);
    let pgc = PgConnect::from_url(&db_url).expect("url");
    let store = PostgresStore::connect(&pgc, 1, Duration::from_secs(5)).expect("pool");
    store.migrate().await.expect("migrate over TLS");
    store
        .import_registry(&nsready::registry::demo())
        .await
        .expect("import over TLS");
    let shutdown = Shutdown::new();
    let app = App::build(&settings, Role::Serve, shutdown.clone())
        .await
        .expect("app builds");
    let port = app.port();
    let handle = tokio::spawn(app.run_until_stopped());
    let client = https_client(&http_ca, None);
    assert_eq!(post(&client, port, 0).await.expect("https"), StatusCode::OK);
    wait_until("the event is a row", SETTLE, || async {
        pg.psql("nsready_test", "SELECT count(*) FROM ingest_events") == "1"
    })
    .await;
    let ssl = encrypted(&pg, "nsready_tls");
    assert!(
        !ssl.is_empty() && ssl.split(',').all(|v| v == "true"),
        "{ssl}"
    );
    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
}
