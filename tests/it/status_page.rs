//! The status page (`GET /`) in a real headless Chromium driven through chromedriver's
//! WebDriver HTTP API: after traffic settles, the numbers the page shows equal
//! `/v1/health`'s, a dead-letter reason holding `<script>` is shown as text (no element is
//! created from it, nothing runs), the page's policy forbids inline script, and a screenshot
//! is saved under the test target dir (`status-page.png`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (installed by `.ci/run`); fails without.

use std::process::{Command, Stdio};
use std::time::Duration;

use nsready::app::Role;
use serde_json::{Value, json};

use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::servers::free_port;
use crate::support::{Proc, event, key};

/// One WebDriver session on a chromedriver started here (killed by PID on drop).
struct Browser {
    _driver: Proc,
    http: reqwest::Client,
    session: String,
    base: String,
}

impl Browser {
    async fn start(profile: &std::path::Path) -> Browser {
        for bin in ["/usr/bin/chromedriver", "/usr/bin/chromium"] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = free_port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Proc(child);
        let base = format!("http://127.0.0.1:{port}");
        let status = format!("{base}/status");
        wait_until("chromedriver is up", Duration::from_secs(30), || {
            let status = status.clone();
            async move {
                reqwest::get(&status)
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1400",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Browser {
            _driver: driver,
            http,
            session,
            base,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if !body.is_null() {
            req = req.json(&body);
        }
        let v: Value = req
            .send()
            .await
            .expect("webdriver answers")
            .json()
            .await
            .expect("webdriver json");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self
            .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        decode_base64(v.as_str().unwrap_or_else(|| panic!("no screenshot: {v}")))
    }

    async fn quit(&self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
    }
}

/// Standard base64 (WebDriver's screenshot encoding), without a crate for one call.
fn decode_base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// What the page shows, read from the DOM.
const READ_PAGE: &str = r#"
const t = (id) => document.getElementById(id).textContent;
const rows = (id) => [...document.querySelectorAll('#' + id + ' tr')].map(
    (tr) => [...tr.children].map((td) => td.textContent));
return {
  service: t('service'), version: t('version'), role: t('role'), db: t('db'),
  queue_state: t('queue-state'), queue_depth: t('queue-depth'), dlq_depth: t('dlq-depth'),
  ingest_rate: t('ingest-rate'), commit_rate: t('commit-rate'), updated: t('updated'),
  by_reason: rows('dlq-by-reason'), letters: rows('letters'),
  scripts: document.querySelectorAll('script').length,
  injected: window.__injected === true,
};
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_chromium_shows_what_health_says_and_hostile_reasons_as_text() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;

    // The page and its policy.
    let r = app
        .http
        .get(format!("{}/", app.base))
        .send()
        .await
        .expect("page");
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    for i in 0..10 {
        let (status, _) = app.post_event(&event(i, &[("voltage", i as f64)])).await;
        assert_eq!(status, 200);
    }
    // A parameter key that is no template: retried, then dead-lettered with a reason that
    // quotes the key, markup and all.
    let hostile =
        "<script>window.__injected=true</script><img src=x onerror=\"window.__injected=true\">";
    let mut bad = event(50, &[("voltage", 1.0)]);
    bad["metrics"][0]["parameter_key"] = json!(key(hostile));
    let (status, _) = app.post_event(&bad).await;
    assert_eq!(status, 200);
    wait_until(
        "rows and the dead letter are in",
        Duration::from_secs(60),
        || async {
            let h = app.health().await;
            env.row_count().await == 10 && h["dlq_depth"] == 1 && h["queue_depth"] == 0
        },
    )
    .await;
    let health = app.health().await;

    let profile = tempfile::tempdir().expect("profile dir");
    let browser = Browser::start(profile.path()).await;
    browser.goto(&format!("{}/", app.base)).await;
    // Two polls at least: the rates need two readings.
    let shown = std::sync::Mutex::new(Value::Null);
    wait_until(
        "the page shows the letters and rates",
        Duration::from_secs(30),
        || async {
            let v = browser.eval(READ_PAGE).await;
            let done = v["letters"].as_array().is_some_and(|l| !l.is_empty())
                && v["commit_rate"].as_str().is_some_and(|r| r != "–");
            *shown.lock().expect("lock") = v;
            done
        },
    )
    .await;
    let shown = shown.into_inner().expect("lock");
    let png = browser.screenshot().await;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&shot, &png).expect("save screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("screenshot saved to {}", shot.display());
    browser.quit().await;

    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    assert_eq!(shown["service"], health["service"], "{shown}");
    assert_eq!(shown["role"], health["role"]);
    assert_eq!(shown["db"], health["db"]);
    assert_eq!(shown["queue_state"], "reachable");
    assert_eq!(
        shown["queue_depth"].as_str(),
        Some(text(&health["queue_depth"]).as_str())
    );
    assert_eq!(
        shown["dlq_depth"].as_str(),
        Some(text(&health["dlq_depth"]).as_str())
    );
    assert_eq!(shown["version"], env!("CARGO_PKG_VERSION"));
    let by_reason: Vec<Vec<String>> = health["dlq_by_reason"]
        .as_object()
        .expect("by reason")
        .iter()
        .map(|(k, v)| vec![k.clone(), text(v)])
        .collect();
    assert_eq!(shown["by_reason"], json!(by_reason));
    assert_eq!(
        by_reason,
        vec![vec!["parameter_not_found".to_string(), "1".to_string()]]
    );
    // Rates are numbers (the traffic is over: 0.0 is the honest value now).
    for rate in ["ingest_rate", "commit_rate"] {
        let r = shown[rate].as_str().unwrap_or_default();
        assert!(r.parse::<f64>().is_ok(), "{rate} = {r}");
    }
    // The hostile reason is text: shown verbatim, no element made of it, nothing ran.
    let letter = &shown["letters"][0];
    assert_eq!(letter[2], "parameter_not_found", "{letter}");
    let reason = letter[3].as_str().unwrap_or_default();
    assert!(reason.contains(hostile), "{reason}");
    assert_eq!(shown["scripts"], 1, "only the page's own script element");
    assert_eq!(shown["injected"], false);
    app.stop().await;
}
