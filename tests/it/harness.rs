//! Tests of the test harness itself: the real-server fixtures in `support::servers` start,
//! answer, stop, restart and keep their data the way the other integration tests assume.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::servers::{NatsServer, Postgres};

/// The `INFO` line a NATS server sends to a new TCP client.
fn read_nats_info(port: u16) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect to nats on port {port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set read timeout");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("read INFO from nats on port {port}: {e}"));
    assert!(line.starts_with("INFO {"), "not an INFO line: {line:?}");
    line
}

/// Whether anything accepts TCP connections on 127.0.0.1:`port`.
fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[test]
fn nats_server_starts_accepts_jetstream_and_stops() {
    let nats = NatsServer::start();
    assert!(nats.is_running());
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));

    let info = read_nats_info(nats.port());
    assert!(info.contains("\"jetstream\":true"), "JetStream off: {info}");
    assert!(
        info.contains(&format!("\"server_name\":\"{}\"", nats.name())),
        "another server answered: {info}"
    );

    nats.stop();
    assert!(!nats.is_running());
    assert_eq!(nats.pid(), None);
    assert!(!port_accepts(nats.port()), "port still open after stop");
    nats.stop(); // Idempotent.
}

#[test]
fn nats_restart_keeps_port() {
    let nats = NatsServer::start();
    let port = nats.port();
    let first_pid = nats.pid().expect("running");

    nats.kill();
    assert!(!nats.is_running());
    assert!(!port_accepts(port), "port still open after kill");

    nats.start_again();
    assert_eq!(nats.port(), port);
    assert_ne!(nats.pid(), Some(first_pid));
    assert!(read_nats_info(port).contains("\"jetstream\":true"));

    nats.stop();
    nats.start_again();
    assert_eq!(nats.port(), port);
    assert!(read_nats_info(port).contains("\"jetstream\":true"));
    assert!(nats.store_dir().join("jetstream").is_dir());
}

#[test]
fn postgres_starts_creates_database_and_answers_queries() {
    let pg = Postgres::start();
    assert!(pg.is_running());

    let url = pg.create_database("harness_check");
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/harness_check", pg.port())
    );
    assert_eq!(pg.psql("harness_check", "SELECT 1"), "1");
    assert_eq!(
        pg.psql("harness_check", "SELECT current_database(), current_user"),
        "harness_check|postgres"
    );
    assert_eq!(pg.psql("postgres", "SHOW fsync"), "off");

    pg.stop();
    assert!(!pg.is_running());
    assert!(!port_accepts(pg.port()), "port still open after stop");
}

#[test]
fn postgres_survives_kill_and_start_again() {
    let pg = Postgres::start();
    pg.create_database("durable");
    pg.psql(
        "durable",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'kept')",
    );
    let port = pg.port();

    pg.kill();
    assert!(!pg.is_running());
    assert!(!port_accepts(port), "port still open after kill");

    pg.start_again();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("durable", "SELECT v FROM t WHERE id = 1"), "kept");

    // And a clean stop/start cycle after the crash recovery.
    pg.psql("durable", "INSERT INTO t VALUES (2, 'also')");
    pg.stop();
    pg.start_again();
    assert_eq!(pg.psql("durable", "SELECT count(*) FROM t"), "2");
}
