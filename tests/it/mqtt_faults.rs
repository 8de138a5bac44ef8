//! No PUBACK before storage: with the queue full (both deployments) and with NATS stopped
//! (scale-out), a QoS 1 publish is not acknowledged as stored (MQTT 5: 0x97 / 0x80; 3.1.1:
//! no PUBACK, the connection is closed); after recovery the client's resend lands exactly
//! once. Each test ends by counting rows against what was acknowledged.

use std::time::Duration;

use nsready::app::Role;

use crate::both_deployments;
use crate::mqtt::{mqtt_listen, pub_q1, text};
use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::event;

const SETTLE: Duration = Duration::from_secs(60);

fn acked_ok(t: &str) -> bool {
    t.contains("received PUBACK") && t.contains("RC:0)") || t.contains("received PUBACK (Mid: 1)")
}

async fn full_queue_gets_no_puback_and_the_resend_lands_once(kind: Kind) {
    let env = TestEnv::new(kind);
    let (port, listen) = mqtt_listen();
    let cap = [
        "--mqtt-listen",
        &listen,
        "--stream-max-msgs",
        "2",
        "--embedded-queue-max-msgs",
        "2",
        "--worker-retry-delay",
        "2",
        "--worker-max-retries",
        "100",
    ];
    // Registry empty: events wait in the queue (retryable), so it fills.
    let app = env.start(Role::Serve, &cap).await;
    for i in 0..2 {
        let e = event(i, &[("voltage", 1.0)]).to_string();
        let o = pub_q1(port, "mqttv5", &e);
        assert!(acked_ok(&text(&o)), "{}", text(&o));
    }
    let third = event(2, &[("voltage", 3.0)]).to_string();
    // 5: PUBACK 0x97 Quota exceeded (151), not success.
    let o = pub_q1(port, "mqttv5", &third);
    let t = text(&o);
    assert!(t.contains("RC:151"), "{t}");
    // 3.1.1: no PUBACK at all; the connection is closed so the client resends later.
    let o = pub_q1(port, "mqttv311", &third);
    let t = text(&o);
    assert!(!t.contains("received PUBACK"), "{t}");
    env.import_demo().await;
    wait_until("the two acknowledged events land", SETTLE, || async {
        env.row_count().await == 2
    })
    .await;
    wait_until("queue has room", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    // The resend (twice: a DUP-like repeat) is acknowledged and stored once.
    for _ in 0..2 {
        let o = pub_q1(port, "mqttv311", &third);
        assert!(text(&o).contains("received PUBACK"), "{}", text(&o));
    }
    wait_until("three rows", SETTLE, || async {
        env.row_count().await == 3
    })
    .await;
    wait_until("queue empty", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert_eq!(env.row_count().await, 3, "acknowledged = rows, none twice");
    assert!(env.dead_letters().await.is_empty());
    assert!(app.health().await["service"].is_string(), "process alive");
    app.stop().await;
}
both_deployments!(full_queue_gets_no_puback_and_the_resend_lands_once);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_gets_no_puback_and_the_resend_lands_once() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let (port, listen) = mqtt_listen();
    let app = env
        .start(
            Role::Serve,
            &["--mqtt-listen", &listen, "--publish-timeout", "2"],
        )
        .await;
    let nats = env.nats.as_ref().expect("nats");
    nats.stop();
    let e = event(0, &[("voltage", 7.0)]).to_string();
    // 5: an error reason code (0x80 unspecified, or 0x97 when the client reports full).
    let o = pub_q1(port, "mqttv5", &e);
    let t = text(&o);
    assert!(t.contains("RC:128") || t.contains("RC:151"), "{t}");
    // 3.1.1: no PUBACK.
    let o = pub_q1(port, "mqttv311", &e);
    let t = text(&o);
    assert!(!t.contains("received PUBACK"), "{t}");
    assert_eq!(env.row_count().await, 0);
    nats.start_again();
    // The client resends until acknowledged (the collector reconnects to NATS meanwhile).
    let mut acked = false;
    for _ in 0..30 {
        let o = pub_q1(port, "mqttv311", &e);
        if text(&o).contains("received PUBACK") {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(acked, "a resend is acknowledged once NATS is back");
    wait_until("one row", SETTLE, || async { env.row_count().await == 1 }).await;
    wait_until("queue empty", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert_eq!(env.row_count().await, 1, "stored once");
    assert!(env.dead_letters().await.is_empty());
    app.stop().await;
}
