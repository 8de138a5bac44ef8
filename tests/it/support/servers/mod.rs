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

mod certs;
mod cluster;
mod nats;
mod pg_install;
mod postgres;
mod process;
mod timescale;

pub use certs::{Issued, TestCa};
pub use cluster::NatsCluster;
pub use nats::NatsServer;
use pg_install::*;
pub use postgres::{PgOptions, Postgres};
use process::*;
pub use timescale::assert_timescale_installed;
