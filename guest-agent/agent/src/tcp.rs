//! `core.tcp.connect`: a TCP connection opened from inside the guest (port forwarding).

use std::time::Duration;

use ksb_protocol::codec::FLAG_TERMINAL;
use ksb_protocol::messages::{types, Empty, TcpData, TcpFailed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::out::Out;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const QUEUE: usize = 16;

#[derive(Debug)]
pub enum TcpCmd {
    Data(Vec<u8>),
    Eof,
    Close,
}

/// Runs one forwarded connection until both directions ended or the host closed it.
pub async fn run(id: u32, host: String, port: u16, mut rx: mpsc::Receiver<TcpCmd>, out: Out) {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port))).await;
    let stream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            out.send(id, FLAG_TERMINAL, types::TCP_FAILED, &TcpFailed { error: format!("connect {host}:{port}: {e}") }).await;
            return;
        }
        Err(_) => {
            let error = format!("connect {host}:{port}: timed out after {CONNECT_TIMEOUT:?}");
            out.send(id, FLAG_TERMINAL, types::TCP_FAILED, &TcpFailed { error }).await;
            return;
        }
    };
    if !out.send(id, 0, types::TCP_CONNECTED, &Empty {}).await {
        return;
    }
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut read_open, mut write_open) = (true, true);
    while read_open || write_open {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(TcpCmd::Data(d)) if write_open => {
                    if wr.write_all(&d).await.is_err() { write_open = false; }
                }
                Some(TcpCmd::Data(_)) => {}
                Some(TcpCmd::Eof) => { let _ = wr.shutdown().await; write_open = false; }
                Some(TcpCmd::Close) | None => break,
            },
            n = rd.read(&mut buf), if read_open => match n {
                Ok(0) | Err(_) => {
                    read_open = false;
                    out.send(id, 0, types::TCP_EOF, &Empty {}).await;
                }
                Ok(n) => {
                    if !out.send(id, 0, types::TCP_DATA, &TcpData { data: buf[..n].to_vec() }).await { return; }
                }
            },
        }
    }
    out.send(id, FLAG_TERMINAL, types::TCP_CLOSED, &Empty {}).await;
}
