//! systemd notifications (`sd_notify`): READY, WATCHDOG from the loop itself, RELOADING and STOPPING.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call does nothing. A failed send is logged
//! and otherwise ignored: the service manager's absence must never stop the loop.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>], what: &str) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, what, "cannot notify the service manager");
    }
}

/// The stores are open and the policies loaded: the service is up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)], "READY");
}

/// A cycle went through: the loop is alive (not merely the process).
pub fn watchdog() {
    send(&[NotifyState::Watchdog], "WATCHDOG");
}

/// A policy reload begins (SIGHUP); `ready` follows when it is done.
pub fn reloading() {
    send(&[NotifyState::Reloading], "RELOADING");
}

/// Shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping], "STOPPING");
}
