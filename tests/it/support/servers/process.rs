//! Test servers: spawning tied child processes, waiting, signalling, logs and temp dirs.

use super::*;

/// Why a launch failed; both carry a message with the log.
pub(super) enum Launch {
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
pub(super) fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
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
pub(super) fn run_output(mut cmd: Command, what: &str) -> Output {
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
pub(super) fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Polls `child` until it exits (`Some(status)`) or `timeout` passes (`None`).
pub(super) fn wait_deadline(
    child: &mut Child,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
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
pub(super) fn signal_and_wait(
    child: &mut Child,
    signal: libc::c_int,
    grace: Duration,
) -> io::Result<bool> {
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
pub(super) fn terminate(child: &mut Child, signal: libc::c_int, grace: Duration) -> io::Result<()> {
    if signal_and_wait(child, signal, grace)? {
        Ok(())
    } else {
        kill_and_reap(child)
    }
}

/// SIGKILLs a child and waits (bounded) until it is reaped.
pub(super) fn kill_and_reap(child: &mut Child) -> io::Result<()> {
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
pub(super) fn running_child<'a>(
    slot: &'a mut MutexGuard<'_, Option<Child>>,
) -> Option<&'a mut Child> {
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
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends the command's stdout and stderr to the end of `log`.
pub(super) fn redirect_output(cmd: &mut Command, log: &Path) {
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
pub(super) fn begin_log_section(log: &Path, what: &str) -> u64 {
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
pub(super) fn log_since(log: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(log) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The last `lines` lines of `log` (lossy UTF-8), or a note that it cannot be read.
pub(super) fn log_tail(log: &Path, lines: usize) -> String {
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
pub(super) fn temp_dir_with_prefix(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("create a temp dir: {e}"))
}
