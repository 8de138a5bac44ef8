//! Test servers: a throwaway PostgreSQL cluster (`Postgres`).

use super::*;

/// A throwaway PostgreSQL cluster on 127.0.0.1 with `trust` auth for user `postgres`.
///
/// The cluster is a copy of an `initdb` template cached in the system temp dir
/// (`nsready-pg-template-<major>-<euid>`, built once, then reused by every test and run).
///
/// Runs with `fsync=off`: every commit is still `write()`n to the kernel before it returns,
/// so a killed server ([`Postgres::kill`]) loses nothing committed; only an OS crash could.
/// `synchronous_commit=off` is deliberately *not* used: it acknowledges commits still in
/// PostgreSQL's own WAL buffers, so a kill loses the last ~600 ms of commits, which would
/// make crash tests of exactly-once delivery fail for reasons no production setup has.
/// `full_page_writes` stays on: a SIGKILL can interrupt an 8 kB page write at a 4 kB
/// boundary, and full-page images are what repair such a torn page.
///
/// All methods take `&self`.
/// Dropping it shuts the server down (immediate shutdown, SIGKILL if that hangs) and deletes
/// the data dir.
pub struct Postgres {
    pub(super) port: u16,
    pub(super) install: &'static PgInstall,
    pub(super) owner: Option<Owner>,
    pub(super) data_dir: PathBuf,
    pub(super) sock_dir: PathBuf,
    pub(super) log_path: PathBuf,
    pub(super) child: Mutex<Option<Child>>,
    /// Extra `-c name=value` settings of [`Postgres::start_with`], kept across restarts.
    pub(super) settings: Vec<String>,
    // Last field: removed after `Drop::drop` has stopped the server.
    pub(super) dir: TempDir,
}

impl Postgres {
    /// Starts a fresh cluster on a free port and waits until it accepts queries.
    ///
    /// Panics with the server log tail on failure.
    pub fn start() -> Postgres {
        Self::start_with(PgOptions::default())
    }

