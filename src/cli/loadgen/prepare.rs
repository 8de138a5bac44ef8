//! loadgen, step 1: check the arguments, read the registry and pick the devices, count the
//! rows before, build the HTTP clients and take the "before" scrape of `/metrics`.

use super::*;

/// Everything the later steps need, fixed before the first request.
pub(super) struct Prepared {
    pub(super) args: Arc<LoadgenArgs>,
    /// Base URL of the service under load.
    pub(super) base: String,
    /// Base URLs whose `/metrics` hold the workers' histograms.
    pub(super) metrics_urls: Vec<String>,
    pub(super) shared: Arc<Shared>,
    pub(super) endpoint: Endpoint,
    /// Short-timeout client for health and metrics.
    pub(super) probe: reqwest::Client,
    pub(super) rows_before: u64,
    pub(super) scrape_before: Option<Scrape>,
    pub(super) cpu_at_start: Option<f64>,
    /// Ids of the tokens `--mint-tokens` created (revoked after the run).
    pub(super) minted: Option<Vec<Uuid>>,
}

/// Step 1 of `run`.
pub(super) async fn prepare(s: &Settings, args: LoadgenArgs) -> anyhow::Result<Prepared> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.metrics == 0 {
        bail!("--metrics must be at least 1");
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be 0 (as fast as possible) or a positive number of events/s");
    }
    let base = args.service.base(&s.http);
    let metrics_urls: Vec<String> = if args.metrics_urls.is_empty() {
        vec![base.clone()]
    } else {
        args.metrics_urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect()
    };

    let doc = with_store(s, Export).await.context(
        "cannot read the registry (loadgen needs the service's store settings: the same \
         DATA_DIR, or DATABASE_URL and NATS_URL)",
    )?;
    let mut targets = pick_targets(&doc, args.devices.max(1), args.metrics);
    if targets.is_empty() {
        bail!(
            "no active device whose project has parameter templates in the registry \
             (load one with `nsready registry demo` or `registry import`)"
        );
    }
    if args.mint_tokens && args.batch > 0 && targets.len() > 1 {
        bail!("--mint-tokens with --batch needs --devices 1 (a token writes for one device)");
    }
    let minted = if args.mint_tokens {
        Some(super::tokens::mint(s, &mut targets).await?)
    } else {
        None
    };
    let rows_before = with_store(s, CountRows)
        .await
        .context("cannot count the rows of ingest_events")?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    if let Err(e) = probe.get(format!("{base}/v1/health")).send().await {
        bail!("nsready at {base} does not answer: {e}");
    }
    if minted.is_some() {
        super::tokens::wait_seen(&probe, &format!("{base}/v1/ingest"), &targets).await?;
    }
    let scrape_before = scrape(&probe, &metrics_urls).await;
    let cpu_at_start = cpu_seconds();
    let base_us = chrono::Utc::now().timestamp_micros();
    let endpoint = Endpoint {
        client,
        url: if args.batch > 0 {
            format!("{base}/v1/ingest/batch")
        } else {
            format!("{base}/v1/ingest")
        },
        auth: s
            .http
            .ingest_auth_token
            .as_ref()
            .map(|t| t.expose().to_string()),
        batch: args.batch > 0,
    };
    Ok(Prepared {
        args: Arc::new(args),
        base,
        metrics_urls,
        shared: Arc::new(Shared::new(targets, base_us)),
        endpoint,
        probe,
        rows_before,
        scrape_before,
        cpu_at_start,
        minted,
    })
}
