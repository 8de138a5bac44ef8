//! HTTPS for the listener: the rustls acceptor built from `TLS_CERT_FILE` / `TLS_KEY_FILE`,
//! with client-certificate verification (mTLS) when `TLS_CLIENT_CA_FILE` is set.
//!
//! Built once at start ([`acceptor`]); a file that cannot be read or holds no usable PEM is
//! a start-up error naming the variable and the path (never the file's content).
//! [`super::serve`] runs the handshake on each accepted connection, bounded by
//! `HTTP_HEADER_TIMEOUT`. The crypto provider is ring (the one async-nats already uses);
//! protocol versions are rustls's safe defaults (TLS 1.2 and 1.3), ALPN `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

use crate::config::HttpArgs;

/// Why the listener's TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named by a setting is unusable.
    #[error("{name}: cannot use {}: {reason}", path.display())]
    File {
        name: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The certificate and key do not make a TLS configuration (e.g. they do not match).
    #[error("TLS_CERT_FILE / TLS_KEY_FILE: {0}")]
    Config(String),
}

/// The acceptor for the configured certificate, or `None` for plain HTTP.
///
/// # Errors
/// `File` naming the variable and the path of an unusable file; `Config` when rustls
/// refuses the pair (a key that does not match the certificate).
pub fn acceptor(h: &HttpArgs) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&h.tls_cert_file, &h.tls_key_file) else {
        return Ok(None);
    };
    let certs = certificates("TLS_CERT_FILE", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::File {
        name: "TLS_KEY_FILE",
        path: key_path.clone(),
        reason: pem_reason(&e, "private key"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &h.tls_client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("TLS_CLIENT_CA_FILE", ca_path)? {
                roots.add(cert).map_err(|e| TlsError::File {
                    name: "TLS_CLIENT_CA_FILE",
                    path: ca_path.clone(),
                    reason: format!("not a usable CA certificate ({e})"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::File {
                    name: "TLS_CLIENT_CA_FILE",
                    path: ca_path.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// Every certificate of a PEM file; at least one.
fn certificates(name: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        name,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_reason(&e, "certificate")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_reason(&e, "certificate")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// What went wrong, in words that quote nothing of the file (it may hold a key).
fn pem_reason(e: &pem::Error, what: &str) -> String {
    match e {
        pem::Error::Io(io) => io.kind().to_string(),
        pem::Error::NoItemsFound => format!("no PEM {what} in it"),
        _ => format!("not valid PEM (expected a {what})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cert: &Path, key: &Path) -> HttpArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            http: HttpArgs,
        }
        Only::parse_from([
            "x".as_ref(),
            "--tls-cert-file".as_ref(),
            cert.as_os_str(),
            "--tls-key-file".as_ref(),
            key.as_os_str(),
        ])
        .http
    }

    fn refused(cert: &Path, key: &Path) -> String {
        match acceptor(&args(cert, key)) {
            Ok(_) => panic!("{} / {} should be refused", cert.display(), key.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unusable_files_name_the_variable_and_path_but_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        assert!(acceptor(&args(&cert, &key)).unwrap().is_some());

        let missing = dir.path().join("missing.pem");
        let e = refused(&missing, &key);
        assert!(
            e.contains("TLS_CERT_FILE") && e.contains("missing.pem"),
            "{e}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hunter2 not pem\n").unwrap();
        let e = refused(&cert, &garbage);
        assert!(
            e.contains("TLS_KEY_FILE") && e.contains("garbage.pem"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        // The key file as certificate: PEM, but no certificate in it.
        let e = refused(&key, &key);
        assert!(e.contains("TLS_CERT_FILE") && e.contains("key.pem"), "{e}");
        assert!(!e.contains("PRIVATE KEY-----\n"), "{e}");
    }
}
