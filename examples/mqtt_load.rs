//! MQTT QoS 1 load client for `scripts/bench`: N connections (rumqttc), each keeping a
//! Receive-Maximum-sized window of QoS 1 publishes in flight to `nsready/ingest` for a
//! fixed time, each event with 3 metrics (3 rows, like `nsready loadgen --metrics 3`);
//! prints one JSON line: events/s sent and acknowledged (PUBACK = the queue
//! holds it durably), ack latency p50/p99.
//!
//! usage: mqtt_load --port 1883 [--host 127.0.0.1] [--connections 8] [--window 64]
//!        [--duration 10]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nsready::registry::demo_ids;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

#[derive(Default)]
struct Tally {
    sent: u64,
    acked: u64,
    lat_ms: Vec<f64>,
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn payload(conn: u64, seq: u64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2025-11-14T12:00:00Z")
        .map(|t| t.to_utc())
        .unwrap_or_default();
    let ts = base + chrono::Duration::milliseconds((conn * 100_000_000 + seq) as i64);
    let (p, s, d) = (
        demo_ids::PROJECT_01,
        demo_ids::SITE_01,
        demo_ids::DEVICE_01_1,
    );
    format!(
        r#"{{"project_id":"{p}","site_id":"{s}","device_id":"{d}","protocol":"MQTT","source_timestamp":"{}","metrics":[{{"parameter_key":"project:{p}:voltage","value":{seq},"quality":192}},{{"parameter_key":"project:{p}:current","value":{seq},"quality":192}},{{"parameter_key":"project:{p}:power","value":{seq},"quality":192}}]}}"#,
        ts.format("%Y-%m-%dT%H:%M:%S%.3fZ")
    )
}

async fn one(
    host: String,
    port: u16,
    conn: u64,
    window: u16,
    until: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    let mut opts = MqttOptions::new(format!("mqtt-load-{conn}"), host, port);
    opts.set_inflight(window);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, usize::from(window));
    let producer = tokio::spawn(async move {
        let mut seq = 0u64;
        while Instant::now() < until {
            let body = payload(conn, seq);
            if client
                .publish("nsready/ingest", QoS::AtLeastOnce, false, body)
                .await
                .is_err()
            {
                break;
            }
            seq += 1;
        }
        let _ = client.disconnect().await;
    });
    let mut sent_at: HashMap<u16, Instant> = HashMap::new();
    while Instant::now() < until + Duration::from_secs(2) {
        let ev = tokio::time::timeout(Duration::from_secs(2), events.poll()).await;
        match ev {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                sent_at.insert(pkid, Instant::now());
                if Instant::now() < until {
                    tally.lock().map(|mut t| t.sent += 1).ok();
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                if let Some(t0) = sent_at.remove(&a.pkid)
                    && let Ok(mut t) = tally.lock()
                {
                    t.acked += 1;
                    t.lat_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    producer.abort();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let host = arg(&args, "--host", "127.0.0.1");
    let port: u16 = arg(&args, "--port", "1883").parse().unwrap_or(1883);
    let conns: u64 = arg(&args, "--connections", "8").parse().unwrap_or(8);
    let window: u16 = arg(&args, "--window", "64").parse().unwrap_or(64);
    let secs: f64 = arg(&args, "--duration", "10").parse().unwrap_or(10.0);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let tasks: Vec<_> = (0..conns)
        .map(|c| tokio::spawn(one(host.clone(), port, c, window, until, tally.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let mut t = tally
        .lock()
        .map(|mut t| std::mem::take(&mut *t))
        .unwrap_or_default();
    t.lat_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        t.lat_ms
            .get(((t.lat_ms.len() as f64 * q) as usize).min(t.lat_ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        r#"{{"connections":{conns},"window":{window},"duration_s":{secs},"sent_per_s":{:.1},"acked_per_s":{:.1},"acked":{},"ack_p50_ms":{:.2},"ack_p99_ms":{:.2}}}"#,
        t.sent as f64 / secs,
        t.acked as f64 / secs,
        t.acked,
        pct(0.5),
        pct(0.99)
    );
}
