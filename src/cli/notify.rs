//! The edge box's service-manager hooks: systemd readiness (`Type=notify`) and SIGHUP.
//!
//! [`notify`] sends one `sd_notify` datagram (`READY=1`, `STOPPING=1`) to the socket systemd
//! names in `NOTIFY_SOCKET` (read by `config`, passed in): a plain Unix datagram, a path or
//! an abstract name (`@…`), no library needed. Not under systemd (unset): nothing is sent.
//! A failed send is logged and never stops the service: systemd then times the start out,
//! which is the visible failure. [`ignore_hangups`] keeps SIGHUP from killing the process
//! (its default action): nsready reads its settings once at start and has no log file to
//! reopen, so there is nothing to reload; the signal is logged and ignored.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use nsready::shutdown::Shutdown;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Sends `state` to the service manager when `socket` is set.
pub fn notify(socket: Option<&Path>, state: &str) {
    let Some(path) = socket else { return };
    match send(path, state) {
        Ok(()) => tracing::debug!(state, "notified the service manager"),
        Err(e) => {
            tracing::warn!(error = %e, state, "cannot notify the service manager (NOTIFY_SOCKET)")
        }
    }
}

fn send(path: &Path, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.as_os_str().as_bytes().strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// Installs the SIGHUP handler now (from here on the signal no longer terminates the
/// process, for its whole life), so a hang-up during start-up is already harmless.
pub fn hangup_handler() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler");
            None
        }
    }
}

/// Logs each SIGHUP and carries on, until the shutdown.
pub async fn ignore_hangups(mut hup: Signal, sd: Shutdown) {
    loop {
        tokio::select! {
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!(
                    "SIGHUP received and ignored: settings are read once at start \
                     (restart the service to change them)"
                );
            }
            () = sd.wait() => return,
        }
    }
}
