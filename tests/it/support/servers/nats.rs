//! Test servers: one `nats-server -js` (`NatsServer`).

use super::*;

/// A `nats-server -js` on 127.0.0.1, with its JetStream store in a temp dir.
///
/// All methods take `&self`, so the fixture can be shared (e.g. in an `Arc`) between the test
/// and a task that kills the server mid-run. Dropping it SIGKILLs the server and deletes the
/// temp dir (store and log).
pub struct NatsServer {
    pub(super) port: u16,
    pub(super) name: String,
    pub(super) extra_args: Vec<String>,
    pub(super) store_dir: PathBuf,
    pub(super) log_path: PathBuf,
    pub(super) child: Mutex<Option<Child>>,
    // Last field: removed after `Drop::drop` has killed the server.
    pub(super) dir: TempDir,
}

impl NatsServer {
    /// Starts a JetStream-enabled server on a free port and waits until it is ready.
    ///
    /// Ready means a TCP client receives an `INFO` line with `"jetstream":true` from this very
    /// server (checked by its unique `server_name`). Panics with the log tail on failure.
    pub fn start() -> NatsServer {
        Self::start_with_args(&[])
    }

    /// Like [`NatsServer::start`], with extra command-line arguments appended after the
    /// harness's own (`-js -a 127.0.0.1 -p <port> -sd <dir> -n <name>`), e.g.
    /// `&["-c", "/path/to/server.conf"]`. They are reused by [`NatsServer::start_again`].
    pub fn start_with_args(extra: &[&str]) -> NatsServer {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = temp_dir_with_prefix("nsready-nats-");
        let store_dir = dir.path().join("store");
        fs::create_dir(&store_dir)
            .unwrap_or_else(|e| panic!("create NATS store dir {}: {e}", store_dir.display()));
        let name = format!(
            "nsready-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut server = NatsServer {
            port: 0,
            name,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            store_dir,
            log_path: dir.path().join("nats-server.log"),
            child: Mutex::new(None),
            dir,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                Err(Launch::AddrInUse(_)) if attempt < PORT_ATTEMPTS => continue,
                Err(Launch::AddrInUse(msg) | Launch::Failed(msg)) => panic!("{msg}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port; unchanged by [`NatsServer::start_again`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server name (`-n`), unique per fixture; it appears as `server_name` in `INFO`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JetStream store dir (`-sd`); kept across restarts.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The fixture's temp dir (holds the store and the log); a place for config files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file receiving the server's stdout and stderr, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// The PID of the running server, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let mut guard = lock(&self.child);
        running_child(&mut guard).map(|child| child.id())
    }

    /// Whether the server process is alive (it may not be ready yet or any more).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Graceful stop: SIGTERM, then waits; SIGKILL after 5 s. No-op when not running.
    pub fn stop(&self) {
        let mut guard = lock(&self.child);
        if let Some(child) = running_child(&mut guard)
            && let Err(e) = terminate(child, libc::SIGTERM, NATS_STOP_GRACE)
        {
            panic!("stopping nats-server: {e}\n{}", self.log_for_panic());
        }
    }

    /// Abrupt stop: SIGKILL, then waits for the process to be gone. No-op when not running.
    pub fn kill(&self) {
        let mut guard = lock(&self.child);
        if let Some(child) = running_child(&mut guard)
            && let Err(e) = kill_and_reap(child)
        {
            panic!("killing nats-server: {e}\n{}", self.log_for_panic());
        }
    }

    /// Starts the server again on the same port with the same store dir and arguments, and
    /// waits until it is ready (JetStream has recovered its streams by then).
    ///
    /// Panics if the server is still running, or fails to come back.
    pub fn start_again(&self) {
        assert!(
            !self.is_running(),
            "NatsServer::start_again: nats-server on port {} is still running; stop() or kill() it first",
            self.port
        );
        if let Err(Launch::AddrInUse(msg) | Launch::Failed(msg)) = self.launch() {
            panic!("{msg}");
        }
    }

    /// Spawns the server and waits until it is ready, or has failed, or the deadline passed.
    pub(super) fn launch(&self) -> Result<(), Launch> {
        let bin = nats_server_bin();
        let log_start = begin_log_section(&self.log_path, &format!("starting {}", bin.display()));
        let mut cmd = Command::new(bin);
        cmd.args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store_dir)
            .args(["-n", &self.name])
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        redirect_output(&mut cmd, &self.log_path);

        let mut guard = lock(&self.child);
        let child = spawn_tied(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let child = guard.insert(child);
        let deadline = Instant::now() + NATS_READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait on nats-server") {
                let log = log_since(&self.log_path, log_start);
                let msg = format!(
                    "nats-server on port {} exited during startup ({status}); log:\n{log}",
                    self.port
                );
                return Err(if log.contains("address already in use") {
                    Launch::AddrInUse(msg)
                } else {
                    Launch::Failed(msg)
                });
            }
            if let Some(info) = nats_info(self.port) {
                let ours = info.contains(&format!("\"server_name\":\"{}\"", self.name));
                if ours && info.contains("\"jetstream\":true") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let _ = kill_and_reap(child);
                return Err(Launch::Failed(format!(
                    "nats-server on port {} not ready within {NATS_READY_TIMEOUT:?}\n{}",
                    self.port,
                    self.log_for_panic()
                )));
            }
            thread::sleep(POLL);
        }
    }

    pub(super) fn log_for_panic(&self) -> String {
        format!(
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let mut guard = lock(&self.child);
        if let Some(child) = running_child(&mut guard) {
            let _ = kill_and_reap(child);
        }
        // `dir` (store and log) is removed when the fields drop, after this.
    }
}

/// Connects to `port` and returns the server's first line if it is a NATS `INFO` line.
pub(super) fn nats_info(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(250)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.starts_with("INFO ").then_some(line)
}

/// Path of the `nats-server` binary; panics with install advice when it is missing.
pub(super) fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("NATS_SERVER") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "$NATS_SERVER={} is not a file",
                path.display()
            );
            return path;
        }
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        path_dirs
            .into_iter()
            .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "nats-server not found (set $NATS_SERVER, or run .ci/run, \
                     or `apt-get install -y nats-server`)"
                )
            })
    })
}
