//! MQTT identity and limits, with real clients (`mosquitto_pub`; raw TCP for the silent
//! client): INGEST_AUTH=token logins (good, bad, expired; another device's event), the
//! oversized packet, the keep-alive (1.5 x), a 5 client past Receive Maximum, the
//! connection cap and the CONNECT timeout.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use nsready::app::Role;
use nsready::registry::demo_ids;
use nsready::store::NewToken;
use uuid::Uuid;

use crate::auth::Insert;
use crate::mqtt::{mosquitto_pub, mqtt_listen, pub_q1, text};
use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::{event, event_for};

const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_logins_and_another_devices_event() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let d1 = demo_ids::DEVICE_01_1;
    let d2 = demo_ids::device(1, 2);
    let good = "nsr_mqtt-good-token-for-the-test".to_string();
    let expired = "nsr_mqtt-expired-token-for-the-test".to_string();
    for (t, exp) in [
        (&good, None),
        (
            &expired,
            Some(chrono::Utc::now() - chrono::Duration::hours(1)),
        ),
    ] {
        env.with_store(Insert(NewToken {
            id: Uuid::new_v4(),
            device_id: d1,
            token_hash: nsready::collector::auth::hash(t),
            expires_at: exp,
        }))
        .await;
    }
    let (port, listen) = mqtt_listen();
    let app = env
        .start(
            Role::Serve,
            &["--ingest-auth", "token", "--mqtt-listen", &listen],
        )
        .await;
    let d1s = d1.to_string();
    let e0 = event(0, &[("voltage", 1.0)]).to_string();
    for v in ["mqttv311", "mqttv5"] {
        // Good: accepted.
        let o = mosquitto_pub(
            port,
            &[
                "-V",
                v,
                "-u",
                &d1s,
                "-P",
                &good,
                "-q",
                "1",
                "-t",
                "nsready/ingest",
                "-m",
                &e0,
            ],
        );
        assert!(text(&o).contains("received PUBACK"), "{}", text(&o));
        // Bad, expired, no password, another device's id as username: CONNACK refused.
        for (u, p) in [
            (d1s.as_str(), "nsr_wrong"),
            (d1s.as_str(), expired.as_str()),
            (d1s.as_str(), ""),
            (&*d2.to_string(), good.as_str()),
        ] {
            let o = mosquitto_pub(
                port,
                &[
                    "-V",
                    v,
                    "-u",
                    u,
                    "-P",
                    p,
                    "-q",
                    "1",
                    "-t",
                    "nsready/ingest",
                    "-m",
                    &e0,
                ],
            );
            let t = text(&o);
            assert!(!t.contains("received PUBACK"), "{t}");
            assert!(
                t.to_lowercase().contains("not authorized")
                    || t.contains("CONNACK (5)")
                    || t.contains("CONNACK (135)"),
                "{u}/{p}: {t}"
            );
        }
    }
    // Another device's event: 5 gets 0x87 (135); 3.1.1 gets PUBACK and a dead letter.
    let other = event_for(d2, 1, &[("voltage", 2.0)]).to_string();
    let o = mosquitto_pub(
        port,
        &[
            "-V",
            "mqttv5",
            "-u",
            &d1s,
            "-P",
            &good,
            "-q",
            "1",
            "-t",
            "nsready/ingest",
            "-m",
            &other,
        ],
    );
    assert!(text(&o).contains("RC:135"), "{}", text(&o));
    let o = mosquitto_pub(
        port,
        &[
            "-V",
            "mqttv311",
            "-u",
            &d1s,
            "-P",
            &good,
            "-q",
            "1",
            "-t",
            "nsready/ingest",
            "-m",
            &other,
        ],
    );
    assert!(text(&o).contains("received PUBACK"), "{}", text(&o));
    wait_until("one dead letter", SETTLE, || async {
        env.dead_letters().await.len() == 1
    })
    .await;
    let dl = env.dead_letters().await;
    assert!(dl[0].reason.contains("device_id"), "{dl:?}");
    wait_until("queue empty", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    // Accepted = rows + dead letters: e0 twice is one event (same content).
    assert_eq!(env.row_count().await, 1);
    assert!(app.health().await["service"].is_string(), "process alive");
    app.stop().await;
}

