//! MQTT ingest with real clients (Debian's `mosquitto_pub`): golden path on both
//! deployments, single and batch topics, 3.1.1 and 5; refusals of invalid payloads (5:
//! reason code 0x99 and a reason string naming the field; 3.1.1: the DLQ with the reason,
//! then PUBACK); 3.1 refused. Each test counts: accepted = rows + dead letters, queue empty.

use std::process::{Command, Output};
use std::time::Duration;

use nsready::app::Role;
use serde_json::json;

use crate::both_deployments;
use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::event;
use crate::support::servers::free_port;

const SETTLE: Duration = Duration::from_secs(30);

/// `mosquitto_pub -d` (debug: prints the packets it sends and receives) at `port`.
pub fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    // `timeout`: a client whose connection is closed without an ack must not hang the test.
    Command::new("timeout")
        .args([
            "60",
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
            "-i",
            "nsready-test",
        ])
        .args(args)
        .output()
        .expect("mosquitto_pub runs (apt-get install mosquitto-clients)")
}

/// `mosquitto_pub -V <version> -q 1 -t nsready/ingest -m <message>`.
pub fn pub_q1(port: u16, version: &str, message: &str) -> Output {
    mosquitto_pub(
        port,
        &[
            "-V",
            version,
            "-q",
            "1",
            "-t",
            "nsready/ingest",
            "-m",
            message,
        ],
    )
}

/// stdout + stderr of a client run, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// MQTT_LISTEN on a free loopback port.
pub fn mqtt_listen() -> (u16, String) {
    let port = free_port();
    (port, format!("127.0.0.1:{port}"))
}

