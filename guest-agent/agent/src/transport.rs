//! The agent channel: a virtio-serial port in a VM, a Unix socket in development and tests.
//!
//! Blocking I/O on two plain threads, not the async runtime: the port is a character device
//! with odd semantics (reads return EOF while no host is connected, writes block until one
//! is), and a reader thread that polls for `POLLHUP` handles them simply. The threads talk to
//! the runtime through bounded channels, so backpressure reaches the host in both directions.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ksb_protocol::{CodecError, Frame, FrameDecoder};
use tokio::sync::mpsc;

use crate::out::OutFrame;
use crate::{log_info, log_warn};

pub const PORT_NAME: &str = "agent";
/// Frames decoded but not yet dispatched. Frames are at most 4 MiB, so at most 32 MiB wait here.
pub const INBOUND_FRAMES: usize = 8;

/// What the reader thread tells the dispatcher.
#[derive(Debug)]
pub enum Inbound {
    Frame(Frame),
    /// The stream cannot be decoded any more; buffered input was dropped.
    Fatal(CodecError),
    /// A host connected to the port (serial ports only): it needs a `core.ready` first.
    HostConnected,
    /// The stream ended for good (sockets only).
    Closed,
}

/// Finds `/dev/vportNpM` whose `/sys/class/virtio-ports/*/name` is `name`.
pub fn find_port(sys_ports: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(sys_ports).ok()?.flatten() {
        let found = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if found.trim() == name {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

/// Waits for the agent port to appear (the virtio_console module may still be probing).
pub fn open_port(timeout: Duration) -> io::Result<(File, PathBuf)> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(path) = find_port(Path::new("/sys/class/virtio-ports"), PORT_NAME) {
            if path.exists() {
                // Opened once, read-write: a second open of a port fails with EBUSY.
                let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&path)?;
                return Ok((file, path));
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no virtio port named {PORT_NAME:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// virtio-serial: EOF means "no host right now", retry.
    SerialPort,
    /// A stream socket: EOF is the end.
    Stream,
}

/// Whether the port reports `POLLHUP` (no host connected). Waits up to 100 ms for an event.
/// Note: without a host the port also reports `POLLIN` (a read would return EOF at once), so
/// `POLLHUP` alone decides.
fn host_hung_up(fd: i32) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 100) };
    n > 0 && pfd.revents & libc::POLLHUP != 0
}

/// What the reader learns about the host side of a serial port over time. The port gives no
/// connect event, only a level (`POLLHUP` while no host is connected), so it is sampled every
/// [`DISCONNECTED_POLL`]; a connection shorter than that can go unnoticed, which is harmless.
#[derive(Debug, Default)]
pub struct HostLink {
    connected: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LinkChange {
    None,
    /// A host connected (the first one or a later one): it gets a fresh `core.ready`.
    Connected,
    Lost,
}

impl HostLink {
    pub fn observe(&mut self, connected_now: bool) -> LinkChange {
        match (self.connected, connected_now) {
            (true, false) => {
                self.connected = false;
                LinkChange::Lost
            }
            (false, true) => {
                self.connected = true;
                LinkChange::Connected
            }
            _ => LinkChange::None,
        }
    }
}

/// How often a port without a host is checked for one.
pub const DISCONNECTED_POLL: Duration = Duration::from_millis(20);

/// Reader thread: bytes → frames → dispatcher.
pub fn spawn_reader(
    mut reader: File,
    kind: Kind,
    tx: mpsc::Sender<Inbound>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("agent-reader".into()).spawn(move || {
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut link = HostLink::default();
        loop {
            if kind == Kind::SerialPort {
                let connected_now = !host_hung_up(reader.as_raw_fd());
                match link.observe(connected_now) {
                    LinkChange::None => {}
                    LinkChange::Lost => {
                        log_info!("agent port: host disconnected");
                        dec.reset();
                    }
                    LinkChange::Connected => {
                        log_info!("agent port: host connected; sending core.ready");
                        dec.reset();
                        if tx.blocking_send(Inbound::HostConnected).is_err() {
                            return;
                        }
                    }
                }
                if !connected_now {
                    std::thread::sleep(DISCONNECTED_POLL);
                    continue;
                }
            }
            let n = match reader.read(&mut buf) {
                Ok(0) if kind == Kind::SerialPort => {
                    // EOF on a port: the host went away while we were blocked in read.
                    if link.observe(false) == LinkChange::Lost {
                        log_info!("agent port: host disconnected");
                        dec.reset();
                    }
                    continue;
                }
                Ok(0) => {
                    let _ = tx.blocking_send(Inbound::Closed);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log_warn!("agent channel read: {e}");
                    if kind == Kind::Stream {
                        let _ = tx.blocking_send(Inbound::Closed);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            dec.push(&buf[..n]);
            loop {
                match dec.next_frame() {
                    Ok(Some(frame)) => {
                        if tx.blocking_send(Inbound::Frame(frame)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        dec.reset();
                        if tx.blocking_send(Inbound::Fatal(e)).is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    })
}

/// Writer thread: queued frames → channel. Blocks while no host is connected.
pub fn spawn_writer(mut writer: File, mut rx: mpsc::Receiver<OutFrame>) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("agent-writer".into()).spawn(move || {
        while let Some(frame) = rx.blocking_recv() {
            if let Err(e) = writer.write_all(&frame.bytes) {
                log_warn!("agent channel write: {e}");
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_new_host_gets_one_ready() {
        let mut link = HostLink::default();
        assert_eq!(link.observe(false), LinkChange::None, "no host yet at boot");
        assert_eq!(link.observe(true), LinkChange::Connected);
        assert_eq!(link.observe(true), LinkChange::None);
        assert_eq!(link.observe(false), LinkChange::Lost);
        assert_eq!(link.observe(false), LinkChange::None);
        assert_eq!(link.observe(true), LinkChange::Connected);
    }

    #[test]
    fn finds_the_port_by_name() {
        let dir = std::env::temp_dir().join(format!("ksb-ports-{}", std::process::id()));
        for (port, name) in [("vport0p1", "console\n"), ("vport1p1", "agent\n")] {
            std::fs::create_dir_all(dir.join(port)).unwrap();
            std::fs::write(dir.join(port).join("name"), name).unwrap();
        }
        assert_eq!(find_port(&dir, "agent"), Some(PathBuf::from("/dev/vport1p1")));
        assert_eq!(find_port(&dir, "other"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
