//! `kill -9` of the collector while PyPI's paho-mqtt 2.x streams QoS 1 with a persistent
//! session (tests/mqtt/paho_stream.py): the client reconnects and resends on its own; at
//! the end every event it saw acknowledged is a row, and no row is there twice.
//! Embedded: `serve` is killed; scale-out: `nsready collector` (a worker runs apart).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use nsready::app::Role;
use nsready::registry::demo_ids;

use crate::both_deployments;
use crate::mqtt::mqtt_listen;
use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::servers::free_port;
use crate::support::{Proc, event, landed};

const EVENTS: usize = 400;

fn acked(path: &std::path::Path) -> BTreeSet<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn kill_9_while_paho_streams_loses_no_acked_event(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let (port, listen) = mqtt_listen();
    let http = free_port().to_string();
    let role = if kind == Kind::Embedded {
        "serve"
    } else {
        "collector"
    };
    let _worker = if kind == Kind::Embedded {
        None
    } else {
        Some(env.start(Role::Worker, &[]).await)
    };
    let spawn = || {
        Proc(
            env.command(role, &["--mqtt-listen", &listen, "--service-port", &http])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("collector starts"),
        )
    };
    let mut collector = spawn();
    wait_until("MQTT listening", Duration::from_secs(30), || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let out = env.dir.path().join("acked.txt");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt/paho_stream.py");
    let base = event(0, &[("voltage", 1.0)]).to_string();
    // `timeout`: the script ends by itself after its 90 s wait; this bounds a client that
    // hangs for any other reason, so the test fails instead of stalling the suite.
    let client = Command::new("timeout")
        .args([
            "150",
            "python3",
            script,
            &port.to_string(),
            &EVENTS.to_string(),
        ])
        .arg(&out)
        .args([&base, "90"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt 2.x (pip install 'paho-mqtt>=2,<3')");
    wait_until("some acks", Duration::from_secs(60), || async {
        acked(&out).len() >= EVENTS / 4
    })
    .await;
    crate::support::signal(&collector.0, libc::SIGKILL);
    let _ = collector.0.wait();
    collector = spawn();
    let done = tokio::task::spawn_blocking(move || client.wait_with_output())
        .await
        .expect("join")
        .expect("client ends");
    assert!(done.status.success(), "paho client failed");
    let acked = acked(&out);
    assert!(acked.len() >= EVENTS / 4, "acked {}", acked.len());
    wait_until(
        "every acked event is a row",
        Duration::from_secs(60),
        || async {
            let rows = landed(&env.rows(), demo_ids::DEVICE_01_1);
            acked.is_subset(&rows)
        },
    )
    .await;
    wait_until("queue empty", Duration::from_secs(60), || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    let rows = env.rows();
    let distinct = landed(&rows, demo_ids::DEVICE_01_1);
    assert_eq!(rows.len(), distinct.len(), "no row twice");
    assert!(acked.is_subset(&distinct));
    assert!(env.dead_letters().await.is_empty());
    drop(collector);
}
both_deployments!(kill_9_while_paho_streams_loses_no_acked_event);
