//! The kubesandbox guest agent: PID 1 of every sandbox VM.
//!
//! `main` runs [`boot::setup`] synchronously (mounts, modules, root, identity), optionally hands
//! PID 1 to the image's init ([`handoff`]), then serves the agent protocol on a current-thread
//! tokio runtime ([`server`]) fed by two blocking channel threads ([`transport`]).

pub mod boot;
pub mod claim;
pub mod defaults;
pub mod exec;
pub mod fs;
pub mod fs_stream;
pub mod handoff;
pub mod log;
pub mod out;
pub mod reaper;
pub mod server;
pub mod sys;
pub mod tcp;
pub mod transport;
pub mod users;

use std::fs::File;
use std::sync::Arc;

use server::{Ending, Server, Timings};

/// Serves one channel (port or socket) until shutdown or its end. Builds its own
/// current-thread runtime; see docs/guest-agent.md for why one thread is enough.
pub fn serve_channel(
    file: File,
    kind: transport::Kind,
    defaults: defaults::Defaults,
    timings: Timings,
) -> std::io::Result<Ending> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(8).build()?;
    let reader = file.try_clone()?;
    let closer = file.try_clone()?;
    let (out, out_rx) = out::Out::new();
    let (in_tx, in_rx) = tokio::sync::mpsc::channel(transport::INBOUND_FRAMES);
    // Both threads are daemons of the process: they end with it.
    let _r = transport::spawn_reader(reader, kind, in_tx)?;
    let _w = transport::spawn_writer(file, out_rx)?;
    let server = Server::new(out, defaults, timings);
    let ending = runtime.block_on(async move {
        let ending = Arc::clone(&server).serve(in_rx, kind == transport::Kind::Stream).await;
        // Let queued frames (the last exited, a pong) reach the writer.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        ending
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if kind == transport::Kind::Stream {
        // Unblocks the reader thread and tells the peer we are done.
        // SAFETY: shutdown(2) on a socket descriptor we hold.
        unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&closer), libc::SHUT_RDWR) };
    }
    Ok(ending)
}
