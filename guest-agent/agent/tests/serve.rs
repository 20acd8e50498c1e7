//! The agent's server driven over a socket pair, as the relay would drive it: exec (pipes,
//! pty, stdin, signals, failures), fs, protocol errors, client cleanup and backpressure.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ksb_protocol::codec::{FLAG_SESSION_START, FLAG_SHUTDOWN, FLAG_TERMINAL};
use ksb_protocol::messages::*;
use ksb_protocol::{encode_body, Envelope, Frame, FrameDecoder};
use kubesandbox_agent::defaults::Defaults;
use kubesandbox_agent::server::Timings;
use kubesandbox_agent::transport::Kind;
use serde::de::DeserializeOwned;
use serde::Serialize;

struct Client {
    sock: UnixStream,
    dec: FrameDecoder,
}

struct Msg {
    id: u32,
    flags: u8,
    env: Envelope,
}

impl Msg {
    fn p<T: DeserializeOwned>(&self) -> T {
        self.env.payload().unwrap()
    }
}

impl Client {
    fn start() -> Client {
        kubesandbox_agent::log::set_level(kubesandbox_agent::boot::config::LogLevel::Warn);
        let (ours, theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let file = std::fs::File::from(OwnedFd::from(theirs));
            let _ = kubesandbox_agent::serve_channel(file, Kind::Stream, Defaults::default(), Timings::default());
        });
        ours.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client { sock: ours, dec: FrameDecoder::new() };
        let ready = c.recv();
        assert_eq!(ready.env.t, types::READY);
        assert_eq!(ready.env.v, 7);
        c
    }

    fn send_raw(&mut self, id: u32, flags: u8, body: Vec<u8>) {
        self.sock.write_all(&Frame::new(id, flags, body).encode().unwrap()).unwrap();
    }

    fn send<T: Serialize>(&mut self, id: u32, flags: u8, t: &str, p: &T) {
        self.send_raw(id, flags, encode_body(t, p).unwrap());
    }

    fn recv(&mut self) -> Msg {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = self.dec.next_frame().unwrap() {
                return Msg { id: f.id, flags: f.flags, env: Envelope::decode(&f.body).unwrap() };
            }
            let n = self.sock.read(&mut buf).expect("agent answered in time");
            assert!(n > 0, "agent closed the channel");
            self.dec.push(&buf[..n]);
        }
    }

    /// Collects one exec session: (stdout, stderr, terminal message).
    fn exec_output(&mut self, id: u32) -> (Vec<u8>, Vec<u8>, Msg) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let m = self.recv();
            assert_eq!(m.id, id, "unexpected frame {}", m.env.t);
            match m.env.t.as_str() {
                types::EXEC_STARTED => {}
                types::EXEC_STDOUT => out.extend(m.p::<ExecOutput>().data),
                types::EXEC_STDERR => err.extend(m.p::<ExecOutput>().data),
                _ => {
                    assert_ne!(m.flags & FLAG_TERMINAL, 0);
                    return (out, err, m);
                }
            }
        }
    }

    fn exec(&mut self, id: u32, cmd: &str, args: &[&str], stdin: Option<&[u8]>) -> (Vec<u8>, Vec<u8>, Msg) {
        let req = request(cmd, args);
        self.send(id, FLAG_SESSION_START, types::EXEC_REQUEST, &req);
        if let Some(data) = stdin {
            if !data.is_empty() {
                self.send(id, 0, types::EXEC_STDIN, &ExecStdin { data: data.to_vec() });
            }
            self.send(id, 0, types::EXEC_STDIN, &ExecStdin { data: vec![] });
        }
        self.exec_output(id)
    }

    fn fs(&mut self, id: u32, op: FsOp) -> FsResponse {
        self.send(id, FLAG_SESSION_START, types::FS_REQUEST, &FsRequest { op });
        let m = self.recv();
        assert_eq!((m.id, m.env.t.as_str()), (id, types::FS_RESPONSE));
        m.p()
    }
}

fn request(cmd: &str, args: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: Some("/".into()),
        user: None,
        tty: false,
        rows: 24,
        cols: 80,
        rlimits: vec![],
    }
}