async fn golden_path_single_and_batch_on_311_and_5(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let (port, listen) = mqtt_listen();
    let app = env.start(Role::Serve, &["--mqtt-listen", &listen]).await;
    let mut sent = 0u64;
    for (i, v) in ["mqttv311", "mqttv5"].iter().enumerate() {
        let single = event(i as i64 * 10, &[("voltage", 230.0 + i as f64)]).to_string();
        let o = mosquitto_pub(
            port,
            &["-V", v, "-q", "1", "-t", "nsready/ingest", "-m", &single],
        );
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        assert!(t.contains("received PUBACK"), "{t}");
        assert!(!t.contains("failed"), "{t}");
        sent += 1;
        let arr = json!([
            event(i as i64 * 10 + 1, &[("voltage", 1.0)]),
            event(i as i64 * 10 + 2, &[("current", 2.0)])
        ])
        .to_string();
        let o = mosquitto_pub(
            port,
            &["-V", v, "-q", "1", "-t", "nsready/ingest/batch", "-m", &arr],
        );
        assert!(text(&o).contains("received PUBACK"), "{}", text(&o));
        sent += 2;
        // NDJSON, QoS 2 (PUBREC after the durable ack, then PUBREL/PUBCOMP).
        let nd = format!(
            "{}\n{}\n",
            event(i as i64 * 10 + 3, &[("power", 3.0)]),
            event(i as i64 * 10 + 4, &[("power", 4.0)])
        );
        let o = mosquitto_pub(
            port,
            &["-V", v, "-q", "2", "-t", "nsready/ingest/batch", "-m", &nd],
        );
        let t = text(&o);
        assert!(
            t.contains("received PUBREC") && t.contains("received PUBCOMP"),
            "{t}"
        );
        sent += 2;
    }
    // A DUP-style resend of the same content is stored once (content-hash id).
    let again = event(0, &[("voltage", 230.0)]).to_string();
    let o = pub_q1(port, "mqttv5", &again);
    assert!(text(&o).contains("received PUBACK"), "{}", text(&o));
    wait_until("every event a row", SETTLE, || async {
        env.row_count().await == sent
    })
    .await;
    wait_until("queue empty", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert_eq!(env.row_count().await, sent, "the resend landed once");
    assert!(env.dead_letters().await.is_empty());
    let h = app.health().await;
    assert_eq!(h["mqtt"]["listen"], listen.as_str(), "{h}");
    assert_eq!(h["mqtt"]["clients"], 0, "{h}");
    let m = app.metrics().await;
    assert!(
        m.contains(r#"nsready_mqtt_publishes_total{qos="1",result="queued"} 5"#),
        "{m}"
    );
    assert!(
        m.contains(r#"nsready_mqtt_publishes_total{qos="2",result="queued"} 2"#),
        "{m}"
    );
    app.stop().await;
}
both_deployments!(golden_path_single_and_batch_on_311_and_5);

async fn invalid_payloads_refused_on_5_and_dead_lettered_on_311(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let (port, listen) = mqtt_listen();
    let app = env.start(Role::Serve, &["--mqtt-listen", &listen]).await;
    let mut bad = event(0, &[("voltage", 1.0)]);
    bad.as_object_mut().map(|o| o.remove("project_id"));
    let bad = bad.to_string();
    // 5: PUBACK 0x99 (153) with a reason string naming the field; nothing stored.
    let o = pub_q1(port, "mqttv5", &bad);
    let t = text(&o);
    assert!(t.contains("RC:153"), "{t}");
    assert!(t.contains("project_id"), "{t}");
    // 3.1.1: PUBACK, and the payload is in the DLQ with its validation reason.
    let o = pub_q1(port, "mqttv311", &bad);
    let t = text(&o);
    assert!(t.contains("received PUBACK"), "{t}");
    wait_until("one dead letter", SETTLE, || async {
        env.dead_letters().await.len() == 1
    })
    .await;
    let dl = env.dead_letters().await;
    assert_eq!(dl[0].error_type, "validation_error", "{dl:?}");
    assert!(dl[0].reason.contains("project_id"), "{dl:?}");
    // An unknown topic: 5 gets 0x90 Topic Name invalid.
    let good = event(5, &[("voltage", 1.0)]).to_string();
    let o = mosquitto_pub(
        port,
        &["-V", "mqttv5", "-q", "1", "-t", "other/topic", "-m", &good],
    );
    assert!(text(&o).contains("RC:144"), "{}", text(&o));
    // MQTT 3.1 is refused with "unacceptable protocol version".
    let o = mosquitto_pub(
        port,
        &[
            "-V",
            "mqttv31",
            "-q",
            "1",
            "-t",
            "nsready/ingest",
            "-m",
            &good,
        ],
    );
    assert!(
        text(&o).contains("unacceptable protocol version"),
        "{}",
        text(&o)
    );
    // Accepted = rows + dead letters: nothing was queued as an event.
    wait_until("queue empty", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert_eq!(env.row_count().await, 0);
    assert_eq!(env.dead_letters().await.len(), 1);
    assert!(app.health().await["service"].is_string(), "process alive");
    app.stop().await;
}
both_deployments!(invalid_payloads_refused_on_5_and_dead_lettered_on_311);

/// `serve --demo` prints a mosquitto_pub command that works as printed.
#[tokio::test]
async fn serve_demo_prints_a_mosquitto_pub_that_works() {
    let env = TestEnv::new(Kind::Embedded);
    let (mqtt_port, listen) = mqtt_listen();
    let http_port = free_port().to_string();
    let mut child = env
        .command("serve", &["--demo", "--service-port", &http_port])
        .env("MQTT_LISTEN", &listen)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let child = crate::support::Proc(child);
    // Read stdout to its end (the service logs there too), handing over the command.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if l.starts_with("mosquitto_pub ") {
                let _ = tx.send(l);
            }
        }
    });
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("reader")
        .expect("a mosquitto_pub line is printed");
    assert!(line.contains(&format!("-p {mqtt_port}")), "{line}");
    let o = Command::new("sh")
        .args(["-c", &format!("{line} -d")])
        .output()
        .expect("sh");
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("received PUBACK"),
        "{line}\n{t}"
    );
    assert!(!t.contains("failed"), "{t}");
    wait_until("the demo event is a row", SETTLE, || async {
        env.row_count().await == 1
    })
    .await;
    crate::support::signal(&child.0, libc::SIGTERM);
    drop(child);
}
