//! Real servers for integration tests: a throwaway `nats-server` with JetStream (alone, or
//! three of them clustered through routes) and a throwaway PostgreSQL cluster, each on a
//! free loopback port with its own temp dir.
//!
//! Tests run under `cargo nextest` (one process per test), so every test starts its own
//! servers and owns them; dropping a fixture stops its server and deletes its files.
//!
//! # Lifetime and abrupt test death
//!
//! Every child is spawned with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it when the
//! test process dies (panic=abort, timeout kill, Ctrl-C), even though statics are never
//! dropped. The parent-death signal fires when the *thread* that forked the child exits, not
//! the process, and libtest runs each test on a short-lived thread; so all children are
//! forked by one dedicated spawner thread that lives as long as the process (see
//! [`spawn_tied`]). On abrupt death the temp dirs stay behind in the system temp dir.
//!
//! # Root
//!
//! `initdb` and `postgres` refuse to run as root. When the test runs with euid 0 they run as
//! the `postgres` system user (set with `CommandExt::{uid, gid}`, so the child PID *is* the
//! server, with no `su` wrapper) and their directories are chowned to that user.
//!
//! # Binaries
//!
//! - `nats-server`: `$NATS_SERVER`, else `PATH`, else `/usr/sbin`, `/usr/bin`,
//!   `/usr/local/bin` (Debian installs it in `/usr/sbin`).
//! - PostgreSQL server binaries: `$PG_BIN`, else the highest `/usr/lib/postgresql/*/bin`.
//!
//! `.ci/run` installs both on a fresh Debian machine.
//!
//! # Blocking
//!
//! Every method blocks the calling thread while it waits (all waits poll against a deadline).
//! From an async test, use a multi-threaded runtime or `spawn_blocking` when the application
//! under test must keep running meanwhile (e.g. around `start_again`).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, lchown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Interval between readiness or exit polls.
const POLL: Duration = Duration::from_millis(20);
/// How long `nats-server` may take to accept clients with JetStream enabled.
const NATS_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `NatsServer::stop` waits after SIGTERM before SIGKILL.
const NATS_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long `postgres` may take to accept queries (includes crash recovery after `kill`).
const PG_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `Postgres::stop` waits after SIGINT (fast shutdown) before SIGKILL.
const PG_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long `initdb` may take to build the template cluster.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a helper command (`cp`, `psql`, `pg_isready`) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Drop` waits for a graceful exit before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the kernel to let us reap a SIGKILLed child.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports a first start tries when its port was taken meanwhile.
const PORT_ATTEMPTS: u32 = 5;
/// Log lines quoted in panic messages.
const LOG_TAIL_LINES: usize = 60;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// Binds `127.0.0.1:0`, reads the port and closes the listener; another process may take the
/// port before the caller binds it. The server fixtures retry with a new port when that
/// happens on their first start.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

// ---------------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------------

/// A `nats-server -js` on 127.0.0.1, with its JetStream store in a temp dir.
///
/// All methods take `&self`, so the fixture can be shared (e.g. in an `Arc`) between the test
/// and a task that kills the server mid-run. Dropping it SIGKILLs the server and deletes the
/// temp dir (store and log).
pub struct NatsServer {
    port: u16,
    name: String,
    extra_args: Vec<String>,
    store_dir: PathBuf,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
    // Last field: removed after `Drop::drop` has killed the server.
    dir: TempDir,
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
        if let Some(child) = running_child(&mut guard) {
            if let Err(e) = terminate(child, libc::SIGTERM, NATS_STOP_GRACE) {
                panic!("stopping nats-server: {e}\n{}", self.log_for_panic());
            }
        }
    }

    /// Abrupt stop: SIGKILL, then waits for the process to be gone. No-op when not running.
    pub fn kill(&self) {
        let mut guard = lock(&self.child);
        if let Some(child) = running_child(&mut guard) {
            if let Err(e) = kill_and_reap(child) {
                panic!("killing nats-server: {e}\n{}", self.log_for_panic());
            }
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
    fn launch(&self) -> Result<(), Launch> {
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

    fn log_for_panic(&self) -> String {
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
fn nats_info(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(250)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.starts_with("INFO ").then_some(line)
}

/// Path of the `nats-server` binary; panics with install advice when it is missing.
fn nats_server_bin() -> &'static Path {
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

// ---------------------------------------------------------------------------------------------
// NATS cluster
// ---------------------------------------------------------------------------------------------

/// Nodes in a [`NatsCluster`]: the smallest cluster that survives losing one (quorum 2).
const CLUSTER_NODES: usize = 3;
/// How long a cluster may take to elect a JetStream meta leader, or a restarted node to
/// catch up.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Three JetStream-enabled `nats-server`s on 127.0.0.1, clustered through routes.
///
/// Each node is a [`NatsServer`] (own client port, store dir, log and unique server name,
/// the same spawn and cleanup), started with `--cluster`, `--cluster_name`, `--routes` to the
/// two others and a monitoring port (`-m`) that the fixture polls for cluster state.
/// [`NatsCluster::start`] returns once every node answers `/healthz` and agrees on a
/// JetStream meta leader, so a replicas-3 stream can be created at once.
///
/// All methods take `&self` and block, like [`NatsServer`]'s. Dropping it kills every node
/// and deletes their dirs.
pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
    monitor_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts three clustered nodes and waits until the cluster has a JetStream meta leader.
    /// Panics with the nodes' log tails on failure.
    pub fn start() -> NatsCluster {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "nsready-cluster-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // Route and monitoring ports, held open together so that they are distinct. Another
        // process may still take one before its node binds it; that node then fails to start
        // and the test panics with its log (a rare race, as for any fixed-port setup).
        let listeners: Vec<TcpListener> = (0..2 * CLUSTER_NODES)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("listener address").port())
            .collect();
        drop(listeners);
        let (route_ports, monitor_ports) = ports.split_at(CLUSTER_NODES);
        let route_url = |p: &u16| format!("nats://127.0.0.1:{p}");
        // Nodes start one after the other: each is ready (accepts clients) before its peers
        // exist, and keeps dialling the missing routes until they answer.
        let nodes = (0..CLUSTER_NODES)
            .map(|i| {
                let routes: Vec<String> = route_ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, p)| route_url(p))
                    .collect();
                let args = [
                    "--cluster".to_string(),
                    route_url(&route_ports[i]),
                    "--cluster_name".to_string(),
                    name.clone(),
                    "--routes".to_string(),
                    routes.join(","),
                    "-m".to_string(),
                    monitor_ports[i].to_string(),
                ];
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                NatsServer::start_with_args(&args)
            })
            .collect();
        let cluster = NatsCluster {
            name,
            nodes,
            monitor_ports: monitor_ports.to_vec(),
        };
        cluster.wait_until_formed();
        cluster
    }

    /// The cluster name (`--cluster_name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of nodes (3).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`, for its port, name, log or store dir.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Every node's client URL, comma-separated: `nats://127.0.0.1:<p0>,nats://...`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node called `server_name` (as JetStream names leaders).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == server_name)
    }

    /// SIGKILLs node `i` (no goodbye to its peers).
    pub fn kill(&self, i: usize) {
        self.nodes[i].kill();
    }

    /// Stops node `i` gracefully (SIGTERM: it hands off its leaderships first).
    pub fn stop(&self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again (same ports, store and name) and waits until it has rejoined:
    /// it answers `/healthz` (meta leader known, its streams and consumers caught up).
    pub fn start_again(&self, i: usize) {
        self.nodes[i].start_again();
        self.wait_until_formed();
    }

    /// The node that leads `stream` (a replicated stream), as the running nodes report it
    /// on `/jsz`; `None` while they know no leader, disagree, or name a node that is down
    /// (the report of a leader that was just killed, before the election).
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.leader(stream, None)
    }

    /// The node that leads `consumer` of `stream`; `None` as for [`Self::stream_leader`].
    /// A consumer has its own Raft group, so its leader may be another node.
    pub fn consumer_leader(&self, stream: &str, consumer: &str) -> Option<usize> {
        self.leader(stream, Some(consumer))
    }

    fn leader(&self, stream: &str, consumer: Option<&str>) -> Option<usize> {
        let mut leader = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            let (_, body) = http_get(
                self.monitor_ports[i],
                "/jsz?accounts=true&streams=true&consumers=true",
            )?;
            let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
            let stream = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == stream)?;
            let asset = match consumer {
                None => stream,
                Some(consumer) => stream["consumer_detail"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"] == consumer)?,
            };
            let named = asset["cluster"]["leader"]
                .as_str()
                .and_then(|name| self.index_of(name))?;
            match leader {
                None => leader = Some(named),
                Some(l) if l == named => {}
                Some(_) => return None,
            }
        }
        leader.filter(|&l| self.nodes[l].is_running())
    }

    /// Polls until every running node answers `/healthz` with ok and names a meta leader.
    fn wait_until_formed(&self) {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            let formed = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_running())
                .all(|(i, _)| self.node_is_current(i));
            if formed {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "NATS cluster {} not formed within {CLUSTER_READY_TIMEOUT:?}\n{}",
                    self.name,
                    self.logs_for_panic()
                );
            }
            thread::sleep(POLL * 5);
        }
    }

    /// Node `i` is healthy (JetStream current) and knows the meta leader.
    fn node_is_current(&self, i: usize) -> bool {
        let port = self.monitor_ports[i];
        let healthy = http_get(port, "/healthz")
            .is_some_and(|(status, body)| status == 200 && body.contains("\"ok\""));
        healthy
            && http_get(port, "/jsz").is_some_and(|(_, body)| {
                serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
                    v["meta_cluster"]["leader"]
                        .as_str()
                        .is_some_and(|l| !l.is_empty())
                })
            })
    }

    /// The log tails of every node, for panic messages.
    pub fn logs_for_panic(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::log_for_panic)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port`; `(status, body)`, or `None` when the server
/// does not answer (within a couple of seconds).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(250)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

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
    port: u16,
    install: &'static PgInstall,
    owner: Option<Owner>,
    data_dir: PathBuf,
    sock_dir: PathBuf,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
    // Last field: removed after `Drop::drop` has stopped the server.
    dir: TempDir,
}

impl Postgres {
    /// Starts a fresh cluster on a free port and waits until it accepts queries.
    ///
    /// Panics with the server log tail on failure.
    pub fn start() -> Postgres {
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
        if let Some(child) = running_child(&mut guard) {
            if let Err(e) = signal_and_wait(child, libc::SIGINT, PG_STOP_GRACE)
                .and_then(|stopped| if stopped { Ok(()) } else { kill_cluster(child) })
            {
                panic!("stopping postgres: {e}\n{}", self.log_for_panic());
            }
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
        if let Some(child) = running_child(&mut guard) {
            if let Err(e) = kill_cluster(child) {
                panic!("killing postgres: {e}\n{}", self.log_for_panic());
            }
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
    fn launch(&self) -> Result<(), Launch> {
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
    fn is_ready(&self, pid: u32) -> bool {
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

    fn log_for_panic(&self) -> String {
        format!(
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
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

/// A PostgreSQL installation: the server binary dir and its major version.
struct PgInstall {
    bin: PathBuf,
    major: String,
}

impl PgInstall {
    /// A client tool from the server bin dir, else from `PATH`.
    fn tool(&self, name: &str) -> PathBuf {
        let path = self.bin.join(name);
        if path.is_file() {
            path
        } else {
            PathBuf::from(name)
        }
    }
}

/// `$PG_BIN`, else the highest-versioned `/usr/lib/postgresql/*/bin` holding `postgres`.
fn pg_install() -> &'static PgInstall {
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
struct Owner {
    uid: u32,
    gid: u32,
}

/// `Some(postgres user)` when running as root (the server refuses root), else `None` (run as
/// ourselves).
fn server_owner() -> Option<Owner> {
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
fn run_as(cmd: &mut Command, owner: Option<Owner>) {
    if let Some(owner) = owner {
        cmd.uid(owner.uid).gid(owner.gid);
    }
}

/// The cached `initdb` template for this PostgreSQL major and euid, built on first use.
///
/// Built in a fresh temp dir next to its final place and renamed in atomically, so a
/// template that exists is complete; when concurrent tests race, the loser's copy is deleted
/// and the winner's used.
fn pg_template() -> &'static Path {
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
fn chown_tree(path: &Path, owner: Option<Owner>) {
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
fn kill_cluster(postmaster: &mut Child) -> io::Result<()> {
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
fn reap_orphans(pids: &[libc::pid_t]) {
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
fn child_pids(parent: libc::pid_t) -> Vec<libc::pid_t> {
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
fn remove_stale_shared_memory(data_dir: &Path) {
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

// ---------------------------------------------------------------------------------------------
// Processes, logs and temp dirs
// ---------------------------------------------------------------------------------------------

/// Why a launch failed; both carry a message with the log.
enum Launch {
    /// The port was taken (first start retries with a new port).
    AddrInUse(String),
    /// Anything else.
    Failed(String),
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel SIGKILLs it when the test process dies.
///
/// `PR_SET_PDEATHSIG` fires when the thread that forked the child exits, and libtest runs
/// each test on its own thread, which ends before the process does (and a fixture kept in a
/// static would outlive it). So every child is forked by one spawner thread that is never
/// joined and lives until the process exits. The signal survives `exec` of a normal binary,
/// and is set in `pre_exec`, which std runs after the uid/gid switch (that switch would
/// otherwise clear it).
///
/// On first use this also makes the test process a child subreaper (`PR_SET_CHILD_SUBREAPER`),
/// see [`kill_cluster`].
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        // Orphans of our servers (backends of a killed postmaster) become our children, so
        // `kill_cluster` can reap them instead of leaving zombies to a PID 1 that may not.
        // Best effort: without it, `init` inherits them as usual.
        // SAFETY: plain syscall with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("it-server-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the server spawner thread");
        tx
    });
    // The process, not the thread: getppid() in the child returns the parent's PID.
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (prctl, getppid); it does not allocate or take locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .expect("the server spawner thread is gone");
    reply_rx.recv().expect("the server spawner thread is gone")
}

/// Runs a short helper command to completion with output captured, killing it after
/// [`COMMAND_TIMEOUT`] (then panics naming `what`).
fn run_output(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_tied(cmd).unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = match wait_deadline(&mut child, COMMAND_TIMEOUT) {
        Ok(Some(status)) => status,
        other => {
            let _ = kill_and_reap(&mut child);
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?} ({other:?})");
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Reads a pipe to its end on a helper thread (so a full pipe cannot block the child).
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Polls `child` until it exits (`Some(status)`) or `timeout` passes (`None`).
fn wait_deadline(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// Sends `signal` to a running child and waits up to `grace` for it to exit; `Ok(true)` if it
/// did.
fn signal_and_wait(child: &mut Child, signal: libc::c_int, grace: Duration) -> io::Result<bool> {
    if child.try_wait()?.is_some() {
        return Ok(true);
    }
    // SAFETY: the child is not reaped yet (checked above), so its PID is still ours.
    if unsafe { libc::kill(child.id() as libc::pid_t, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wait_deadline(child, grace)?.is_some())
}

/// `signal`, then up to `grace` to exit, then SIGKILL.
fn terminate(child: &mut Child, signal: libc::c_int, grace: Duration) -> io::Result<()> {
    if signal_and_wait(child, signal, grace)? {
        Ok(())
    } else {
        kill_and_reap(child)
    }
}

/// SIGKILLs a child and waits (bounded) until it is reaped.
fn kill_and_reap(child: &mut Child) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    child.kill()?;
    match wait_deadline(child, REAP_TIMEOUT)? {
        Some(_) => Ok(()),
        None => Err(io::Error::other(format!(
            "PID {} still not reaped {REAP_TIMEOUT:?} after SIGKILL",
            child.id()
        ))),
    }
}

/// The child in `slot` if it has not exited (an exited one is reaped and dropped).
fn running_child<'a>(slot: &'a mut MutexGuard<'_, Option<Child>>) -> Option<&'a mut Child> {
    let exited = match slot.as_mut() {
        Some(child) => !matches!(child.try_wait(), Ok(None)),
        None => return None,
    };
    if exited {
        **slot = None;
    }
    slot.as_mut()
}

/// Locks a fixture mutex, ignoring poisoning (a panicking test must still clean up).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends the command's stdout and stderr to the end of `log`.
fn redirect_output(cmd: &mut Command, log: &Path) {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
    let second = file
        .try_clone()
        .unwrap_or_else(|e| panic!("dup log {}: {e}", log.display()));
    cmd.stdout(file).stderr(second);
}

/// Appends a marker line to `log` and returns the offset where the new section starts.
fn begin_log_section(log: &Path, what: &str) -> u64 {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
    let start = file.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = writeln!(file, "==== test harness: {what} ====");
    start
}

/// The log from byte `offset` on (lossy UTF-8).
fn log_since(log: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(log) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The last `lines` lines of `log` (lossy UTF-8), or a note that it cannot be read.
fn log_tail(log: &Path, lines: usize) -> String {
    match fs::read(log) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", log.display()),
    }
}

/// A new temp dir in the system temp dir, named `<prefix>XXXXXX`.
fn temp_dir_with_prefix(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("create a temp dir: {e}"))
}
