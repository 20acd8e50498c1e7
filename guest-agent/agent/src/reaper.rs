//! Reaping: the agent is PID 1 (or a subreaper beside the image's init), so every orphan of
//! the sandbox ends up as its child. On each `SIGCHLD`, and every [`SWEEP`] as a safety net,
//! all exited children are collected; exec sessions get their status through the table in
//! [`crate::exec::spawn`].

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::exec::spawn::reap_all;
use crate::log_warn;

pub const SWEEP: Duration = Duration::from_millis(500);

/// Starts the reaper on the current runtime. Call before the first child is spawned.
pub fn start() {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            log_warn!("cannot watch SIGCHLD ({e}); reaping every {SWEEP:?} only");
            None
        }
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP);
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    tokio::select! {
                        _ = s.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            reap_all();
        }
    });
}

/// Makes this process a child subreaper (used beside a handed-off init).
pub fn become_subreaper() {
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}
