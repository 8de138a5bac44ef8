//! Test servers: finding the PostgreSQL binaries, the cached initdb template, running as the
//! `postgres` user, and cleaning up after a killed cluster.

use super::*;

/// A PostgreSQL installation: the server binary dir and its major version.
pub(super) struct PgInstall {
    pub(super) bin: PathBuf,
    pub(super) major: String,
}

impl PgInstall {
    /// A client tool from the server bin dir, else from `PATH`.
    pub(super) fn tool(&self, name: &str) -> PathBuf {
        let path = self.bin.join(name);
        if path.is_file() {
            path
        } else {
            PathBuf::from(name)
        }
    }
}

/// `$PG_BIN`, else the highest-versioned `/usr/lib/postgresql/*/bin` holding `postgres`.
pub(super) fn pg_install() -> &'static PgInstall {
    static INSTALL: OnceLock<PgInstall> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let bin = match std::env::var_os("PG_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|entry| {
                        let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                        let bin = entry.path().join("bin");
                        bin.join("postgres").is_file().then_some((version, bin))
                    })
                    .collect();
                found.sort();
                found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
                    panic!(
                        "no PostgreSQL server in /usr/lib/postgresql/*/bin (set $PG_BIN, \
                         or run .ci/run, or `apt-get install -y postgresql-15`)"
                    )
                })
            }
        };
        let postgres = bin.join("postgres");
        assert!(
            postgres.is_file(),
            "{} not found ($PG_BIN?)",
            postgres.display()
        );
        // `postgres --version` is allowed as root: "postgres (PostgreSQL) 15.14 (Debian ...)".
        let out = run_output(
            {
                let mut cmd = Command::new(&postgres);
                cmd.arg("--version");
                cmd
            },
            "postgres --version",
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let major = text
            .split_whitespace()
            .nth(2)
            .and_then(|version| version.split(['.', 'b', 'r']).next())
            .filter(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or_else(|| panic!("cannot parse `postgres --version` output: {text:?}"))
            .to_string();
        PgInstall { bin, major }
    })
}

/// User and group the PostgreSQL server runs as.
#[derive(Clone, Copy)]
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// `Some(postgres user)` when running as root (the server refuses root), else `None` (run as
/// ourselves).
pub(super) fn server_owner() -> Option<Owner> {
    static OWNER: OnceLock<Option<Owner>> = OnceLock::new();
    *OWNER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new("postgres").expect("no NUL in literal");
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids); getpwnam_r fills it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, `buf.len()` is the buffer's real size,
        // and the strings `pwd` points into (unused) live in `buf` only during this scope.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        assert!(
            rc == 0 && !result.is_null(),
            "running as root, but there is no `postgres` user to run PostgreSQL as \
             (getpwnam_r returned {rc}); install postgresql or run the tests as non-root"
        );
        Some(Owner {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    })
}

/// Makes `cmd` run as `owner` (no-op for `None`). std drops supplementary groups too.
pub(super) fn run_as(cmd: &mut Command, owner: Option<Owner>) {
    if let Some(owner) = owner {
        cmd.uid(owner.uid).gid(owner.gid);
    }
}

/// The cached `initdb` template for this PostgreSQL major and euid, built on first use.
///
/// Built in a fresh temp dir next to its final place and renamed in atomically, so a
/// template that exists is complete; when concurrent tests race, the loser's copy is deleted
/// and the winner's used.
pub(super) fn pg_template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let install = pg_install();
        let owner = server_owner();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let tmp = std::env::temp_dir();
        let template = tmp.join(format!("nsready-pg-template-{}-{euid}", install.major));
        if template.join("PG_VERSION").is_file() {
            return template;
        }
        let build = tempfile::Builder::new()
            .prefix(".nsready-pg-template-build-")
            .tempdir_in(&tmp)
            .unwrap_or_else(|e| panic!("create temp dir in {}: {e}", tmp.display()));
        chown_tree(build.path(), owner);
        let data = build.path().join("data");
        let log = build.path().join("initdb.log");
        let initdb = install.bin.join("initdb");
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .current_dir(build.path())
            .stdin(Stdio::null());
        run_as(&mut cmd, owner);
        redirect_output(&mut cmd, &log);
        let mut child =
            spawn_tied(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", initdb.display()));
        match wait_deadline(&mut child, INITDB_TIMEOUT) {
            Ok(Some(status)) if status.success() => {}
            other => {
                let _ = kill_and_reap(&mut child);
                panic!(
                    "initdb for the PostgreSQL template failed ({other:?}):\n{}",
                    log_tail(&log, LOG_TAIL_LINES)
                );
            }
        }
        if let Err(e) = fs::rename(&data, &template) {
            // Lost the race: another process renamed its template in first. Ours is
            // deleted with `build`.
            assert!(
                template.join("PG_VERSION").is_file(),
                "rename {} -> {}: {e}",
                data.display(),
                template.display()
            );
        }
        template
    })
}