fn exit_code(m: &Msg) -> i32 {
    assert_eq!(m.env.t, types::EXEC_EXITED, "{:?}", m.env.payload::<ExecFailed>().ok());
    m.p::<ExecExited>().code
}

#[test]
fn ping_and_touch() {
    let mut c = Client::start();
    c.send(5, 0, types::PING, &Empty {});
    let m = c.recv();
    assert_eq!((m.id, m.flags, m.env.t.as_str()), (5, FLAG_TERMINAL, types::PONG));
    c.send(6, 0, types::TOUCH, &Empty {});
    let a = c.recv().p::<Touched>().activity_seq;
    c.send(7, 0, types::TOUCH, &Empty {});
    assert_eq!(c.recv().p::<Touched>().activity_seq, a + 1);
}

#[test]
fn exec_echo_like_the_sdk() {
    let mut c = Client::start();
    let (out, err, end) = c.exec(1, "echo", &["hi"], Some(b""));
    assert_eq!((out.as_slice(), err.as_slice(), exit_code(&end)), (&b"hi\n"[..], &b""[..], 0));
}

#[test]
fn exec_streams_stdin_until_empty_data() {
    let mut c = Client::start();
    let mut req = request("sh", &["-c", "cat; echo \"A=$A\" >&2"]);
    req.env = vec!["A=B".into()];
    req.cwd = Some("/tmp".into());
    c.send(1, FLAG_SESSION_START, types::EXEC_REQUEST, &req);
    c.send(1, 0, types::EXEC_STDIN, &ExecStdin { data: b"input-".to_vec() });
    c.send(1, 0, types::EXEC_STDIN, &ExecStdin { data: b"bytes".to_vec() });
    c.send(1, 0, types::EXEC_STDIN, &ExecStdin { data: vec![] });
    let (out, err, end) = c.exec_output(1);
    assert_eq!(out, b"input-bytes");
    assert_eq!(err, b"A=B\n");
    assert_eq!(exit_code(&end), 0);
}

#[test]
fn exit_status_and_death_by_signal() {
    let mut c = Client::start();
    assert_eq!(exit_code(&c.exec(1, "sh", &["-c", "exit 3"], Some(b"")).2), 3);
    assert_eq!(exit_code(&c.exec(2, "sh", &["-c", "kill -9 $$"], Some(b"")).2), 137);
}

#[test]
fn signal_reaches_the_process_group() {
    let mut c = Client::start();
    c.send(1, FLAG_SESSION_START, types::EXEC_REQUEST, &request("sh", &["-c", "sleep 30; echo late"]));
    let started = c.recv();
    assert_eq!(started.env.t, types::EXEC_STARTED);
    assert!(started.p::<ExecStarted>().pid > 1);
    let t = Instant::now();
    c.send(1, 0, types::EXEC_SIGNAL, &ExecSignal { signal: 15 });
    let (out, _, end) = c.exec_output(1);
    assert_eq!(exit_code(&end), 143);
    assert!(out.is_empty());
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn failures_are_classified() {
    let mut c = Client::start();
    let (_, _, end) = c.exec(1, "no-such-command-xyz", &[], None);
    assert_eq!(end.env.t, types::EXEC_FAILED);
    let f: ExecFailed = end.p();
    assert_eq!(f.kind, ExecFailureKind::NotFound);
    assert!(f.message.contains("no-such-command-xyz"));

    let mut req = request("true", &[]);
    req.cwd = Some("/no/such/dir".into());
    c.send(2, FLAG_SESSION_START, types::EXEC_REQUEST, &req);
    let f: ExecFailed = c.recv().p();
    assert_eq!(
        (f.kind, f.stage.as_deref(), f.errno_name.as_deref()),
        (ExecFailureKind::BadCwd, Some("chdir"), Some("ENOENT"))
    );

    let mut req = request("true", &[]);
    req.rlimits = vec![Rlimit { resource: "bogus".into(), soft: 1, hard: 1 }];
    c.send(3, FLAG_SESSION_START, types::EXEC_REQUEST, &req);
    assert_eq!(c.recv().p::<ExecFailed>().kind, ExecFailureKind::BadArgs);

    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ksb-serve-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (plain, garbage) = (dir.join("plain"), dir.join("garbage"));
    std::fs::write(&plain, "data").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&garbage, [0u8, 1, 2, 3]).unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o755)).unwrap();
    c.send(4, FLAG_SESSION_START, types::EXEC_REQUEST, &request(plain.to_str().unwrap(), &[]));
    assert_eq!(c.recv().p::<ExecFailed>().kind, ExecFailureKind::PermissionDenied);
    c.send(5, FLAG_SESSION_START, types::EXEC_REQUEST, &request(garbage.to_str().unwrap(), &[]));
    let f: ExecFailed = c.recv().p();
    assert_eq!((f.kind, f.errno_name.as_deref()), (ExecFailureKind::NotExecutable, Some("ENOEXEC")));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rlimits_apply_to_the_child() {
    let mut c = Client::start();
    let mut req = request("sh", &["-c", "ulimit -n"]);
    req.rlimits = vec![Rlimit { resource: "nofile".into(), soft: 77, hard: 77 }];
    c.send(1, FLAG_SESSION_START, types::EXEC_REQUEST, &req);
    let (out, _, end) = c.exec_output(1);
    assert_eq!((out.as_slice(), exit_code(&end)), (&b"77\n"[..], 0));
}

