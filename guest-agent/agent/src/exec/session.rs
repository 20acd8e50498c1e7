//! One running exec: pumps its output to the host, feeds its stdin, reports its exit.
//!
//! Output is read in chunks of at most [`CHUNK`] and each chunk waits for room in the
//! outbound queue before the next read, so a slow host makes the child block on its own full
//! pipe. After the child exits, output still arriving is forwarded; a pipe that stays silent
//! for [`DRAIN_QUIET`] after the exit (a background grandchild holding it open) is abandoned so
//! `core.exec.exited` is not delayed forever.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use ksb_protocol::codec::FLAG_TERMINAL;
use ksb_protocol::messages::{types, ExecExited, ExecOutput, ExecStdinError};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};

use super::status::exit_code;
use crate::log_debug;
use crate::out::Out;
use crate::sys::errno_name;

pub const CHUNK: usize = 64 * 1024;
pub const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// Stdin chunks queued for one child before the dispatcher waits (see docs: backpressure).
pub const STDIN_QUEUE: usize = 64;

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a valid buffer from a descriptor we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: &OwnedFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: writing from a valid buffer to a descriptor we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr() as *const libc::c_void, buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Forwards one output descriptor as `t` frames until EOF (or silence after the exit).
async fn pump(fd: OwnedFd, out: Out, id: u32, t: &'static str, mut exited: watch::Receiver<bool>) {
    // SAFETY: the AsyncFd owns `fd`, which stays open for the AsyncFd's whole life.
    let Ok(afd) = (unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }) else { return };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let ready = async {
            loop {
                let mut guard = afd.readable().await?;
                match guard.try_io(|inner| read_fd(inner.get_ref(), &mut buf)) {
                    Ok(result) => return result,
                    Err(_would_block) => continue,
                }
            }
        };
        let quiet = async {
            let _ = exited.wait_for(|e| *e).await;
            tokio::time::sleep(DRAIN_QUIET).await;
        };
        let n = tokio::select! {
            r = ready => r,
            _ = quiet => { log_debug!("exec {id}: {t} still open after exit; not waiting"); return; }
        };
        match n {
            Ok(0) => return,
            Ok(n) => {
                let chunk = ExecOutput { data: buf[..n].to_vec() };
                if !out.send(id, 0, t, &chunk).await {
                    return;
                }
            }
            // A pty master reports EIO once the last slave descriptor closed: that is EOF.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Writes host stdin to the child; empty data closes stdin (pipes) and is ignored with a pty,
/// where closing the master would hang up the terminal.
pub async fn stdin_writer(fd: OwnedFd, is_pty: bool, mut rx: mpsc::Receiver<Vec<u8>>, out: Out, id: u32) {
    // SAFETY: the AsyncFd owns `fd`, which stays open for the AsyncFd's whole life.
    let Ok(afd) = (unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }) else { return };
    let mut failed = false;
    while let Some(data) = rx.recv().await {
        if data.is_empty() {
            if is_pty {
                continue;
            }
            return; // dropping `afd` closes the pipe: the child sees EOF
        }
        if failed {
            continue;
        }
        let mut off = 0;
        while off < data.len() {
            let result = async {
                loop {
                    let mut guard = afd.writable().await?;
                    match guard.try_io(|inner| write_fd(inner.get_ref(), &data[off..])) {
                        Ok(r) => return r,
                        Err(_would_block) => continue,
                    }
                }
            }
            .await;
            match result {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let errno = e.raw_os_error();
                    let msg = ExecStdinError {
                        errno,
                        errno_name: errno.map(|n| errno_name(n).to_string()),
                        message: format!("writing stdin: {e}"),
                    };
                    out.send(id, 0, types::EXEC_STDIN_ERROR, &msg).await;
                    failed = true;
                    break;
                }
            }
        }
    }
}

/// Drives a started child to `core.exec.exited`; `on_done` runs before that frame is sent.
pub async fn run(
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    exit: oneshot::Receiver<libc::c_int>,
    out: Out,
    id: u32,
    on_done: Arc<dyn Fn() + Send + Sync>,
) {
    let (exited_tx, exited_rx) = watch::channel(false);
    let mut pumps = Vec::new();
    pumps.push(tokio::spawn(pump(stdout, out.clone(), id, types::EXEC_STDOUT, exited_rx.clone())));
    if let Some(stderr) = stderr {
        pumps.push(tokio::spawn(pump(stderr, out.clone(), id, types::EXEC_STDERR, exited_rx.clone())));
    }
    let status = exit.await.unwrap_or(libc::SIGKILL);
    let _ = exited_tx.send(true);
    for p in pumps {
        let _ = p.await;
    }
    on_done();
    out.send(id, FLAG_TERMINAL, types::EXEC_EXITED, &ExecExited { code: exit_code(status) }).await;
}
