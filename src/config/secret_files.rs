//! The `*_FILE` variants of every secret (the container-secrets convention): a setting such
//! as `POSTGRES_PASSWORD_FILE=/run/secrets/pg` names a file whose content is the secret.
//!
//! [`Settings::resolve_secret_files`] reads each named file once, at start, before
//! validation: one trailing newline (`\n` or `\r\n`) is stripped, the content becomes the
//! value of the plain setting and the `*_FILE` field is cleared. Both the plain variable and
//! its `*_FILE` set is refused naming both; an unreadable or empty file is refused naming
//! the variable and the path. The content of a file is never printed.

use std::path::{Path, PathBuf};

use super::{ConfigError, Secret, Settings};

/// The secrets that have a `*_FILE` variant: (plain name, file name).
pub const SECRET_FILES: [(&str, &str); 5] = [
    ("POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE"),
    ("DATABASE_URL", "DATABASE_URL_FILE"),
    ("NATS_PASSWORD", "NATS_PASSWORD_FILE"),
    ("NATS_TOKEN", "NATS_TOKEN_FILE"),
    ("INGEST_AUTH_TOKEN", "INGEST_AUTH_TOKEN_FILE"),
];

impl Settings {
    /// Reads every `*_FILE` secret into its plain setting (see the module comment).
    /// Idempotent: a second call finds nothing left to read.
    ///
    /// # Errors
    /// `SecretFileConflict` when a secret is set both ways; `SecretFileUnreadable` when a
    /// file cannot be read, is not UTF-8 or is empty.
    pub fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        let [pg_pw, db_url, nats_pw, nats_token, ingest] = SECRET_FILES;
        resolve(
            pg_pw,
            &mut self.db.postgres_password,
            &mut self.db.postgres_password_file,
        )?;
        resolve(
            db_url,
            &mut self.db.database_url,
            &mut self.db.database_url_file,
        )?;
        resolve(
            nats_pw,
            &mut self.nats.nats_password,
            &mut self.nats.nats_password_file,
        )?;
        resolve(
            nats_token,
            &mut self.nats.nats_token,
            &mut self.nats.nats_token_file,
        )?;
        resolve(
            ingest,
            &mut self.http.ingest_auth_token,
            &mut self.http.ingest_auth_token_file,
        )
    }

    /// A `*_FILE` setting left unread (a caller that skipped
    /// [`Settings::resolve_secret_files`]) would silently mean "no secret": refused.
    pub(super) fn validate_secret_files_resolved(&self) -> Result<(), ConfigError> {
        let left = [
            &self.db.postgres_password_file,
            &self.db.database_url_file,
            &self.nats.nats_password_file,
            &self.nats.nats_token_file,
            &self.http.ingest_auth_token_file,
        ];
        for ((_, file_name), path) in SECRET_FILES.iter().zip(left) {
            if path.is_some() {
                return Err(ConfigError::Invalid {
                    name: file_name,
                    reason: "was not read (Settings::resolve_secret_files must run first)".into(),
                });
            }
        }
        Ok(())
    }
}

fn resolve(
    (name, file_name): (&'static str, &'static str),
    value: &mut Option<Secret>,
    file: &mut Option<PathBuf>,
) -> Result<(), ConfigError> {
    let Some(path) = file.take() else {
        return Ok(());
    };
    if value.is_some() {
        return Err(ConfigError::SecretFileConflict { name, file_name });
    }
    *value = Some(read_secret(file_name, &path)?);
    Ok(())
}

/// The content of a secret file, with one trailing newline stripped.
///
/// # Errors
/// `SecretFileUnreadable` naming `file_name` and the path (never the content).
pub fn read_secret(file_name: &'static str, path: &Path) -> Result<Secret, ConfigError> {
    let unreadable = |reason: String| ConfigError::SecretFileUnreadable {
        name: file_name,
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| unreadable(e.kind().to_string()))?;
    // from_utf8's error quotes no content, only a byte offset.
    let mut text =
        String::from_utf8(bytes).map_err(|_| unreadable("not valid UTF-8 text".into()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.trim().is_empty() {
        return Err(unreadable("empty (or only whitespace)".into()));
    }
    Ok(Secret(text))
}

#[cfg(test)]
mod tests {
    use crate::config::settings_from as settings;

    #[test]
    fn a_file_secret_is_read_once_with_one_trailing_newline_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p.display().to_string()
        };
        let pg = write("pg", "pg-s3cret\n");
        let url = write("url", "postgres://u:url-s3cret@db/x\r\n");
        let nats_pw = write("npw", "two\n\n");
        let token = write("tok", " spaced ");
        let ingest = write("ing", "ingest-s3cret");
        let mut s = settings(&[
            "--postgres-password-file",
            &pg,
            "--database-url-file",
            &url,
            "--nats-password-file",
            &nats_pw,
            "--nats-token-file",
            &token,
            "--ingest-auth-token-file",
            &ingest,
        ]);
        assert!(s.validate().is_err(), "unread *_FILE must not pass");
        s.resolve_secret_files().unwrap();
        assert_eq!(
            s.db.postgres_password.as_ref().unwrap().expose(),
            "pg-s3cret"
        );
        assert_eq!(
            s.db.database_url.as_ref().unwrap().expose(),
            "postgres://u:url-s3cret@db/x"
        );
        assert_eq!(s.nats.nats_password.as_ref().unwrap().expose(), "two\n");
        assert_eq!(s.nats.nats_token.as_ref().unwrap().expose(), " spaced ");
        assert_eq!(
            s.http.ingest_auth_token.as_ref().unwrap().expose(),
            "ingest-s3cret"
        );
        s.resolve_secret_files().unwrap();
        assert!(s.db.postgres_password_file.is_none());
    }

    #[test]
    fn both_set_or_an_unreadable_file_is_refused_by_name_never_by_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "hunter2\n").unwrap();
        let path = p.display().to_string();
        let mut s = settings(&["--nats-password", "hunter2", "--nats-password-file", &path]);
        let msg = s.resolve_secret_files().unwrap_err().to_string();
        assert!(
            msg.contains("NATS_PASSWORD ") && msg.contains("NATS_PASSWORD_FILE"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");

        let missing = dir.path().join("missing").display().to_string();
        let mut s = settings(&["--postgres-password-file", &missing]);
        let msg = s.resolve_secret_files().unwrap_err().to_string();
        assert!(
            msg.contains("POSTGRES_PASSWORD_FILE") && msg.contains(&missing),
            "{msg}"
        );

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let empty = empty.display().to_string();
        let mut s = settings(&["--ingest-auth-token-file", &empty]);
        let msg = s.resolve_secret_files().unwrap_err().to_string();
        assert!(
            msg.contains("INGEST_AUTH_TOKEN_FILE") && msg.contains("empty"),
            "{msg}"
        );
    }
}