/// Chowns `path` and everything under it (not following symlinks) to `owner`.
pub(super) fn chown_tree(path: &Path, owner: Option<Owner>) {
    let Some(owner) = owner else { return };
    lchown(path, Some(owner.uid), Some(owner.gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    let is_dir = fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .is_dir();
    if is_dir {
        for entry in fs::read_dir(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())) {
            let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            chown_tree(&entry.path(), Some(owner));
        }
    }
}

/// SIGKILLs a postmaster and its children (a whole-server crash) and reaps them all.
///
/// The postmaster is stopped first so it cannot fork, or reap, while its children are
/// collected: their PIDs stay valid. Backends call `setsid`, so a process-group kill would
/// miss them; `/proc` is scanned. Once the postmaster is gone its dead children are
/// reparented to us (we are a child subreaper, see [`spawn_tied`]) and reaped here, so no
/// zombies are left even where PID 1 does not reap orphans.
pub(super) fn kill_cluster(postmaster: &mut Child) -> io::Result<()> {
    if postmaster.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = postmaster.id() as libc::pid_t;
    // SAFETY: plain syscall; `pid` is our unreaped child (checked above), so not reused.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let children = child_pids(pid);
    for &child in &children {
        // SAFETY: plain syscall; the children stay alive or zombies, never reaped and
        // reused, while their parent is stopped.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    kill_and_reap(postmaster)?;
    reap_orphans(&children);
    Ok(())
}

/// Reaps `pids`, orphans reparented to us, waiting up to [`REAP_TIMEOUT`] for them to die.
/// PIDs that are not our children (no subreaper) are skipped: `init` reaps them.
pub(super) fn reap_orphans(pids: &[libc::pid_t]) {
    let deadline = Instant::now() + REAP_TIMEOUT;
    let mut left = pids.to_vec();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&pid| {
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer; WNOHANG never blocks. `pid` is one of
            // our children or not (ECHILD), never someone else's reused PID: it was not
            // reaped since it was listed.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            rc == 0 // Our child, still dying: try again.
        });
        if !left.is_empty() {
            thread::sleep(POLL);
        }
    }
}

/// PIDs whose parent is `parent`, from `/proc/<pid>/stat`.
pub(super) fn child_pids(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<libc::pid_t>().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces and parens; skip to the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let ppid = rest
                .split_whitespace()
                .nth(1)?
                .parse::<libc::pid_t>()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Removes the System V shared memory segment named in a dead postmaster's `postmaster.pid`,
/// if it is still there, was created by that postmaster and nobody is attached.
pub(super) fn remove_stale_shared_memory(data_dir: &Path) {
    let Ok(lock_file) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let lines: Vec<&str> = lock_file.lines().collect();
    let Some(pid) = lines
        .first()
        .and_then(|l| l.trim().parse::<libc::pid_t>().ok())
    else {
        return;
    };
    // Line 7: "<key> <shmid>".
    let mut ids = lines.get(6).into_iter().flat_map(|l| l.split_whitespace());
    let (Some(Ok(key)), Some(Ok(shmid))) = (
        ids.next().map(str::parse::<libc::key_t>),
        ids.next().map(str::parse::<libc::c_int>),
    ) else {
        return;
    };
    // SAFETY: all-zero is a valid `shmid_ds`; shmctl(IPC_STAT) only writes into it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable `shmid_ds`.
    if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } != 0 {
        return; // Already gone.
    }
    if ds.shm_perm.__key == key && ds.shm_cpid == pid && ds.shm_nattch == 0 {
        // SAFETY: IPC_RMID ignores the buffer argument.
        unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
    }
}