    /// Like [`Postgres::start`], with TLS on and/or a replaced `pg_hba.conf` ([`PgOptions`]).
    pub fn start_with(opts: PgOptions) -> Postgres {
        let install = pg_install();
        let owner = server_owner();
        let template = pg_template();
        let dir = temp_dir_with_prefix("nsready-pg-");
        let data_dir = dir.path().join("data");
        let sock_dir = dir.path().join("sock");
        fs::create_dir(&sock_dir)
            .unwrap_or_else(|e| panic!("create socket dir {}: {e}", sock_dir.display()));
        fs::set_permissions(&sock_dir, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", sock_dir.display()));
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(template).arg(&data_dir);
        let out = run_output(cp, "cp -a <template> <data dir>");
        assert!(
            out.status.success(),
            "copying the PostgreSQL template {} to {} failed ({}): {}",
            template.display(),
            data_dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut settings = Vec::new();
        if let Some((cert, key)) = &opts.tls {
            let cert_path = dir.path().join("server.crt");
            let key_path = dir.path().join("server.key");
            fs::write(&cert_path, cert).expect("write server.crt");
            fs::write(&key_path, key).expect("write server.key");
            // PostgreSQL refuses a key readable by others.
            fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod key");
            settings.extend([
                "ssl=on".to_string(),
                format!("ssl_cert_file={}", cert_path.display()),
                format!("ssl_key_file={}", key_path.display()),
            ]);
        }
        if let Some(hba) = &opts.hba {
            fs::write(data_dir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
        // The temp dir itself too: it is 0700, and the server must reach `data` and `sock`.
        chown_tree(dir.path(), owner);

        let mut pg = Postgres {
            port: 0,
            install,
            owner,
            data_dir,
            sock_dir,
            log_path: dir.path().join("postgres.log"),
            child: Mutex::new(None),
            settings,
            dir,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            pg.port = free_port();
            match pg.launch() {
                Ok(()) => return pg,
                Err(Launch::AddrInUse(_)) if attempt < PORT_ATTEMPTS => continue,
                Err(Launch::AddrInUse(msg) | Launch::Failed(msg)) => panic!("{msg}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The TCP port; unchanged by [`Postgres::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>` (no password: `trust` auth).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL. The name is quoted, not URL-encoded in
    /// the result, so keep it to `[A-Za-z0-9_]`.
    pub fn create_database(&self, name: &str) -> String {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        );
        self.url(name)
    }

    /// Runs `sql` with `psql -At` in database `db` and returns stdout, trimmed: one row per
    /// line, columns separated by `|`. DDL prints nothing (`-q`). Panics, with stderr, when
    /// `psql` fails (`ON_ERROR_STOP` is on). Several `;`-separated statements run in one
    /// transaction and only the last result is printed.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(self.install.tool("psql"));
        cmd.args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(self.port.to_string())
        .args(["-U", "postgres", "-d", db, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10");
        let out = run_output(cmd, "psql");
        if !out.status.success() {
            panic!(
                "psql failed ({}) on port {} db {db:?} running:\n{sql}\nstderr:\n{}",
                out.status,
                self.port,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The data directory; kept across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file receiving the server's stdout and stderr, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// The postmaster's PID, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let mut guard = lock(&self.child);
        running_child(&mut guard).map(|child| child.id())
    }

    /// Whether the postmaster process is alive (it may not be ready yet or any more).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Fast shutdown: SIGINT (rolls back open transactions, checkpoints), then waits; after
    /// 10 s, kills the server as [`Postgres::kill`] does. No-op when not running.
    pub fn stop(&self) {
        let mut guard = lock(&self.child);
        if let Some(child) = running_child(&mut guard)
            && let Err(e) = signal_and_wait(child, libc::SIGINT, PG_STOP_GRACE)
                .and_then(|stopped| if stopped { Ok(()) } else { kill_cluster(child) })
        {
            panic!("stopping postgres: {e}\n{}", self.log_for_panic());
        }
    }

    /// Crash: SIGKILLs the postmaster and every backend it has, then waits for the
    /// postmaster to be gone. Shared memory and `postmaster.pid` stay behind, as after a real
    /// crash; [`Postgres::start_again`] recovers from them. No-op when not running.
    ///
    /// The backends are killed too (the postmaster is SIGSTOPped first, so it cannot fork
    /// more), so open connections fail at once and nothing keeps writing to the data dir.
    pub fn kill(&self) {
        let mut guard = lock(&self.child);
        if let Some(child) = running_child(&mut guard)
            && let Err(e) = kill_cluster(child)
        {
            panic!("killing postgres: {e}\n{}", self.log_for_panic());
        }
    }

    /// Starts the server again on the same port with the same data dir, and waits until it
    /// accepts queries (after crash recovery if it was killed).
    ///
    /// Panics if it is still running or fails to come back.
    pub fn start_again(&self) {
        assert!(
            !self.is_running(),
            "Postgres::start_again: postgres on port {} is still running; stop() or kill() it first",
            self.port
        );
        if let Err(Launch::AddrInUse(msg) | Launch::Failed(msg)) = self.launch() {
            panic!("{msg}");
        }
    }

    /// Spawns the postmaster and waits until it is ready, or has failed, or the deadline
    /// passed. Retries while a killed predecessor's backends still hold the shared memory.
    pub(super) fn launch(&self) -> Result<(), Launch> {
        let bin = self.install.bin.join("postgres");
        let deadline = Instant::now() + PG_READY_TIMEOUT;
        'spawn: loop {
            let log_start =
                begin_log_section(&self.log_path, &format!("starting {}", bin.display()));
            let mut cmd = Command::new(&bin);
            cmd.arg("-D")
                .arg(&self.data_dir)
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-k")
                .arg(&self.sock_dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ])
                .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
                .current_dir(self.dir.path())
                .stdin(Stdio::null());
            run_as(&mut cmd, self.owner);
            redirect_output(&mut cmd, &self.log_path);

            let mut guard = lock(&self.child);
            let child = spawn_tied(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let child = guard.insert(child);
            loop {
                if let Some(status) = child.try_wait().expect("try_wait on postgres") {
                    let log = log_since(&self.log_path, log_start);
                    let msg = format!(
                        "postgres on port {} exited during startup ({status}); log:\n{log}",
                        self.port
                    );
                    if log.contains("Address already in use") {
                        return Err(Launch::AddrInUse(msg));
                    }
                    // A killed predecessor's backends may still be exiting and attached to
                    // the old shared memory segment; postgres refuses until they are gone.
                    let predecessor_alive =
                        log.contains("is still in use") || log.contains("already exists");
                    if predecessor_alive && Instant::now() < deadline {
                        drop(guard);
                        thread::sleep(Duration::from_millis(100));
                        continue 'spawn;
                    }
                    return Err(Launch::Failed(msg));
                }
                if self.is_ready(child.id()) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let _ = kill_cluster(child);
                    return Err(Launch::Failed(format!(
                        "postgres on port {} not ready within {PG_READY_TIMEOUT:?}\n{}",
                        self.port,
                        self.log_for_panic()
                    )));
                }
                thread::sleep(POLL);
            }
        }
    }

    /// Ready: `postmaster.pid` names our process with status `ready` (so the port is ours,
    /// not another test's), and `pg_isready` over TCP agrees.
    pub(super) fn is_ready(&self, pid: u32) -> bool {
        let Ok(lock_file) = fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = lock_file.lines().collect();
        // Line 1: postmaster PID; line 8: status (`starting`, `ready`, `stopping`, ...).
        let ours = lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str());
        if !ours || lines.get(7).map(|l| l.trim()) != Some("ready") {
            return false;
        }
        let mut cmd = Command::new(self.install.tool("pg_isready"));
        cmd.args(["-q", "-t", "2", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres"]);
        run_output(cmd, "pg_isready").status.success()
    }

    pub(super) fn log_for_panic(&self) -> String {
        format!(
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }
}

/// Options of [`Postgres::start_with`].
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// (certificate chain PEM, private key PEM): the server runs with `ssl=on` and them.
    pub tls: Option<(String, String)>,
    /// Replaces `pg_hba.conf` (keep `host all postgres 127.0.0.1/32 trust` for the
    /// harness's own `psql` and readiness checks).
    pub hba: Option<String>,
}

impl PgOptions {
    /// `pg_hba.conf` with trust for the `postgres` superuser (the harness) and
    /// `scram-sha-256` password authentication for every other user over TCP.
    pub fn password_auth() -> String {
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n"
            .to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut guard = lock(&self.child);
        if let Some(child) = running_child(&mut guard) {
            // SIGQUIT = immediate shutdown: the data is thrown away anyway, and the
            // postmaster still stops its backends and removes its shared memory.
            let stopped = signal_and_wait(child, libc::SIGQUIT, DROP_GRACE).unwrap_or(false);
            if !stopped {
                let _ = kill_cluster(child);
            }
        }
        drop(guard);
        // After a kill, nobody removes the System V segment; do it so runs don't leak them.
        remove_stale_shared_memory(&self.data_dir);
        // `dir` (data, sockets, log) is removed when the fields drop, after this.
    }
}
