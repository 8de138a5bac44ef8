//! TLS settings that cross modules: the PostgreSQL `sslmode` / `sslrootcert` (from
//! `DATABASE_URL` or `DB_SSLMODE` / `DB_SSLROOTCERT`) and the pairs that only work together
//! (`TLS_CERT_FILE` + `TLS_KEY_FILE`, `NATS_TLS_CERT` + `NATS_TLS_KEY`).
//!
//! tokio-postgres parses only `disable`, `prefer` and `require` and refuses `sslrootcert`,
//! so [`PgConnect::from_url`] takes both out of the URL (or key=value string) before handing
//! the rest to tokio-postgres, and keeps them as [`PgTls`] for the store's TLS connector.
//! The modes mean what libpq says: `disable` plain; `prefer` TLS when the server offers it,
//! unverified; `require` TLS, unverified unless a root certificate is given (then as
//! `verify-ca`); `verify-ca` the chain to a trusted root, any host name; `verify-full` the
//! chain and the host name. The default, as libpq's, is `prefer`.

use std::path::PathBuf;

use super::db::SslMode;
use super::{ConfigError, PgConnect, Settings};

/// TLS towards PostgreSQL, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// Roots to trust (PEM); `None`: the system's roots (for the verifying modes).
    pub root_cert: Option<PathBuf>,
    /// Which setting gave `root_cert`, for error messages.
    pub root_cert_from: &'static str,
}

impl Default for PgTls {
    fn default() -> Self {
        PgTls {
            mode: SslMode::Prefer,
            root_cert: None,
            root_cert_from: "sslrootcert",
        }
    }
}

impl PgTls {
    /// The mode tokio-postgres itself knows (the verifying ones are `Require` to it; the
    /// connector does the checking).
    pub fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as D;
        match self.mode {
            SslMode::Disable => D::Disable,
            SslMode::Prefer => D::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => D::Require,
        }
    }

    /// libpq: `require` with a root certificate checks the chain as `verify-ca` does.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }
}

impl PgConnect {
    /// Parses a PostgreSQL URL (`postgres://…?sslmode=verify-full&sslrootcert=/ca.pem`) or
    /// key=value string, honouring `sslmode` (all five libpq modes) and `sslrootcert`.
    ///
    /// # Errors
    /// `Invalid` naming DATABASE_URL (never quoting it: it may carry a password).
    pub fn from_url(url: &str) -> Result<PgConnect, ConfigError> {
        Self::from_url_or(url, PgTls::default())
    }

    /// As [`PgConnect::from_url`]; what the URL does not say is taken from `fallback`
    /// (`DB_SSLMODE` / `DB_SSLROOTCERT`).
    ///
    /// # Errors
    /// As [`PgConnect::from_url`].
    pub fn from_url_or(url: &str, fallback: PgTls) -> Result<PgConnect, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            name: "DATABASE_URL",
            reason,
        };
        let (rest, params) = take_tls_params(url);
        let mut tls = fallback;
        for (key, value) in params {
            match key {
                "sslmode" => {
                    tls.mode = parse_sslmode(&value).ok_or_else(|| {
                        invalid(format!(
                            "sslmode {value:?} is not one of disable, prefer, require, \
                             verify-ca, verify-full"
                        ))
                    })?;
                }
                _ => {
                    tls.root_cert = Some(PathBuf::from(value));
                    tls.root_cert_from = "sslrootcert (in DATABASE_URL)";
                }
            }
        }
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| invalid(format!("not a PostgreSQL URL ({e})")))?;
        config.ssl_mode(tls.driver_mode());
        Ok(PgConnect { config, tls })
    }
}

fn parse_sslmode(s: &str) -> Option<SslMode> {
    Some(match s {
        "disable" => SslMode::Disable,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => return None,
    })
}

/// Splits `sslmode` and `sslrootcert` (decoded) off a URL's query or a key=value string;
/// returns the rest for tokio-postgres.
fn take_tls_params(url: &str) -> (String, Vec<(&'static str, String)>) {
    let is_ours = |k: &str| match k {
        "sslmode" => Some("sslmode"),
        "sslrootcert" => Some("sslrootcert"),
        _ => None,
    };
    let mut taken = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_string(), taken);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                match is_ours(k) {
                    Some(key) => {
                        taken.push((key, percent_decode(v)));
                        false
                    }
                    None => true,
                }
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, taken);
    }
    // key = value pairs; values may be single-quoted with backslash escapes.
    let mut rest = String::new();
    let chars: Vec<char> = url.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let key_start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[key_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i < chars.len() && chars[i] == '=' {
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                value.push(chars[i]);
                i += 1;
            }
        }
        match is_ours(&key) {
            Some(k) => taken.push((k, value)),
            None => rest.extend(&chars[start..i.min(chars.len())]),
        }
    }
    (rest.trim().to_string(), taken)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
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

