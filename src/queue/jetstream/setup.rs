//! JetStream setup: connecting (with the seed's start-up retries and cluster URL lists) and
//! provisioning the stream, the DLQ stream and the durable consumer, reporting drift.

use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream::{self, consumer, stream};
use backon::Retryable;

use super::{JetStreamOptions, JetStreamQueue};
use crate::config::NatsArgs;
use crate::queue::QueueError;

/// Parses `NATS_URL`: one server URL, or a comma-separated list of cluster members
/// (`nats://a:4222,nats://b:4222`), as the NATS CLI and other clients accept it. The client
/// connects to any of them and reconnects to the others when its server goes away.
///
/// # Errors
/// `Setup` for an empty list or an unparsable URL.
pub fn server_addrs(url: &str) -> Result<Vec<ServerAddr>, QueueError> {
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        // The URL itself is not quoted: it may carry a password.
        .map(|(i, s)| {
            s.parse::<ServerAddr>().map_err(|e| {
                QueueError::Setup(format!("NATS_URL: server {} of the list: {e}", i + 1))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(QueueError::Setup("NATS_URL lists no server".into()));
    }
    Ok(addrs)
}

/// Credentials written into `NATS_URL` (`nats://user:password@host`, `nats://token@host`).
#[derive(Clone, PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// Takes the credentials out of the server addresses. async-nats does not send a URL's
/// credentials itself (they must be connect options) and logs each address, password
/// included, at debug level; so the addresses it gets carry none. Every server that names
/// credentials must name the same ones (one client, one identity).
///
/// # Errors
/// `Setup` when the servers of the list name different credentials.
fn split_credentials(
    addrs: Vec<ServerAddr>,
) -> Result<(Vec<ServerAddr>, Option<UrlAuth>), QueueError> {
    let mut auth: Option<UrlAuth> = None;
    let mut bare = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.into_iter().enumerate() {
        let this = match (addr.username(), addr.password()) {
            (Some(user), Some(pw)) => Some(UrlAuth::UserPassword(
                percent_decoded(user),
                percent_decoded(pw),
            )),
            (Some(token), None) => Some(UrlAuth::Token(percent_decoded(token))),
            _ => None,
        };
        if let Some(this) = this {
            if auth.as_ref().is_some_and(|a| *a != this) {
                return Err(QueueError::Setup(format!(
                    "NATS_URL: server {} of the list names other credentials than the                      ones before it",
                    i + 1
                )));
            }
            auth = Some(this);
        }
        let mut url = addr.into_inner();
        // Cannot fail for nats:// and tls:// URLs with a host (ServerAddr checked both).
        let _ = url.set_username("");
        let _ = url.set_password(None);
        bare.push(ServerAddr::from_url(url).map_err(|e| {
            QueueError::Setup(format!("NATS_URL: server {} of the list: {e}", i + 1))
        })?);
    }
    Ok((bare, auth))
}

/// `%XX` escapes of a URL's user or password decoded (a password may hold `@` or `:`).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `NATS_URL` for logs and errors: every `user:password@` (or `token@`) part removed, so no
/// credential is ever printed.
pub(super) fn redacted(url: &str) -> String {
    url.split(',')
        .map(|s| {
            let s = s.trim();
            let (scheme, rest) = match s.split_once("://") {
                Some((scheme, rest)) => (format!("{scheme}://"), rest),
                None => (String::new(), s),
            };
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}{rest}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects with the seed's retry policy (tries × delay), then reconnects forever.
/// `url` may list several servers, comma-separated ([`server_addrs`]).
///
/// # Errors
/// `Unavailable` after the last try; `Setup` for an invalid URL or unreadable credentials.
pub async fn connect(url: &str, n: &NatsArgs) -> Result<async_nats::Client, QueueError> {
    let (addrs, url_auth) = split_credentials(server_addrs(url)?)?;
    // The TLS files are read by the client on every attempt; an unreadable one is a setup
    // error at once, naming the variable, not ten failed connection attempts.
    for (name, path) in [
        ("NATS_TLS_CA", &n.nats_tls_ca),
        ("NATS_TLS_CERT", &n.nats_tls_cert),
        ("NATS_TLS_KEY", &n.nats_tls_key),
    ] {
        if let Some(path) = path
            && let Err(e) = std::fs::File::open(path)
        {
            return Err(QueueError::Setup(format!(
                "{name}: cannot read {}: {}",
                path.display(),
                e.kind()
            )));
        }
    }
    // NATS_CONNECT_RETRIES attempts, NATS_CONNECT_DELAY apart plus up to as much jitter;
    // a setup error (unreadable credentials) is not retried.
    let tries = n.nats_connect_retries.max(1);
    let policy = backon::ConstantBuilder::default()
        .with_delay(n.nats_connect_delay)
        .with_max_times(tries.saturating_sub(1) as usize)
        .with_jitter();
    let mut attempt = 0u32;
    let connected = (|| connect_once(&addrs, url_auth.as_ref(), n))
        .retry(policy)
        .when(|e| matches!(e, Attempt::Failed(_)))
        .notify(|e, _| {
            attempt += 1;
            tracing::warn!(url = %redacted(url), attempt, tries, error = %e, "NATS connection attempt failed");
        })
        .await;
    match connected {
        Ok(client) => {
            let server = client.server_info().server_name;
            tracing::info!(url = %redacted(url), server = %server, "connected to NATS");
            Ok(client)
        }
        Err(Attempt::Setup(e)) => Err(e),
        Err(Attempt::Failed(last)) => Err(QueueError::Unavailable(format!(
            "cannot connect to NATS at {} after {tries} attempts: {last}",
            redacted(url)
        ))),
    }
}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum Attempt {
    /// The options cannot work (unreadable NATS_CREDS): no retry.
    #[error(transparent)]
    Setup(QueueError),
    /// The server did not take the connection (down, refused, TLS): retried.
    #[error("{0}")]
    Failed(String),
}

/// One connection attempt with every option of the settings.
async fn connect_once(
    addrs: &[ServerAddr],
    url_auth: Option<&UrlAuth>,
    n: &NatsArgs,
) -> Result<async_nats::Client, Attempt> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("nsready")
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|ev| async move {
            tracing::info!(event = %ev, "nats connection event");
        });
    if let (Some(user), Some(pw)) = (&n.nats_user, &n.nats_password) {
        opts = opts.user_and_password(user.clone(), pw.expose().to_string());
    }
    if let Some(token) = &n.nats_token {
        opts = opts.token(token.expose().to_string());
    }
    // Credentials in NATS_URL win over NATS_USER / NATS_PASSWORD / NATS_TOKEN.
    match url_auth {
        Some(UrlAuth::UserPassword(user, pw)) => {
            opts = opts.user_and_password(user.clone(), pw.clone());
        }
        Some(UrlAuth::Token(token)) => opts = opts.token(token.clone()),
        None => {}
    }
    if let Some(creds) = &n.nats_creds {
        opts = opts.credentials_file(creds).await.map_err(|e| {
            Attempt::Setup(QueueError::Setup(format!(
                "cannot read NATS_CREDS {}: {e}",
                creds.display()
            )))
        })?;
    }
    if n.nats_tls {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &n.nats_tls_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    // Both or neither (`Settings::validate`); a client certificate means TLS.
    if let (Some(cert), Some(key)) = (&n.nats_tls_cert, &n.nats_tls_key) {
        opts = opts
            .require_tls(true)
            .add_client_certificate(cert.clone(), key.clone());
    }
    opts.connect(addrs)
        .await
        .map_err(|e| Attempt::Failed(e.to_string()))
}

impl JetStreamQueue {
    /// Creates or verifies the stream, the DLQ stream and the consumer.
    ///
    /// # Errors
    /// `Setup` when JetStream refuses (not enabled, incompatible existing stream).
    pub async fn provision(
        client: async_nats::Client,
        opts: JetStreamOptions,
    ) -> Result<Self, QueueError> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(opts.publish_timeout);
        let want = stream::Config {
            name: opts.stream.clone(),
            subjects: vec![opts.subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_age: opts.max_age,
            max_messages: opts.max_msgs,
            max_bytes: opts.max_bytes,
            num_replicas: opts.replicas,
            duplicate_window: opts.duplicate_window,
            ..Default::default()
        };
        let stream = ensure_stream(&js, want, opts.manage_config).await?;
        // The DLQ keeps everything (limits retention, no age limit) and refuses new letters
        // when full rather than dropping old ones: a refused dead letter leaves the original
        // in INGRESS, so nothing is lost.
        let dlq = stream::Config {
            name: opts.dlq_stream.clone(),
            subjects: vec![opts.dlq_subject.clone()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_messages: opts.max_msgs,
            max_bytes: opts.max_bytes,
            num_replicas: opts.replicas,
            duplicate_window: Duration::from_secs(24 * 3600),
            ..Default::default()
        };
        ensure_stream(&js, dlq, opts.manage_config).await?;
        let want = consumer::pull::Config {
            durable_name: Some(opts.consumer.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: opts.ack_wait,
            // No server-side limit: the worker decides when a message is dead, and never for
            // infrastructure failures (DESIGN.md §3.4).
            max_deliver: -1,
            max_ack_pending: opts.max_ack_pending,
            max_waiting: 512,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(&opts.consumer, want.clone())
            .await
            .map_err(|e| QueueError::Setup(format!("consumer {}: {e}", opts.consumer)))?;
        let have = &consumer.cached_info().config;
        let mut drift = Vec::new();
        if have.ack_wait != want.ack_wait {
            drift.push(format!(
                "ack_wait {:?} (want {:?})",
                have.ack_wait, want.ack_wait
            ));
        }
        if have.max_deliver != want.max_deliver {
            drift.push(format!("max_deliver {} (want -1)", have.max_deliver));
        }
        if have.max_ack_pending < want.max_ack_pending {
            drift.push(format!(
                "max_ack_pending {} (want {})",
                have.max_ack_pending, want.max_ack_pending
            ));
        }
        if have.ack_policy != consumer::AckPolicy::Explicit {
            drift.push("ack_policy is not explicit".to_string());
        }
        if !drift.is_empty() && !opts.manage_config {
            tracing::debug!(consumer = %opts.consumer, drift = %drift.join(", "),
                "consumer settings differ from this command's; left as they are");
        } else if !drift.is_empty() {
            tracing::warn!(consumer = %opts.consumer, drift = %drift.join(", "),
                "consumer configuration drifted; trying to update it");
            if let Err(e) = stream.update_consumer(want).await {
                tracing::error!(consumer = %opts.consumer, error = %e,
                    "consumer configuration could not be updated; delete and recreate it to apply");
            }
        }
        let stream_created = stream.cached_info().created.unix_timestamp_nanos();
        Ok(JetStreamQueue {
            client,
            js,
            consumer,
            opts,
            stream_created,
            tasks: crate::shutdown::Shutdown::new(),
        })
    }
}

/// Creates the stream, or checks an existing one against the wanted settings and updates it
/// where JetStream allows.
async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
    update: bool,
) -> Result<stream::Stream, QueueError> {
    let name = want.name.clone();
    let mut s = js
        .get_or_create_stream(want.clone())
        .await
        .map_err(|e| QueueError::Setup(format!("stream {name}: {e}")))?;
    let have = s
        .info()
        .await
        .map_err(|e| QueueError::Setup(format!("stream {name}: {e}")))?
        .config
        .clone();
    let mut drift = Vec::new();
    if have.subjects != want.subjects {
        drift.push(format!(
            "subjects {:?} (want {:?})",
            have.subjects, want.subjects
        ));
    }
    if have.retention != want.retention {
        drift.push(format!(
            "retention {:?} (want {:?})",
            have.retention, want.retention
        ));
    }
    if have.storage != want.storage {
        drift.push(format!(
            "storage {:?} (want {:?})",
            have.storage, want.storage
        ));
    }
    if have.discard != want.discard {
        drift.push(format!(
            "discard {:?} (want {:?})",
            have.discard, want.discard
        ));
    }
    if have.max_messages != want.max_messages
        || have.max_bytes != want.max_bytes
        || have.max_age != want.max_age
    {
        drift.push(format!(
            "limits msgs={} bytes={} age={:?} (want {} / {} / {:?})",
            have.max_messages,
            have.max_bytes,
            have.max_age,
            want.max_messages,
            want.max_bytes,
            want.max_age
        ));
    }
    if have.num_replicas != want.num_replicas {
        drift.push(format!(
            "replicas {} (want {})",
            have.num_replicas, want.num_replicas
        ));
    }
    if have.duplicate_window != want.duplicate_window {
        drift.push(format!(
            "duplicate_window {:?} (want {:?})",
            have.duplicate_window, want.duplicate_window
        ));
    }
    if !drift.is_empty() && !update {
        tracing::debug!(stream = %name, drift = %drift.join(", "),
            "stream settings differ from this command's; left as they are");
    } else if !drift.is_empty() {
        tracing::warn!(stream = %name, drift = %drift.join(", "), "stream configuration drifted; updating");
        match js.update_stream(want).await {
            Ok(_) => tracing::info!(stream = %name, "stream configuration updated"),
            Err(e) => tracing::error!(stream = %name, error = %e,
                "stream configuration could not be updated (JetStream does not allow changing \
                 retention or storage in place); running with the existing settings"),
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::{UrlAuth, redacted, server_addrs, split_credentials};

    #[test]
    fn credentials_never_reach_a_log_line() {
        assert_eq!(
            redacted("nats://user:s3cret@10.0.0.1:4222, tls://tok3n@n2:4222"),
            "nats://10.0.0.1:4222,tls://n2:4222"
        );
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redacted("a:b@host"), "host");
    }

    #[test]
    fn url_credentials_become_connect_options_and_leave_the_addresses() {
        let addrs =
            server_addrs("nats://us%40r:p%3Aw@a:4222,nats://us%40r:p%3Aw@b:4222,nats://c:1")
                .unwrap();
        let (bare, auth) = split_credentials(addrs).unwrap();
        assert!(auth == Some(UrlAuth::UserPassword("us@r".into(), "p:w".into())));
        for a in &bare {
            assert!(!a.has_user_pass() && a.password().is_none(), "{a:?}");
            assert!(!format!("{a:?}").contains("p%3Aw"), "{a:?}");
        }
        let (_, auth) = split_credentials(server_addrs("tls://tok3n@a:4222").unwrap()).unwrap();
        assert!(auth == Some(UrlAuth::Token("tok3n".into())));
        let mixed = server_addrs("nats://u:one@a:1,nats://u:two@b:1").unwrap();
        assert!(split_credentials(mixed).is_err());
    }
}
