//! The two streaming fs operations: `Read` sends `core.fs.data` chunks to the host, `Write`
//! takes them from the host until the empty chunk. Both touch the disk on the blocking pool,
//! one chunk at a time, and wait for queue room between chunks (backpressure both ways). The
//! dispatcher owns the session bookkeeping and the terminal `core.fs.response`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use ksb_protocol::messages::{types, FsData};
use tokio::sync::mpsc;

use crate::fs::read_at;
use crate::out::Out;

/// Bytes per `core.fs.data` chunk we send (the protocol allows up to 3 MiB).
pub const READ_CHUNK: usize = 1024 * 1024;
/// Host → guest write chunks queued per fs write session.
pub const WRITE_QUEUE: usize = 4;

/// Why a stream ended without a response to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Gone {
    /// The agent is shutting down (outbound queue closed).
    Agent,
    /// The client went away (its session was dropped by the cleanup).
    Client,
}

/// Streams `[offset, offset + len)` (to EOF when `len` is `None`) to the host as `id`.
/// `Ok(Err(text))` is an I/O error for the response.
pub async fn read_to_host(
    file: Arc<File>,
    path: &Path,
    offset: u64,
    len: Option<u64>,
    out: &Out,
    id: u32,
) -> Result<Result<(), String>, Gone> {
    let mut pos = offset;
    let mut remaining = len.unwrap_or(u64::MAX);
    while remaining > 0 {
        let want = remaining.min(READ_CHUNK as u64) as usize;
        let f = file.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            read_at(&f, &mut buf, pos).map(|n| {
                buf.truncate(n);
                buf
            })
        })
        .await;
        let buf = match chunk {
            Ok(Ok(buf)) => buf,
            Ok(Err(e)) => return Ok(Err(format!("read {}: {e}", path.display()))),
            Err(e) => return Ok(Err(format!("read {}: internal error: {e}", path.display()))),
        };
        if buf.is_empty() {
            break;
        }
        pos += buf.len() as u64;
        remaining -= buf.len() as u64;
        if !out.send(id, 0, types::FS_DATA, &FsData { data: buf }).await {
            return Err(Gone::Agent);
        }
    }
    Ok(Ok(()))
}

/// Writes host chunks at `offset` until the empty chunk; checks `len` when given.
pub async fn write_from_host(
    file: Arc<File>,
    path: &Path,
    offset: u64,
    len: Option<u64>,
    rx: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<Result<(), String>, Gone> {
    let mut written = 0u64;
    loop {
        let Some(chunk) = rx.recv().await else {
            return Err(Gone::Client);
        };
        if chunk.is_empty() {
            return Ok(match len {
                Some(n) if n != written => {
                    Err(format!("write {}: expected {n} bytes, received {written}", path.display()))
                }
                _ => Ok(()),
            });
        }
        let f = file.clone();
        let at = offset + written;
        let n = chunk.len() as u64;
        match tokio::task::spawn_blocking(move || f.write_all_at(&chunk, at)).await {
            Ok(Ok(())) => written += n,
            Ok(Err(e)) => return Ok(Err(format!("write {}: {e}", path.display()))),
            Err(e) => return Ok(Err(format!("write {}: internal error: {e}", path.display()))),
        }
    }
}
