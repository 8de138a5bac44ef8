//! Tenant isolation in the worker (issue 10, item 3): in strict mode a device may store rows
//! only under parameter keys of its own project. Customer 01 and Customer 02 each get their
//! own templates; each device writing under the other customer's key is dead-lettered as
//! `parameter_not_in_project` after its retries, each writing under its own lands. Lenient
//! mode keeps the global check (the key exists).

use std::time::Duration;

use nsready::app::Role;
use nsready::registry::{ParameterTemplate, RegistryDoc, demo, demo_ids};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_deployments;
use crate::support::app::{Import, Kind, TestEnv, metric, wait_until};

const SETTLE: Duration = Duration::from_secs(30);

/// Key `name` of customer `n`'s project.
fn key_of(n: u32, name: &str) -> String {
    format!("project:{}:{name}", demo_ids::project(n))
}

/// The demo registry plus Customer 02's own `voltage` and `current` templates.
fn two_tenants() -> RegistryDoc {
    let mut doc = demo();
    for name in ["voltage", "current"] {
        doc.parameter_templates.push(ParameterTemplate {
            key: key_of(2, name),
            name: name.into(),
            unit: None,
            metadata: json!({"project_id": demo_ids::project(2).to_string()}),
        });
    }
    doc
}

/// An event of customer `n`'s first device (its own project and site) at second `secs`.
fn event(n: u32, secs: i64, keys: &[String]) -> Value {
    let ts = chrono::DateTime::parse_from_rfc3339("2025-11-14T12:00:00Z")
        .expect("base time")
        .to_utc()
        + chrono::Duration::seconds(secs);
    json!({
        "project_id": demo_ids::project(n), "site_id": demo_ids::site(n),
        "device_id": demo_ids::device(n, 1), "protocol": "GPRS",
        "source_timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "metrics": keys.iter().map(|k| json!({"parameter_key": k, "value": 1.5, "quality": 192})).collect::<Vec<_>>(),
    })
}

async fn a_device_cannot_write_under_another_customers_parameter(kind: Kind) {
    let env = TestEnv::new(kind);
    env.with_store(Import(two_tenants())).await;
    let app = env
        .start(Role::Serve, &["--validation-mode", "strict"])
        .await;

    let c1 = |name| key_of(1, name);
    let c2 = |name| key_of(2, name);
    let events = [
        // Customer 01's device with Customer 02's key (after one of its own).
        event(1, 0, &[c1("voltage"), c2("current")]),
        // Customer 02's device with Customer 01's key.
        event(2, 1, &[c1("voltage")]),
        // Each with its own keys: 2 + 2 rows.
        event(1, 2, &[c1("voltage"), c1("current")]),
        event(2, 3, &[c2("voltage"), c2("current")]),
    ];
    for e in &events {
        assert_eq!(app.post_event(e).await.0, StatusCode::OK, "{e}");
    }
    wait_until("two dead letters", SETTLE, || async {
        env.dead_letters().await.len() == 2
    })
    .await;
    wait_until("the queue drains", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;

    let dev = |n| demo_ids::device(n, 1).to_string();
    let all = env.dead_letters().await;
    let of = |n| {
        all.iter()
            .find(|d| d.reason.contains(&format!("of device {} ", dev(n))))
            .unwrap_or_else(|| panic!("a dead letter of device {n}: {all:?}"))
    };
    let dl = [of(1), of(2)];
    for d in dl {
        assert_eq!(d.error_type, "parameter_not_in_project", "{d:?}");
        assert_eq!(d.delivered, 3, "retried up to WORKER_MAX_RETRIES: {d:?}");
        // Ids only: no customer's or project's name in the reason.
        assert!(!d.reason.contains("Customer"), "{}", d.reason);
    }
    assert_eq!(
        dl[0].reason,
        format!(
            "metrics[1].parameter_key: `{}` is a template of project {}, not of project {} of device {} (gave up after 3 deliveries)",
            c2("current"),
            demo_ids::project(2),
            demo_ids::project(1),
            dev(1)
        )
    );
    assert!(
        dl[1].reason.starts_with(&format!(
            "metrics[0].parameter_key: `{}` is a template of project {}",
            c1("voltage"),
            demo_ids::project(1)
        )),
        "{}",
        dl[1].reason
    );

    // Counting: 4 accepted = 2 events with rows + 2 dead letters; no row of a refused event.
    let rows = env.rows();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for r in &rows {
        let owner = if r.device_id == dev(1) { 1 } else { 2 };
        assert!(
            r.parameter_key
                .starts_with(&format!("project:{}:", demo_ids::project(owner))),
            "a row under another project's key: {r:?}"
        );
    }
    assert_eq!(env.count("SELECT count(*) FROM error_logs"), 2);
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            "ingest_errors_total{error_type=\"parameter_not_in_project\"}"
        ),
        Some(2.0)
    );
    assert_eq!(env.queue_stats().await.depth(), 0);
    app.stop().await;
}
both_deployments!(a_device_cannot_write_under_another_customers_parameter);

/// Lenient mode skips ownership checks: another project's key lands, an unknown key does
/// not.
async fn lenient_mode_only_asks_that_the_key_exists(kind: Kind) {
    let env = TestEnv::new(kind);
    env.with_store(Import(two_tenants())).await;
    let app = env
        .start(Role::Serve, &["--validation-mode", "lenient"])
        .await;
    let foreign = event(2, 0, &[key_of(1, "voltage")]);
    let unknown = event(2, 1, &[key_of(2, "frequency")]);
    for e in [&foreign, &unknown] {
        assert_eq!(app.post_event(e).await.0, StatusCode::OK);
    }
    wait_until("one dead letter", SETTLE, || async {
        env.dead_letters().await.len() == 1
    })
    .await;
    wait_until("the queue drains", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert_eq!(env.row_count().await, 1);
    assert_eq!(
        env.dead_letters().await[0].error_type,
        "parameter_not_found"
    );
    app.stop().await;
}
both_deployments!(lenient_mode_only_asks_that_the_key_exists);

/// A template whose key and metadata name different projects is refused at import,
/// naming the row: the tenant of a template is never ambiguous.
async fn an_import_refuses_a_template_with_two_projects(kind: Kind) {
    let env = TestEnv::new(kind);
    let mut doc = demo();
    doc.parameter_templates.push(ParameterTemplate {
        key: key_of(1, "frequency"),
        name: "frequency".into(),
        unit: None,
        metadata: json!({"project_id": demo_ids::project(2).to_string()}),
    });
    let path = env.dir.path().join("two-projects.json");
    std::fs::write(&path, serde_json::to_string(&doc).expect("json")).expect("write");
    let out = env
        .command("registry", &["import", &path.display().to_string()])
        .output()
        .expect("registry import runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parameter_templates[3].metadata.project_id"),
        "{err}"
    );
}
both_deployments!(an_import_refuses_a_template_with_two_projects);
