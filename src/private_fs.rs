//! Private files of the embedded mode: `DATA_DIR` is created 0700 and its files 0600, set
//! explicitly so the process umask does not decide who may read the telemetry. SQLite gives
//! the `-wal`/`-shm` files it creates the mode of their database file, so creating the
//! database file 0600 first covers them. Imports nothing of ours (the store, the queue and
//! the app use it).

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of `DATA_DIR`.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) when it does not exist; the directory itself gets
/// [`DIR_MODE`] whatever the umask. An existing directory is left as it is (see
/// [`tighten`]).
///
/// # Errors
/// The directory cannot be created.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Creates `path` empty with [`FILE_MODE`] when it does not exist (an empty file is a new
/// SQLite database), so SQLite never creates it with the umask's mode.
///
/// # Errors
/// The file cannot be created.
pub fn create_file(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
    {
        Ok(_) => std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes group and other permissions from `dir` and the files of `names` in it (each with
/// its `-wal`, `-shm` and `-journal` companions); returns what was looser, with its old
/// mode, for the caller's warning. Files that do not exist are skipped.
///
/// # Errors
/// A mode that cannot be changed (the process does not own the file).
pub fn tighten(dir: &Path, names: &[&str]) -> io::Result<Vec<(PathBuf, u32)>> {
    let mut changed = Vec::new();
    let mut fix = |path: PathBuf, mode: u32| -> io::Result<()> {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let old = meta.permissions().mode() & 0o777;
        if old & 0o077 != 0 {
            std::fs::set_permissions(&path, Permissions::from_mode(mode))?;
            changed.push((path, old));
        }
        Ok(())
    };
    fix(dir.to_path_buf(), DIR_MODE)?;
    for name in names {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            fix(dir.join(format!("{name}{suffix}")), FILE_MODE)?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn created_private_and_looser_ones_tightened() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("a/b");
        create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&dir), DIR_MODE);
        let f = dir.join("x.db");
        create_file(&f).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&f), FILE_MODE);
        create_file(&f).unwrap_or_else(|e| panic!("an existing file is fine: {e}"));

        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).ok();
        let wal = dir.join("x.db-wal");
        std::fs::write(&wal, b"").ok();
        std::fs::set_permissions(&wal, Permissions::from_mode(0o644)).ok();
        let changed = tighten(&dir, &["x.db", "missing.db"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(changed, [(dir.clone(), 0o755), (wal.clone(), 0o644)]);
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&wal), FILE_MODE);
        assert!(tighten(&dir, &["x.db"]).unwrap_or_default().is_empty());
    }
}