#[test]
fn tty_exec_gets_a_terminal_of_the_requested_size() {
    let mut c = Client::start();
    let mut req = request("sh", &["-c", "tty; stty size; echo err >&2"]);
    req.tty = true;
    req.rows = 33;
    req.cols = 101;
    c.send(1, FLAG_SESSION_START, types::EXEC_REQUEST, &req);
    let (out, err, end) = c.exec_output(1);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("33 101"), "{text}");
    assert!(text.contains("err"), "stderr goes to the terminal too: {text}");
    assert!(err.is_empty());
    assert_eq!(exit_code(&end), 0);
}

#[test]
fn tty_resize_and_interactive_input() {
    let mut c = Client::start();
    let mut req = request("sh", &["-c", "read line; stty size; echo got:$line"]);
    req.tty = true;
    c.send(1, FLAG_SESSION_START, types::EXEC_REQUEST, &req);
    assert_eq!(c.recv().env.t, types::EXEC_STARTED);
    // The resize is applied (ioctl) before the next frame is read: no wait needed.
    c.send(1, 0, types::EXEC_RESIZE, &ExecResize { rows: 50, cols: 132 });
    c.send(1, 0, types::EXEC_STDIN, &ExecStdin { data: b"hello\n".to_vec() });
    let (out, _, end) = c.exec_output(1);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("50 132") && text.contains("got:hello"), "{text}");
    assert_eq!(exit_code(&end), 0);
}

#[test]
fn protocol_errors_are_answered_not_fatal() {
    let mut c = Client::start();
    c.send_raw(1, 0, b"\xff\xfe garbage".to_vec());
    let m = c.recv();
    assert_eq!((m.id, m.env.t.as_str()), (1, types::ERROR));
    assert_eq!(m.p::<CoreError>().kind, ErrorKind::MalformedMessage);

    c.send(2, 0, "core.bulk.credit", &Empty {});
    let e: CoreError = c.recv().p();
    assert_eq!((e.kind, e.offending_type.as_deref()), (ErrorKind::UnsupportedMessageType, Some("core.bulk.credit")));

    c.send(3, 0, types::EXEC_REQUEST, &request("true", &[]));
    assert_eq!(c.recv().p::<CoreError>().kind, ErrorKind::InvalidFlags);

    c.send(4, 0, types::EXEC_STDIN, &ExecStdin { data: b"x".to_vec() });
    assert_eq!(c.recv().p::<CoreError>().kind, ErrorKind::InvalidSession);

    c.send(5, FLAG_SESSION_START, types::EXEC_REQUEST, &Touched { activity_seq: 1 });
    assert_eq!(c.recv().p::<CoreError>().kind, ErrorKind::InvalidPayload);

    // Still serving.
    c.send(6, 0, types::PING, &Empty {});
    assert_eq!(c.recv().env.t, types::PONG);
}

