//! MQTT identity and limits, with real clients (`mosquitto_pub`; raw TCP for the silent
//! client): INGEST_AUTH=token logins (good, bad, expired; another device's event), the
//! oversized packet, the keep-alive (1.5 x), and a 5 client past Receive Maximum.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use nsready::app::Role;
use nsready::registry::demo_ids;
use nsready::store::NewToken;
use uuid::Uuid;

use crate::auth::Insert;
use crate::mqtt::{mosquitto_pub, mqtt_listen, text};
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
            &big,
        ],
    );
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
        let len = 2 + topic.len() + 2 + 1 + payload.len();
        burst.push(0x32);
        let mut l = len;
        loop {
            let mut b = (l % 128) as u8;
            l /= 128;
            if l > 0 {
                b |= 0x80;
            }
            burst.push(b);
            if l == 0 {
                break;
            }
        }
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
    let rows = env.row_count().await;
    assert!(rows >= 1, "the last event landed");
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
    let o = mosquitto_pub(
        port,
        &["-V", "mqttv5", "-q", "1", "-t", "nsready/ingest", "-m", &e],
    );
    assert!(!text(&o).contains("received PUBACK"), "{}", text(&o));
    wait_until("one row", SETTLE, || async { env.row_count().await == 1 }).await;
    app.stop().await;
}
