//! `nsready serve | collector | worker`: build the app for the role and run it until a signal.

use std::process::ExitCode;

use anyhow::Context;
use nsready::app::{App, Role};
use nsready::config::{IngestAuth, Settings};
use nsready::shutdown::{self, Shutdown};

/// Runs a role until SIGINT/SIGTERM (SIGHUP is logged and ignored; `READY=1` goes to
/// `NOTIFY_SOCKET` once serving).
pub async fn run(settings: &Settings, role: Role, demo: bool) -> anyhow::Result<ExitCode> {
    // `--demo` turns MQTT on at 127.0.0.1:1883 unless MQTT_LISTEN says otherwise.
    let mut demo_settings = settings.clone();
    if demo && demo_settings.mqtt.mqtt_listen.is_none() {
        demo_settings.mqtt.mqtt_listen = Some("127.0.0.1:1883".into());
    }
    let settings = &demo_settings;
    // Before anything slow: a SIGHUP during start-up must not kill the process either.
    let hup = super::notify::hangup_handler();
    // The printed curl carries what the configured authentication needs.
    let mut auth_header = None;
    let mut mqtt_login = String::new();
    if demo {
        super::registry::load_demo(settings).await?;
        auth_header = match settings.http.auth_mode() {
            Some(IngestAuth::Token) => {
                let d = nsready::registry::demo_ids::DEVICE_01_1;
                let token = super::token::mint(settings, d).await?;
                mqtt_login = format!(" -u {d} -P '{token}'");
                Some(format!(" -H 'Authorization: Bearer {token}'"))
            }
            // The shell expands it: the secret itself is never printed.
            Some(IngestAuth::Shared) => {
                mqtt_login = " -P \"$INGEST_AUTH_TOKEN\"".into();
                Some(" -H \"Authorization: Bearer $INGEST_AUTH_TOKEN\"".to_string())
            }
            _ => None,
        };
    }
    let sd = Shutdown::new();
    let app = App::build(settings, role, sd.clone())
        .await
        .context("cannot start")?;
    if demo {
        print_demo_curl(app.port(), auth_header.as_deref().unwrap_or_default());
        if let Some(listen) = &settings.mqtt.mqtt_listen {
            print_demo_mqtt(listen, &settings.mqtt.mqtt_topic_prefix, &mqtt_login);
        }
    }
    let notify_socket = settings.embedded.notify_socket.clone();
    // The listener is bound and the workers run: tell systemd (Type=notify).
    super::notify::notify(notify_socket.as_deref(), "READY=1");
    if let Some(hup) = hup {
        sd.spawn(super::notify::ignore_hangups(hup, sd.clone()));
    }
    let trigger = sd.clone();
    // Tracked like every task; it ends at the signal, or when the service stops for
    // another reason (so the drain never waits for a signal that will not come).
    sd.spawn(async move {
        tokio::select! {
            () = shutdown::signal() => {
                tracing::info!("signal received; shutting down");
                super::notify::notify(notify_socket.as_deref(), "STOPPING=1");
                trigger.trigger();
            }
            () = trigger.wait() => {}
        }
    });
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

fn print_demo_curl(port: u16, auth: &str) {
    let d = nsready::registry::demo_ids::DEVICE_01_1;
    let p = nsready::registry::demo_ids::PROJECT_01;
    let s = nsready::registry::demo_ids::SITE_01;
    // Not println!: a reader that closed stdout after the curl line (a pipe) must not make
    // the service panic on the next line.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout().lock(),
        "\nDemo registry loaded. Send an event:\n\n\
curl -s -X POST http://127.0.0.1:{port}/v1/ingest{auth} -H 'Content-Type: application/json' -d '{{\"project_id\":\"{p}\",\"site_id\":\"{s}\",\"device_id\":\"{d}\",\"protocol\":\"HTTP\",\"source_timestamp\":\"2025-11-14T12:00:00Z\",\"metrics\":[{{\"parameter_key\":\"project:{p}:voltage\",\"value\":230.5,\"quality\":192,\"attributes\":{{\"unit\":\"V\"}}}}]}}'\n\n\
Then look at it:  nsready latest --device {d}\n"
    );
}

/// The same event over MQTT (QoS 1: PUBACK once the queue holds it).
fn print_demo_mqtt(listen: &str, topic: &str, login: &str) {
    let d = nsready::registry::demo_ids::DEVICE_01_1;
    let p = nsready::registry::demo_ids::PROJECT_01;
    let s = nsready::registry::demo_ids::SITE_01;
    let (host, port) = listen.rsplit_once(':').unwrap_or((listen, "1883"));
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "::1",
        h => h.trim_start_matches('[').trim_end_matches(']'),
    };
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout().lock(),
        "Or over MQTT:\n\n\
mosquitto_pub -h {host} -p {port}{login} -q 1 -t {topic} -m '{{\"project_id\":\"{p}\",\"site_id\":\"{s}\",\"device_id\":\"{d}\",\"protocol\":\"MQTT\",\"source_timestamp\":\"2025-11-14T12:00:01Z\",\"metrics\":[{{\"parameter_key\":\"project:{p}:voltage\",\"value\":230.5,\"quality\":192}}]}}'\n"
    );
}