#[test]
fn late_stdin_after_exit_is_ignored_quietly() {
    let mut c = Client::start();
    let (_, _, end) = c.exec(1, "true", &[], None);
    assert_eq!(exit_code(&end), 0);
    c.send(1, 0, types::EXEC_STDIN, &ExecStdin { data: vec![] });
    c.send(2, 0, types::PING, &Empty {});
    assert_eq!(c.recv().id, 2, "no error for the finished session");
}

#[test]
fn fs_write_then_read_like_the_sdk() {
    let mut c = Client::start();
    let dir = std::env::temp_dir().join(format!("ksb-serve-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hello.txt").to_string_lossy().into_owned();
    let opts = OpenOptions { write: true, create: true, truncate: true, ..OpenOptions::default() };
    let h = match c.fs(1, FsOp::OpenFile { path: path.clone(), options: opts }).data {
        Some(FsResponseData::Handle(h)) => h,
        other => panic!("{other:?}"),
    };
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    c.send(
        2,
        FLAG_SESSION_START,
        types::FS_REQUEST,
        &FsRequest { op: FsOp::Write { handle: h, offset: 0, len: Some(big.len() as u64) } },
    );
    for chunk in big.chunks(FS_CHUNK_MAX) {
        c.send(2, 0, types::FS_DATA, &FsData { data: chunk.to_vec() });
    }
    c.send(2, 0, types::FS_DATA, &FsData { data: vec![] });
    let m = c.recv();
    assert!(m.p::<FsResponse>().ok, "{:?}", m.p::<FsResponse>().error);
    assert!(c.fs(3, FsOp::CloseHandle { handle: h }).ok);

    let opts = OpenOptions { read: true, ..OpenOptions::default() };
    let h = match c.fs(4, FsOp::OpenFile { path: path.clone(), options: opts }).data {
        Some(FsResponseData::Handle(h)) => h,
        other => panic!("{other:?}"),
    };
    c.send(5, FLAG_SESSION_START, types::FS_REQUEST, &FsRequest { op: FsOp::Read { handle: h, offset: 0, len: None } });
    let mut got = Vec::new();
    loop {
        let m = c.recv();
        match m.env.t.as_str() {
            types::FS_DATA => {
                let d: FsData = m.p();
                assert!(d.data.len() <= FS_CHUNK_MAX);
                got.extend(d.data);
            }
            types::FS_RESPONSE => {
                assert!(m.p::<FsResponse>().ok && m.flags & FLAG_TERMINAL != 0);
                break;
            }
            other => panic!("{other}"),
        }
    }
    assert!(got == big, "read back {} bytes", got.len());
    match c.fs(6, FsOp::Stat { path: path.clone(), follow_symlink: true }).data {
        Some(FsResponseData::Stat(e)) => assert_eq!((e.kind.as_str(), e.size), ("file", big.len() as u64)),
        other => panic!("{other:?}"),
    }
    let missing = c.fs(7, FsOp::Stat { path: "/no/such/file".into(), follow_symlink: true });
    assert!(!missing.ok && missing.error.unwrap().contains("/no/such/file"));

    // The relay reports the client gone: its handle (opened by id 4) is closed.
    c.send(0, 0, types::RELAY_CLIENT_DISCONNECTED, &RelayClientDisconnected { id_start: 1, id_end_exclusive: 100 });
    let r = c.fs(200, FsOp::CloseHandle { handle: h });
    assert!(!r.ok && r.error.unwrap().contains("unknown handle"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn client_disconnect_kills_its_exec_sessions() {
    let mut c = Client::start();
    c.send(10, FLAG_SESSION_START, types::EXEC_REQUEST, &request("sleep", &["30"]));
    assert_eq!(c.recv().env.t, types::EXEC_STARTED);
    c.send(0, 0, types::RELAY_CLIENT_DISCONNECTED, &RelayClientDisconnected { id_start: 1, id_end_exclusive: 20 });
    let (_, _, end) = c.exec_output(10);
    assert_eq!(exit_code(&end), 137);
}

#[test]
fn many_concurrent_sessions() {
    let mut c = Client::start();
    for id in 1..=40u32 {
        c.send(id, FLAG_SESSION_START, types::EXEC_REQUEST, &request("sh", &["-c", &format!("echo {id}")]));
        c.send(id, 0, types::EXEC_STDIN, &ExecStdin { data: vec![] });
    }
    let mut outputs = std::collections::HashMap::new();
    let mut done = 0;
    while done < 40 {
        let m = c.recv();
        match m.env.t.as_str() {
            types::EXEC_STDOUT => outputs.entry(m.id).or_insert_with(Vec::new).extend(m.p::<ExecOutput>().data),
            types::EXEC_EXITED => {
                assert_eq!(m.p::<ExecExited>().code, 0);
                done += 1;
            }
            types::EXEC_STARTED => {}
            other => panic!("{other}"),
        }
    }
    for id in 1..=40u32 {
        assert_eq!(outputs[&id], format!("{id}\n").into_bytes());
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn slow_host_does_not_make_the_agent_buffer() {
    let mut c = Client::start();
    let total: u64 = 200 * 1024 * 1024;
    c.send(1, FLAG_SESSION_START, types::EXEC_REQUEST, &request("head", &["-c", &total.to_string(), "/dev/zero"]));
    c.send(1, 0, types::EXEC_STDIN, &ExecStdin { data: vec![] });
    let before = rss_kib();
    std::thread::sleep(Duration::from_secs(2)); // the host reads nothing meanwhile
    let during = rss_kib();
    let (out, _, end) = c.exec_output(1);
    assert_eq!(out.len() as u64, total);
    assert_eq!(exit_code(&end), 0);
    let grown_mib = during.saturating_sub(before) / 1024;
    eprintln!("RSS grew by {grown_mib} MiB while the host stalled on a 200 MiB output");
    // Other tests run in this process too; the point is "far below the 200 MiB produced".
    assert!(grown_mib < 100, "agent buffered {grown_mib} MiB");
}

#[test]
fn shutdown_ends_the_server() {
    let mut c = Client::start();
    c.send(0, FLAG_SHUTDOWN, types::SHUTDOWN, &Empty {});
    let mut buf = [0u8; 16];
    let n = c.sock.read(&mut buf).unwrap();
    assert_eq!(n, 0, "channel closed after shutdown");
}

#[test]
fn exec_as_another_user() {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: skipping");
        return;
    }
    let mut c = Client::start();
    let mut req = request("sh", &["-c", "id -u; id -g; id -G"]);
    req.user = Some("4242:4343".into());
    c.send(1, FLAG_SESSION_START, types::EXEC_REQUEST, &req);
    let (out, _, end) = c.exec_output(1);
    assert_eq!(String::from_utf8_lossy(&out), "4242\n4343\n4343\n");
    assert_eq!(exit_code(&end), 0);

    let mut req = request("true", &[]);
    req.user = Some("no-such-user-xyz".into());
    c.send(2, FLAG_SESSION_START, types::EXEC_REQUEST, &req);
    let f: ExecFailed = c.recv().p();
    assert_eq!(f.kind, ExecFailureKind::UserSetupFailed);
    assert!(f.message.contains("no-such-user-xyz"), "{}", f.message);
}

#[test]
fn tcp_connect_forwards_both_directions() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap(); // until the guest side sends EOF
        s.write_all(&buf).unwrap();
    });
    let mut c = Client::start();
    c.send(3, FLAG_SESSION_START, types::TCP_CONNECT, &TcpConnect { host: "localhost".into(), port });
    assert_eq!(c.recv().env.t, types::TCP_CONNECTED);
    c.send(3, 0, types::TCP_DATA, &TcpData { data: b"echo me".to_vec() });
    c.send(3, 0, types::TCP_EOF, &Empty {});
    let mut echoed = Vec::new();
    loop {
        let m = c.recv();
        match m.env.t.as_str() {
            types::TCP_DATA => echoed.extend(m.p::<TcpData>().data),
            types::TCP_EOF => {}
            types::TCP_CLOSED => {
                assert_ne!(m.flags & FLAG_TERMINAL, 0);
                break;
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(echoed, b"echo me");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    c.send(4, FLAG_SESSION_START, types::TCP_CONNECT, &TcpConnect { host: "127.0.0.1".into(), port: dead_port });
    let m = c.recv();
    assert_eq!(m.env.t, types::TCP_FAILED);
    assert!(m.p::<TcpFailed>().error.contains("refused"), "{}", m.p::<TcpFailed>().error);
}

#[test]
fn a_command_not_reading_stdin_stalls_only_briefly() {
    std::env::set_var("KSB_AGENT_STALL_MS", "300");
    let mut c = Client::start();
    c.send(1, FLAG_SESSION_START, types::EXEC_REQUEST, &request("sleep", &["30"]));
    assert_eq!(c.recv().env.t, types::EXEC_STARTED);
    let t = Instant::now();
    for _ in 0..100 {
        c.send(1, 0, types::EXEC_STDIN, &ExecStdin { data: vec![b'x'; 64 * 1024] });
    }
    // Other sessions are served again, and the stalled one can still be killed.
    c.send(2, 0, types::PING, &Empty {});
    c.send(1, 0, types::EXEC_SIGNAL, &ExecSignal { signal: 9 });
    let (mut stdin_errors, mut pong, mut code) = (Vec::new(), false, None);
    while code.is_none() {
        let m = c.recv();
        match m.env.t.as_str() {
            types::EXEC_STDIN_ERROR => stdin_errors.push(m.p::<ExecStdinError>().message),
            types::PONG => pong = true,
            types::EXEC_EXITED => code = Some(m.p::<ExecExited>().code),
            other => panic!("{other}"),
        }
    }
    // The stall is reported; a later EPIPE once the killed child's pipe closed may follow.
    assert!(stdin_errors.iter().any(|e| e.contains("did not read its stdin")), "{stdin_errors:?}");
    assert!(pong);
    assert_eq!(code, Some(137));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn children_inherit_no_agent_descriptors() {
    let mut c = Client::start();
    let (out, _, end) = c.exec(1, "ls", &["-l", "/proc/self/fd/"], Some(b""));
    assert_eq!(exit_code(&end), 0);
    // The agent's channel (a socket here, the port in a VM), the runtime's epoll and signal
    // descriptors and ptys must not reach a command. (Pipes inherited from the test harness,
    // such as cargo's jobserver, may appear: the agent as PID 1 has none.)
    let text = String::from_utf8_lossy(&out);
    for bad in ["socket:", "anon_inode:", "/dev/ptmx", "/dev/pts/", "vport"] {
        assert!(!text.contains(bad), "{bad} leaked into the child:\n{text}");
    }
}

#[test]
fn a_refused_claim_changes_nothing() {
    // Only refusals here: an accepted claim sets the hostname, which on this host would be the
    // test machine's (tests/integration/operator/test_pools.py claims real VMs).
    let mut c = Client::start();
    let claim = Claim {
        env: vec!["CLAIMED=yes".into()],
        hostname: "Not A Label".into(),
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        entropy: vec![1],
        scripts: vec![],
    };
    c.send(8, 0, types::CLAIM, &claim);
    let m = c.recv();
    assert_eq!((m.id, m.flags, m.env.t.as_str()), (8, FLAG_TERMINAL, types::ERROR));
    let e: CoreError = m.p();
    assert_eq!(e.kind, ErrorKind::InvalidPayload);
    assert!(e.message.contains("hostname"), "{}", e.message);
    c.send(9, FLAG_SESSION_START, types::EXEC_REQUEST, &request("sh", &["-c", "echo ${CLAIMED:-no}"]));
    c.send(9, 0, types::EXEC_STDIN, &ExecStdin { data: vec![] });
    let (out, _, end) = c.exec_output(9);
    assert_eq!(exit_code(&end), 0);
    assert_eq!(out, b"no\n");
}