impl Settings {
    /// Settings that only work in pairs, and TLS files that cannot be used alone.
    pub(super) fn validate_tls(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        pair(
            ("TLS_CERT_FILE", h.tls_cert_file.is_some()),
            ("TLS_KEY_FILE", h.tls_key_file.is_some()),
        )?;
        if h.tls_client_ca_file.is_some() && h.tls_cert_file.is_none() {
            return Err(ConfigError::Invalid {
                name: "TLS_CLIENT_CA_FILE",
                reason: "client certificates are checked in the TLS handshake: set \
                         TLS_CERT_FILE and TLS_KEY_FILE too"
                    .into(),
            });
        }
        let n = &self.nats;
        pair(
            ("NATS_TLS_CERT", n.nats_tls_cert.is_some()),
            ("NATS_TLS_KEY", n.nats_tls_key.is_some()),
        )
    }
}

fn pair(a: (&'static str, bool), b: (&'static str, bool)) -> Result<(), ConfigError> {
    let (set, unset) = match (a.1, b.1) {
        (true, false) => (a.0, b.0),
        (false, true) => (b.0, a.0),
        _ => return Ok(()),
    };
    Err(ConfigError::Invalid {
        name: set,
        reason: format!(
            "{set} is set but {unset} is not: set both {} and {}, or neither",
            a.0, b.0
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_libpq_sslmode_and_sslrootcert_are_taken_from_the_url() {
        let pg = PgConnect::from_url(
            "postgres://u:pw@db.example.com:5433/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca%20x.pem",
        )
        .unwrap();
        assert_eq!(pg.tls.mode, SslMode::VerifyFull);
        assert_eq!(pg.tls.root_cert, Some(PathBuf::from("/etc/ca x.pem")));
        assert_eq!(pg.config.get_application_name(), Some("a"));
        assert_eq!(pg.config.get_ports(), &[5433]);
        for (mode, want) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
        ] {
            let pg = PgConnect::from_url(&format!("postgres://h/x?sslmode={mode}")).unwrap();
            assert_eq!(pg.tls.mode, want);
        }
        assert_eq!(
            PgConnect::from_url("postgres://h/x").unwrap().tls.mode,
            SslMode::Prefer
        );
        let kv = PgConnect::from_url(
            "host=h user=u password='p w' sslmode = verify-ca sslrootcert='/c a.pem' dbname=x",
        )
        .unwrap();
        assert_eq!(kv.tls.mode, SslMode::VerifyCa);
        assert_eq!(kv.tls.root_cert, Some(PathBuf::from("/c a.pem")));
        assert_eq!(kv.config.get_dbname(), Some("x"));
        assert_eq!(kv.config.get_password(), Some(&b"p w"[..]));
    }

    #[test]
    fn a_bad_sslmode_is_refused_without_quoting_the_url() {
        let e = PgConnect::from_url("postgres://u:hunter2@h/x?sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(e.contains("DATABASE_URL") && e.contains("sometimes"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        for bad in [
            "postgres://u:hunter2@h:notaport/x",
            "postgres://u:hunter2@h/x?bogus=hunter2",
            "host=h password='hunter2",
            "user=u password=hunter2 bogus",
        ] {
            let e = PgConnect::from_url(bad).unwrap_err().to_string();
            assert!(
                e.contains("DATABASE_URL") && !e.contains("hunter2"),
                "{bad}: {e}"
            );
        }
    }

    fn validated(args: &[&str]) -> Result<(), String> {
        crate::config::try_settings_from(args)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn half_a_certificate_pair_is_refused_naming_both() {
        for (flag, set, unset) in [
            ("--tls-cert-file", "TLS_CERT_FILE", "TLS_KEY_FILE"),
            ("--tls-key-file", "TLS_KEY_FILE", "TLS_CERT_FILE"),
            ("--nats-tls-cert", "NATS_TLS_CERT", "NATS_TLS_KEY"),
            ("--nats-tls-key", "NATS_TLS_KEY", "NATS_TLS_CERT"),
        ] {
            let e = validated(&[flag, "/x.pem"]).unwrap_err();
            assert!(e.contains(set) && e.contains(unset), "{flag}: {e}");
        }
        let e = validated(&["--tls-client-ca-file", "/ca.pem"]).unwrap_err();
        assert!(
            e.contains("TLS_CLIENT_CA_FILE") && e.contains("TLS_CERT_FILE"),
            "{e}"
        );
        let pair = [
            "--tls-cert-file",
            "/c",
            "--tls-key-file",
            "/k",
            "--tls-client-ca-file",
            "/a",
        ];
        assert_eq!(validated(&pair), Ok(()));
        let e = validated(&["--db-sslmode", "sometimes"]).unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
        let pg = PgConnect::from_url("postgres://h/x?sslmode=require&sslrootcert=/ca").unwrap();
        assert_eq!(pg.tls.effective_mode(), SslMode::VerifyCa);
    }
}
