//! The operator's view, run for real: the alert rules pass `promtool` (config check and
//! the fires / does-not-fire unit tests of `deploy/prometheus/alerts_test.yml`); a real
//! Prometheus scraping a real scale-out nsready answers every expression of the Grafana
//! dashboard with data, and sees `NsreadyDatabaseDown` become firing once PostgreSQL
//! stops; the HTTP response counter labels hostile paths by route template only.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`, installed by `.ci/run`):
//! the tests fail when they are missing, they do not skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nsready::app::Role;
use serde_json::{Value, json};

use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::servers::free_port;
use crate::support::{Proc, event, event_for};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install Debian's `prometheus` package (.ci/run does)");
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_config_and_the_rules_and_runs_their_unit_tests() {
    let promtool = tool("promtool");
    let dir = repo("deploy/prometheus");
    let out = run_ok(
        Command::new(&promtool)
            .arg("check")
            .arg("config")
            .arg(dir.join("prometheus.yml")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(dir.join("alerts.yml")),
    );
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(dir.join("alerts_test.yml")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // Every rule has a unit test that makes it fire.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("rules");
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).expect("tests");
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|t| t.starts_with(name) && t.contains("exp_labels"));
        assert!(fires, "no firing test for {name}");
    }
}

/// The rules with every `for:` shortened to 2 s, so the test sees alerts within seconds.
fn fast_rules(dir: &Path) -> PathBuf {
    let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).expect("rules");
    let fast: String = rules
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}for: 2s\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = dir.join("alerts.yml");
    std::fs::write(&path, fast).expect("write rules");
    path
}

/// A Prometheus on a free loopback port scraping `target` every second, with its own
/// config and TSDB in `dir`; killed by PID on drop.
struct Prometheus {
    _proc: Proc,
    base: String,
}

impl Prometheus {
    async fn start(dir: &Path, target: &str) -> Prometheus {
        let rules = fast_rules(dir);
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: nsready\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .expect("write config");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus {
            _proc: Proc(child),
            base: format!("http://127.0.0.1:{port}"),
        };
        let ready = format!("{}/-/ready", p.base);
        wait_until("prometheus is ready", Duration::from_secs(30), || {
            let ready = ready.clone();
            async move {
                reqwest::get(&ready)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        p
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("prometheus json")
    }

    async fn query(&self, expr: &str) -> Value {
        self.get("/api/v1/query", &[("query", expr)]).await
    }

    /// State of `alert` (`pending`, `firing`), if Prometheus has it.
    async fn alert_state(&self, alert: &str) -> Option<String> {
        let v = self.get("/api/v1/alerts", &[]).await;
        v["data"]["alerts"].as_array()?.iter().find_map(|a| {
            (a["labels"]["alertname"] == alert)
                .then(|| a["state"].as_str().unwrap_or("").to_string())
        })
    }
}

/// Every `expr` of the dashboard, with Grafana's interval variables filled in.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/grafana/nsready.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "30s");
            assert!(!expr.contains('$'), "unfilled variable in {expr}");
            out.push((panel["title"].as_str().unwrap_or("").to_string(), expr));
        }
    }
    assert!(out.len() >= 17, "dashboard has {} expressions", out.len());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_answers_every_dashboard_expression_and_fires_the_database_alert() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let prom_dir = tempfile::tempdir().expect("temp dir");
    let prom = Prometheus::start(prom_dir.path(), &format!("127.0.0.1:{}", app.port)).await;

    // Traffic: good events (committed), one for an unknown device (retries, then a dead
    // letter), a batch, and requests for hostile paths.
    for i in 0..20 {
        let (status, _) = app.post_event(&event(i, &[("voltage", i as f64)])).await;
        assert_eq!(status, 200);
    }
    let (status, _) = app.post_batch(&[event(100, &[("voltage", 1.0)])]).await;
    assert_eq!(status, 200);
    let (status, _) = app
        .post_event(&event_for(uuid::Uuid::new_v4(), 200, &[("voltage", 1.0)]))
        .await;
    assert_eq!(status, 200);
    for path in ["/nope", "/v1/ingest/../../etc/passwd", "/%3Cscript%3E"] {
        let _ = app.http.get(format!("{}{path}", app.base)).send().await;
    }
    wait_until(
        "rows and the dead letter are in",
        Duration::from_secs(60),
        || async {
            let h = app.health().await;
            env.row_count().await == 21 && h["dlq_depth"] == 1 && h["queue_depth"] == 0
        },
    )
    .await;
    // Let Prometheus take enough samples for rates over 30 s windows.
    wait_until(
        "prometheus has scraped for a while",
        Duration::from_secs(60),
        || async {
            let v = prom
                .query("count_over_time(up{job=\"nsready\"}[30s])")
                .await;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|n| n >= 8.0)
        },
    )
    .await;
    // /v1/health counts the DLQ by reason (the dashboard's panel reads that gauge).
    app.health().await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut empty = Vec::new();
    for (title, expr) in dashboard_exprs() {
        let v = prom.query(&expr).await;
        assert_eq!(
            v["status"], "success",
            "{title}: {expr} does not parse: {v}"
        );
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "expressions without data:\n{}",
        empty.join("\n")
    );

    // Hostile paths count under one `unmatched` series; no raw path is a label value.
    let v = prom.query("nsready_http_responses_total").await;
    let routes: std::collections::BTreeSet<String> = v["data"]["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|s| s["metric"]["route"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(routes.contains("unmatched"), "{routes:?}");
    assert!(
        routes
            .iter()
            .all(|r| !r.contains("nope") && !r.contains("passwd") && !r.contains("script"))
    );
    assert_eq!(prom.alert_state("NsreadyDatabaseDown").await, None);

    env.pg.as_ref().expect("postgres").stop();
    wait_until(
        "NsreadyDatabaseDown is firing",
        Duration::from_secs(60),
        || async { prom.alert_state("NsreadyDatabaseDown").await.as_deref() == Some("firing") },
    )
    .await;
    let v = prom.query("nsready_up{component=\"store\"}").await;
    assert_eq!(v["data"]["result"][0]["value"][1], json!("0"), "{v}");
    // The process itself stays up and scraped.
    assert_eq!(prom.alert_state("NsreadyProcessDown").await, None);
    drop(prom);
    app.stop().await;
}
