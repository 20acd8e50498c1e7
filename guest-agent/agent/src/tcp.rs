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

/// Resolves without NSS where possible: the agent is a static binary, and glibc's
/// `getaddrinfo` cannot load NSS modules there. IP literals, `localhost` and `/etc/hosts`
/// are handled here; anything else falls back to `getaddrinfo` (DNS may still work).
pub fn resolve_static(host: &str, hosts_file: &str) -> Option<std::net::IpAddr> {
    if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
        return Some(ip);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Some(std::net::Ipv4Addr::LOCALHOST.into());
    }
    hosts_file.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let ip = fields.next()?.parse().ok()?;
        fields.any(|n| n.eq_ignore_ascii_case(host)).then_some(ip)
    })
}

async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    match resolve_static(host, &hosts) {
        Some(ip) => TcpStream::connect((ip, port)).await,
        None => TcpStream::connect((host, port)).await,
    }
}

/// Runs one forwarded connection until both directions ended or the host closed it.
pub async fn run(id: u32, host: String, port: u16, mut rx: mpsc::Receiver<TcpCmd>, out: Out) {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, connect(&host, port)).await;
    let stream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            out.send(id, FLAG_TERMINAL, types::TCP_FAILED, &TcpFailed { error: format!("connect {host}:{port}: {e}") })
                .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_literals_localhost_and_hosts_entries() {
        let hosts = "127.0.0.1 localhost\n10.0.0.7 db db.internal # comment\n";
        assert_eq!(resolve_static("10.1.2.3", ""), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(resolve_static("[::1]", ""), Some("::1".parse().unwrap()));
        assert_eq!(resolve_static("localhost", ""), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(resolve_static("db.internal", hosts), Some("10.0.0.7".parse().unwrap()));
        assert_eq!(resolve_static("example.com", hosts), None);
    }
}