/// Oversized packet (refused from its header), a silent client past 1.5 x keep-alive, a
/// 5 client over Receive Maximum (DISCONNECT 0x93): each connection closed, nothing stored,
/// the process alive and still serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_silent_and_too_many_in_flight() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let (port, listen) = mqtt_listen();
    let app = env
        .start(
            Role::Serve,
            &[
                "--mqtt-listen",
                &listen,
                "--ingest-max-body-bytes",
                "2048",
                "--ingest-max-batch-bytes",
                "4096",
                "--mqtt-receive-maximum",
                "2",
            ],
        )
        .await;
    // Oversized single-topic payload (under the packet limit): 5 → 0x99 naming the limit.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(3000));
    let o = pub_q1(port, "mqttv5", &big);
    let t = text(&o);
    assert!(
        t.contains("RC:153") && t.contains("INGEST_MAX_BODY_BYTES"),
        "{t}"
    );
    // Over the packet limit (batch + header room): the connection is closed, no PUBACK.
    let huge = env.dir.path().join("huge.bin");
    std::fs::write(&huge, "x".repeat(200_000)).expect("write");
    let huge = huge.display().to_string();
    let o = mosquitto_pub(
        port,
        &[
            "-V",
            "mqttv311",
            "-q",
            "1",
            "-t",
            "nsready/ingest/batch",
            "-f",
            &huge,
        ],
    );
    assert!(!text(&o).contains("received PUBACK"), "{}", text(&o));

    // Silent client: CONNECT with keep-alive 1 s, then nothing; closed after 1.5 s.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // 3.1.1 CONNECT: "MQTT", level 4, clean session, keep-alive 1, client id "s".
    s.write_all(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 1, 0, 1, b's',
    ])
    .expect("send");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let mut rest = Vec::new();
    let n = s
        .read_to_end(&mut rest)
        .expect("closed by the server, not timed out");
    assert_eq!(n, 0, "nothing sent, then closed");

    // 5 client over Receive Maximum (MQTT_RECEIVE_MAXIMUM=2): 40 QoS 1 PUBLISHes sent
    // without waiting for a PUBACK break the window: DISCONNECT 0x93.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(&[
        0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0, 0, 1, b'r',
    ])
    .expect("send");
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("CONNACK");
    assert_eq!(head[0], 0x20);
    let mut body = vec![0u8; head[1] as usize];
    s.read_exact(&mut body).expect("CONNACK body");
    assert_eq!(body[1], 0, "accepted");
    let mut burst = Vec::new();
    for pkid in 1u16..=40 {
        let payload = event(1000 + i64::from(pkid), &[("voltage", 1.0)]).to_string();
        let topic = b"nsready/ingest";
        burst.push(0x32);
        remaining_length(&mut burst, 2 + topic.len() + 2 + 1 + payload.len());
        burst.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        burst.extend_from_slice(topic);
        burst.extend_from_slice(&pkid.to_be_bytes());
        burst.push(0); // no properties
        burst.extend_from_slice(payload.as_bytes());
    }
    s.write_all(&burst).expect("burst");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    // DISCONNECT 0x93 somewhere in what came back, before the close.
    assert!(
        got.windows(3)
            .any(|w| w == [0xE0, w[1], 0x93] || (w[0] == 0xE0 && w[2] == 0x93)),
        "{got:x?}"
    );
    let acks = got.windows(2).filter(|w| w[0] == 0x40).count();
    assert!(acks < 40, "not every publish was taken: {acks}");

    // Still serving: a normal publish is acknowledged; accepted = rows.
    let o = mosquitto_pub(
        port,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "nsready/ingest",
            "-m",
            &event(0, &[("voltage", 1.0)]).to_string(),
        ],
    );
    assert!(text(&o).contains("RC:0)"), "{}", text(&o));
    wait_until("queue empty", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    // Every acknowledged publish of the burst is a row, and the last event; nothing else
    // (the burst's unacknowledged ones may have landed before the DISCONNECT, never twice).
    let rows = env.row_count().await as usize;
    assert!(
        rows > acks && rows <= 41,
        "{rows} rows for {acks} acknowledged burst publishes + 1"
    );
    assert!(env.dead_letters().await.is_empty());
    app.stop().await;
}

/// MQTT over TLS (`MQTT_TLS_LISTEN`, the HTTP certificate): mosquitto_pub with the CA
/// gets its PUBACK and the event lands; a plain client on the TLS port gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_with_the_http_certificate() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let ca = crate::support::servers::TestCa::new("nsready mqtt test CA");
    let (cert, key) = ca
        .server(&["127.0.0.1", "localhost"])
        .write(env.dir.path(), "mqtt");
    let ca_file = ca.write(env.dir.path(), "ca.pem");
    let (port, listen) = mqtt_listen();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let app = env
        .start(
            Role::Serve,
            &[
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--mqtt-tls-listen",
                &listen,
            ],
        )
        .await;
    let e = event(0, &[("voltage", 1.0)]).to_string();
    let ca_s = ca_file.display().to_string();
    let o = mosquitto_pub(
        port,
        &[
            "--cafile",
            &ca_s,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "nsready/ingest",
            "-m",
            &e,
        ],
    );
    assert!(text(&o).contains("RC:0)"), "{}", text(&o));
    let o = pub_q1(port, "mqttv5", &e);
    assert!(!text(&o).contains("received PUBACK"), "{}", text(&o));
    wait_until("one row", SETTLE, || async { env.row_count().await == 1 }).await;
    app.stop().await;
}

/// Reads until the peer closes: the bytes it sent before (the read timeout of the stream
/// bounds the wait; a timeout fails the test).
fn until_closed(s: &mut std::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("closed by the server, not timed out");
    got
}

/// MQTT's variable-length "remaining length" (7 bits a byte, high bit = more).
fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

/// A 3.1.1 QoS 1 PUBLISH of `payload` to `nsready/ingest` with packet id `pkid`.
fn publish_311(pkid: u16, payload: &str) -> Vec<u8> {
    let topic = b"nsready/ingest";
    let mut publish = vec![0x32u8];
    remaining_length(&mut publish, 2 + topic.len() + 2 + payload.len());
    publish.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    publish.extend_from_slice(topic);
    publish.extend_from_slice(&pkid.to_be_bytes());
    publish.extend_from_slice(payload.as_bytes());
    publish
}

/// 3.1.1 CONNECT with clean session, keep-alive 60 s and a one-letter client id.
fn connect_311(id: u8) -> [u8; 15] {
    [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, id,
    ]
}

/// MQTT_MAX_CONNECTIONS: with the cap held by two logged-in clients, a third gets no
/// CONNACK until one of them leaves (the listener stops accepting; nothing is refused
/// with a half-open session); MQTT_CONNECT_TIMEOUT: a client that connects and never
/// sends CONNECT loses its slot. Ends by counting: the event published through the freed
/// slot is the one row, the gauge is back to what is connected, the process serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_and_connect_timeout() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let (port, listen) = mqtt_listen();
    let app = env
        .start(
            Role::Serve,
            &[
                "--mqtt-listen",
                &listen,
                "--mqtt-max-connections",
                "2",
                "--mqtt-connect-timeout",
                "1",
            ],
        )
        .await;
    let open = |id: u8| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.write_all(&connect_311(id)).expect("CONNECT");
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).expect("CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0], "client {id} accepted");
        s
    };
    // A silent TCP client (no CONNECT) is closed at the CONNECT timeout, having been
    // sent nothing.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    assert!(
        until_closed(&mut silent).is_empty(),
        "no CONNACK without a CONNECT"
    );

    let a = open(b'a');
    let _b = open(b'b');
    wait_until("two MQTT connections counted", SETTLE, || async {
        app.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("nsready_mqtt_connections") && l.ends_with(" 2"))
    })
    .await;
    // The third client's CONNECT waits in the kernel's backlog: no answer while the cap
    // is held.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.write_all(&connect_311(b'c')).expect("CONNECT");
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut connack = [0u8; 4];
    let held = c.read_exact(&mut connack);
    assert!(
        held.is_err(),
        "no CONNACK beyond MQTT_MAX_CONNECTIONS: {connack:x?}"
    );
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    c.read_exact(&mut connack)
        .expect("CONNACK once a slot is free");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // The freed slot serves: a QoS 1 publish from c is acknowledged and lands.
    let payload = event(7, &[("voltage", 1.0)]).to_string();
    c.write_all(&publish_311(1, &payload)).expect("PUBLISH");
    let mut puback = [0u8; 4];
    c.read_exact(&mut puback).expect("PUBACK");
    assert_eq!(puback, [0x40, 2, 0, 1]);
    wait_until("queue empty", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert_eq!(env.row_count().await, 1, "accepted = rows");
    assert!(env.dead_letters().await.is_empty());
    app.stop().await;
}

/// Clean shutdown finishes the acks in flight: a QoS 1 publish whose JetStream ack is held
/// up (nats-server SIGSTOPped) when the shutdown starts still gets its PUBACK once NATS
/// answers, inside SHUTDOWN_TIMEOUT, and the process then stops. Ends by counting: after a
/// restart drains the queue the acknowledged event is exactly one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_ack_in_flight() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let (port, listen) = mqtt_listen();
    let args = [
        "--mqtt-listen",
        listen.as_str(),
        "--publish-timeout",
        "20",
        "--shutdown-timeout",
        "25",
    ];
    let app = env.start(Role::Serve, &args).await;
    let nats_pid = env
        .nats
        .as_ref()
        .and_then(|n| n.pid())
        .expect("nats-server runs") as libc::pid_t;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    s.write_all(&connect_311(b'z')).expect("CONNECT");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0]);

    // SAFETY: signals to the nats-server this test started; SIGCONT follows below.
    unsafe { libc::kill(nats_pid, libc::SIGSTOP) };
    let payload = event(11, &[("voltage", 1.0)]).to_string();
    s.write_all(&publish_311(9, &payload)).expect("PUBLISH");
    // Let the connection read the publish and hand it to the queue, then stop the app
    // while the queue's ack cannot come.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: as above.
    unsafe { libc::kill(nats_pid, libc::SIGCONT) };
    let mut puback = [0u8; 4];
    s.read_exact(&mut puback)
        .expect("the PUBACK of the publish in flight at shutdown");
    assert_eq!(puback, [0x40, 2, 0, 9]);
    assert!(
        until_closed(&mut s).is_empty(),
        "then closed, nothing else sent"
    );
    stopping.await.expect("the app stopped");

    // Count: the acknowledged event is one row once a new serve drains the queue.
    let app = env.start(Role::Serve, &args).await;
    wait_until("queue empty", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    wait_until("the acknowledged event landed", SETTLE, || async {
        env.row_count().await == 1
    })
    .await;
    assert!(env.dead_letters().await.is_empty());
    app.stop().await;
}
