//! The dispatcher: one task reads inbound frames in order and routes them.
//!
//! Every message follows the same thin shape: decode (→ `core.error` on failure, never a
//! panic) → check the session table → `start_*`/forward → reply. Session-starting requests
//! spawn their own task; frames for a running session are forwarded over that session's
//! bounded channel. Host → guest backpressure is head-of-line by design: when one child's
//! stdin queue is full the dispatcher waits, the reader thread stops reading the port, and
//! the host's writes block. Memory stays bounded; see docs/guest-agent.md.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ksb_protocol::codec::FLAG_TERMINAL;
use ksb_protocol::messages::*;
use ksb_protocol::{Envelope, Frame, HostMessage, IncomingError};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::defaults::Defaults;
use crate::exec::session as exec_session;
use crate::exec::spawn::{self, Prepared, SpawnError};
use crate::exec::status::Stage;
use crate::fs::{self as gfs, SharedHandles};
use crate::fs_stream;
use crate::out::Out;
use crate::tcp::{self, TcpCmd};
use crate::transport::Inbound;
use crate::users::{Identity, UserDb};
use crate::{log_debug, log_info, log_warn};

/// Ids of recently finished sessions remembered, so late frames for them (stdin EOF after a
/// fast exit) are dropped quietly instead of answered with `invalid_session`.
const RECENT_IDS: usize = 4096;

enum Session {
    /// `stdin` is `None` once input stalled (see [`Server::stall`]).
    Exec {
        pid: i32,
        stdin: Option<mpsc::Sender<Vec<u8>>>,
        pty: Option<Arc<OwnedFd>>,
    },
    FsWrite {
        data: mpsc::Sender<Vec<u8>>,
    },
    Stream {
        task: Option<AbortHandle>,
    },
    Tcp {
        cmds: Option<mpsc::Sender<TcpCmd>>,
    },
}

#[derive(Default)]
struct State {
    sessions: HashMap<u32, Session>,
    recent: VecDeque<u32>,
    recent_set: HashSet<u32>,
}

impl State {
    fn finish(&mut self, id: u32) {
        self.sessions.remove(&id);
        if self.recent_set.insert(id) {
            self.recent.push_back(id);
            if self.recent.len() > RECENT_IDS {
                if let Some(old) = self.recent.pop_front() {
                    self.recent_set.remove(&old);
                }
            }
        }
    }
}

/// How the process should end when [`Server::serve`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `core.shutdown`: sync and power off.
    Shutdown,
    /// The channel closed (development sockets only).
    Closed,
}

/// Boot timings reported in `core.ready`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub boot_time_ns: u64,
    pub init_time_ns: u64,
}

pub struct Server {
    out: Out,
    state: Mutex<State>,
    handles: SharedHandles,
    /// Replaced when a pool VM is claimed (`kubesandbox.claim`).
    defaults: Mutex<Defaults>,
    fs_base: PathBuf,
    timings: Timings,
    activity: AtomicU64,
    /// How long the dispatcher waits on one session's full input queue; see [`Server::stall`].
    stall_after: Duration,
}

/// Default for `stall_after`; `KSB_AGENT_STALL_MS` overrides it (tests).
pub const STALL_AFTER: Duration = Duration::from_secs(10);

fn core_error(kind: ErrorKind, message: String, offending_type: Option<String>) -> CoreError {
    CoreError { kind, message, offending_type }
}

impl Server {
    pub fn new(out: Out, defaults: Defaults, timings: Timings) -> Arc<Self> {
        let fs_base = PathBuf::from(defaults.workdir.clone().unwrap_or_else(|| "/".into()));
        Arc::new(Server {
            out,
            state: Mutex::new(State::default()),
            handles: SharedHandles::default(),
            defaults: Mutex::new(defaults),
            fs_base,
            timings,
            activity: AtomicU64::new(0),
            stall_after: std::env::var("KSB_AGENT_STALL_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis)
                .unwrap_or(STALL_AFTER),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(&self) -> u64 {
        self.activity.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn send_ready(&self) {
        let ready = Ready {
            boot_time_ns: self.timings.boot_time_ns,
            init_time_ns: self.timings.init_time_ns,
            ready_time_ns: crate::sys::boottime_ns(),
            agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        };
        self.out.send(0, 0, types::READY, &ready).await;
    }

    async fn error(&self, id: u32, kind: ErrorKind, message: String, t: Option<String>) {
        log_debug!("core.error to {id}: {kind:?}: {message}");
        self.out.send(id, FLAG_TERMINAL, types::ERROR, &core_error(kind, message, t)).await;
    }

    /// Serves until shutdown or the end of the channel. `ready_now`: send `core.ready` at once
    /// (sockets); on a serial port it is sent whenever the reader sees a host connect.
    pub async fn serve(self: Arc<Self>, mut inbound: mpsc::Receiver<Inbound>, ready_now: bool) -> Ending {
        crate::reaper::start();
        if ready_now {
            self.send_ready().await;
        }
        while let Some(event) = inbound.recv().await {
            match event {
                Inbound::Frame(frame) => {
                    if self.handle(frame).await == Some(Ending::Shutdown) {
                        self.shutdown_sessions();
                        return Ending::Shutdown;
                    }
                }
                Inbound::Fatal(e) => {
                    log_warn!("agent channel: {e}; input dropped");
                    self.error(0, ErrorKind::MalformedMessage, e.to_string(), None).await;
                }
                Inbound::HostConnected => self.send_ready().await,
                Inbound::Closed => break,
            }
        }
        self.shutdown_sessions();
        Ending::Closed
    }

    fn shutdown_sessions(&self) {
        let st = self.state();
        for s in st.sessions.values() {
            if let Session::Exec { pid, .. } = s {
                kill_group(*pid, libc::SIGKILL);
            }
        }
    }

    async fn handle(self: &Arc<Self>, frame: Frame) -> Option<Ending> {
        let id = frame.id;
        let env = match Envelope::decode(&frame.body) {
            Ok(env) => env,
            Err(e) => {
                self.error(id, ErrorKind::MalformedMessage, e.to_string(), None).await;
                return None;
            }
        };
        let msg = match HostMessage::decode(&env, frame.flags) {
            Ok(msg) => msg,
            Err(e) => {
                let kind = match &e {
                    IncomingError::UnsupportedType(_) => ErrorKind::UnsupportedMessageType,
                    IncomingError::InvalidPayload(_) => ErrorKind::InvalidPayload,
                    IncomingError::InvalidFlags { .. } | IncomingError::UnknownFlags { .. } => ErrorKind::InvalidFlags,
                };
                self.error(id, kind, e.to_string(), Some(env.t.clone())).await;
                return None;
            }
        };
        if msg.starts_session() && self.state().sessions.contains_key(&id) {
            let message = format!("id {id} already has an open session");
            self.error(id, ErrorKind::InvalidSession, message, Some(env.t)).await;
            return None;
        }
        match msg {
            HostMessage::Ping => {
                self.out.send(id, FLAG_TERMINAL, types::PONG, &Empty {}).await;
            }
            HostMessage::Touch => {
                let activity_seq = self.touch();
                self.out.send(id, FLAG_TERMINAL, types::TOUCHED, &Touched { activity_seq }).await;
            }
            HostMessage::Shutdown => {
                log_info!("core.shutdown received");
                return Some(Ending::Shutdown);
            }
            HostMessage::ClockSync(c) => set_clock(c.unix_time_nanos),
            HostMessage::Forked(f) => {
                set_clock(f.unix_time_nanos);
                crate::boot::reidentify(&f);
            }
            HostMessage::ClientDisconnected(r) => self.client_gone(r.id_start, r.id_end_exclusive),
            HostMessage::Error(e) => log_warn!("host reported {:?} on id {id}: {}", e.kind, e.message),
            HostMessage::ExecRequest(req) => {
                self.touch();
                self.start_exec(id, req).await;
            }
            HostMessage::FsRequest(req) => {
                self.touch();
                self.start_fs(id, req.op).await;
            }
            HostMessage::TcpConnect(c) => {
                self.touch();
                let (tx, rx) = mpsc::channel(tcp::QUEUE);
                self.state().sessions.insert(id, Session::Tcp { cmds: Some(tx) });
                let (server, out) = (self.clone(), self.out.clone());
                tokio::spawn(async move {
                    tcp::run(id, c.host, c.port, rx, out).await;
                    server.state().finish(id);
                });
            }
            HostMessage::Claim(claim) => match self.claim(&claim) {
                Ok(()) => {
                    self.out.send(id, FLAG_TERMINAL, types::CLAIMED, &Empty {}).await;
                }
                Err(e) => self.error(id, ErrorKind::InvalidPayload, e.to_string(), Some(env.t.clone())).await,
            },
            other => self.forward(id, other, &env.t).await,
        }
        None
    }

    /// Routes a frame that belongs to a running session.
    async fn forward(&self, id: u32, msg: HostMessage, t: &str) {
        enum Route {
            Bytes(mpsc::Sender<Vec<u8>>, Vec<u8>),
            Stdin(mpsc::Sender<Vec<u8>>, Vec<u8>),
            Tcp(mpsc::Sender<TcpCmd>, TcpCmd),
            Done,
            Unknown,
            Mismatch,
        }
        let route = {
            let st = self.state();
            match (st.sessions.get(&id), msg) {
                (Some(Session::Exec { stdin, .. }), HostMessage::ExecStdin(d)) => match stdin {
                    Some(tx) => Route::Stdin(tx.clone(), d.data),
                    None => Route::Done, // input stalled earlier: dropped, already reported
                },
                (Some(Session::Exec { pty, pid, .. }), HostMessage::ExecResize(r)) => {
                    match pty {
                        Some(fd) => {
                            if let Err(e) = spawn::set_winsize(fd.as_raw_fd(), r.rows, r.cols) {
                                log_debug!("resize exec {id} (pid {pid}): {e}");
                            }
                        }
                        None => log_debug!("resize of exec {id} without a pty ignored"),
                    }
                    Route::Done
                }
                (Some(Session::Exec { pid, .. }), HostMessage::ExecSignal(s)) => {
                    if (1..=64).contains(&s.signal) {
                        kill_group(*pid, s.signal);
                    }
                    Route::Done
                }
                (Some(Session::FsWrite { data }), HostMessage::FsData(d)) => Route::Bytes(data.clone(), d.data),
                (
                    Some(Session::Tcp { cmds: None }),
                    HostMessage::TcpData(_) | HostMessage::TcpEof | HostMessage::TcpClose,
                ) => Route::Done,
                (Some(Session::Tcp { cmds: Some(tx) }), HostMessage::TcpData(d)) => {
                    Route::Tcp(tx.clone(), TcpCmd::Data(d.data))
                }
                (Some(Session::Tcp { cmds: Some(tx) }), HostMessage::TcpEof) => Route::Tcp(tx.clone(), TcpCmd::Eof),
                (Some(Session::Tcp { cmds: Some(tx) }), HostMessage::TcpClose) => Route::Tcp(tx.clone(), TcpCmd::Close),
                (None, _) if st.recent_set.contains(&id) => Route::Done,
                (None, _) => Route::Unknown,
                (Some(_), _) => Route::Mismatch,
            }
        };
        match route {
            Route::Bytes(tx, data) => {
                let _ = tx.send(data).await;
            }
            Route::Stdin(tx, data) => {
                if tokio::time::timeout(self.stall_after, tx.send(data)).await.is_err() {
                    self.stall(id).await;
                }
            }
            Route::Tcp(tx, cmd) => {
                if tokio::time::timeout(self.stall_after, tx.send(cmd)).await.is_err() {
                    self.stall(id).await;
                }
            }
            Route::Done => {}
            Route::Unknown => {
                self.error(id, ErrorKind::InvalidSession, format!("no open session with id {id}"), Some(t.into()))
                    .await;
            }
            Route::Mismatch => {
                let message = format!("{t} does not apply to the session open on id {id}");
                self.error(id, ErrorKind::InvalidSession, message, Some(t.into())).await;
            }
        }
    }

    /// A session's input queue stayed full for `stall_after`: its consumer (a command not
    /// reading stdin, a peer not reading its socket) holds up every other session, because the
    /// dispatcher waits. Stop feeding it: drop its sender (the queued input is still
    /// delivered, then its stdin is closed / the connection is closed) and drop further input.
    async fn stall(&self, id: u32) {
        let exec = {
            let mut st = self.state();
            match st.sessions.get_mut(&id) {
                Some(Session::Exec { stdin, .. }) => {
                    *stdin = None;
                    true
                }
                Some(Session::Tcp { cmds }) => {
                    *cmds = None;
                    false
                }
                _ => return,
            }
        };
        log_warn!("session {id}: input not consumed for {:?}; dropping further input", self.stall_after);
        if exec {
            let msg = ExecStdinError {
                errno: None,
                errno_name: None,
                message: format!(
                    "the command did not read its stdin for {:?}; further input is dropped and its stdin will be \
                     closed once the queued input is consumed",
                    self.stall_after
                ),
            };
            self.out.send(id, 0, types::EXEC_STDIN_ERROR, &msg).await;
        }
    }

    fn client_gone(&self, start: u32, end: u32) {
        let mut st = self.state();
        let ids: Vec<u32> = st.sessions.keys().copied().filter(|id| (start..end).contains(id)).collect();
        for id in &ids {
            match st.sessions.get(id) {
                Some(Session::Exec { pid, .. }) => kill_group(*pid, libc::SIGKILL),
                Some(Session::Stream { task }) => {
                    if let Some(t) = task {
                        t.abort();
                    }
                    st.finish(*id);
                }
                Some(_) => st.finish(*id),
                None => {}
            }
        }
        drop(st);
        let closed = self.handles.lock().unwrap_or_else(|p| p.into_inner()).close_owned_by(start, end);
        log_info!("client [{start}, {end}) gone: {} session(s) ended, {closed} handle(s) closed", ids.len());
    }

    fn identity(&self, spec: Option<&str>) -> Result<Identity, SpawnError> {
        match spec {
            Some(spec) => UserDb::load(std::path::Path::new("/"))
                .resolve(spec)
                .map_err(|e| SpawnError::new(ExecFailureKind::UserSetupFailed, Stage::User, e.to_string())),
            None => {
                // SAFETY: plain getters.
                let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
                if uid == 0 {
                    Ok(Identity::root())
                } else {
                    Ok(Identity { uid, gid, groups: vec![gid], name: None, home: None })
                }
            }
        }
    }

    fn defaults(&self) -> Defaults {
        self.defaults.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `kubesandbox.claim`: files and identity first; the environment only once they are in.
    fn claim(&self, claim: &Claim) -> Result<(), crate::claim::ClaimError> {
        crate::claim::apply(claim)?;
        let mut defaults = self.defaults.lock().unwrap_or_else(|p| p.into_inner());
        *defaults = Defaults::new(&claim.env, defaults.workdir.clone(), defaults.user.clone(), defaults.shell.clone());
        log_info!(
            "claimed: hostname {}, {} env entries, {} script(s)",
            claim.hostname,
            claim.env.len(),
            claim.scripts.len()
        );
        Ok(())
    }

    fn prepare(&self, req: &ExecRequest) -> Result<Prepared, SpawnError> {
        let defaults = self.defaults();
        let identity = self.identity(req.user.as_deref().or(defaults.user.as_deref()))?;
        let home = identity.home.as_ref().map(|h| h.to_string_lossy().into_owned());
        let env = defaults.exec_env(&req.env, home.as_deref(), identity.name.as_deref(), req.tty);
        let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("");
        let program = spawn::resolve_command(&req.cmd, path_var, std::path::Path::new("/"))?;
        let cwd = req
            .cwd
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| defaults.workdir.clone())
            .or_else(|| home.clone().filter(|h| std::path::Path::new(h).is_dir()))
            .unwrap_or_else(|| "/".into());
        Prepared::new(&program, req, &env, &cwd, identity)
    }

    async fn start_exec(self: &Arc<Self>, id: u32, req: ExecRequest) {
        let child = self.prepare(&req).and_then(|p| spawn::spawn(&p));
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                log_debug!("exec {id} {:?} failed: {}", req.cmd, e.message);
                let failed = ExecFailed {
                    kind: e.kind,
                    errno: e.errno,
                    errno_name: e.errno.map(|n| crate::sys::errno_name(n).to_string()),
                    message: e.message,
                    stage: Some(e.stage.as_str().to_string()),
                };
                self.state().finish(id);
                self.out.send(id, FLAG_TERMINAL, types::EXEC_FAILED, &failed).await;
                return;
            }
        };
        let pid = child.pid;
        log_debug!("exec {id}: {:?} started as pid {pid} (tty: {})", req.cmd, req.tty);
        let (stdin_tx, stdin_rx) = mpsc::channel(exec_session::STDIN_QUEUE);
        let spawn::Child { stdin, stdout, stderr, pty, exit, .. } = child;
        let is_pty = pty.is_some();
        self.state().sessions.insert(id, Session::Exec { pid, stdin: Some(stdin_tx), pty: pty.map(Arc::new) });
        self.out.send(id, 0, types::EXEC_STARTED, &ExecStarted { pid: pid as u32 }).await;
        tokio::spawn(exec_session::stdin_writer(stdin, is_pty, stdin_rx, self.out.clone(), id));
        let server = self.clone();
        let on_done: Arc<dyn Fn() + Send + Sync> = Arc::new(move || server.state().finish(id));
        tokio::spawn(exec_session::run(stdout, stderr, exit, self.out.clone(), id, on_done));
    }

    async fn start_fs(self: &Arc<Self>, id: u32, op: FsOp) {
        match op {
            FsOp::Read { handle, offset, len } => self.start_fs_read(id, handle, offset, len).await,
            FsOp::Write { handle, offset, len } => self.start_fs_write(id, handle, offset, len).await,
            op => {
                self.state().sessions.insert(id, Session::Stream { task: None });
                let (server, out) = (self.clone(), self.out.clone());
                let (handles, base) = (self.handles.clone(), self.fs_base.clone());
                tokio::spawn(async move {
                    let name = op.name();
                    let resp = tokio::task::spawn_blocking(move || gfs::execute(&op, id, &base, &handles))
                        .await
                        .unwrap_or_else(|e| gfs::failed(format!("{name}: internal error: {e}")));
                    server.state().finish(id);
                    out.send(id, FLAG_TERMINAL, types::FS_RESPONSE, &resp).await;
                });
            }
        }
    }

    /// Looks up a file handle for a streaming op; answers the error itself when there is none.
    async fn stream_file(&self, id: u32, handle: u64) -> Option<(Arc<std::fs::File>, PathBuf)> {
        let file = self.handles.lock().unwrap_or_else(|p| p.into_inner()).file(handle);
        match file {
            Ok(f) => Some(f),
            Err(e) => {
                self.state().finish(id);
                self.out.send(id, FLAG_TERMINAL, types::FS_RESPONSE, &gfs::failed(e)).await;
                None
            }
        }
    }

    /// Ends a streaming fs session with its terminal response (nothing when nobody listens).
    async fn finish_stream(&self, id: u32, result: Result<Result<(), String>, fs_stream::Gone>) {
        self.state().finish(id);
        let resp = match result {
            Ok(Ok(())) => FsResponse { ok: true, error: None, data: None },
            Ok(Err(e)) => gfs::failed(e),
            Err(_) => return,
        };
        self.out.send(id, FLAG_TERMINAL, types::FS_RESPONSE, &resp).await;
    }

    async fn start_fs_read(self: &Arc<Self>, id: u32, handle: u64, offset: u64, len: Option<u64>) {
        let Some((file, path)) = self.stream_file(id, handle).await else { return };
        self.state().sessions.insert(id, Session::Stream { task: None });
        let server = self.clone();
        let task = tokio::spawn(async move {
            let result = fs_stream::read_to_host(file, &path, offset, len, &server.out, id).await;
            server.finish_stream(id, result).await;
        });
        if let Some(Session::Stream { task: slot }) = self.state().sessions.get_mut(&id) {
            *slot = Some(task.abort_handle());
        }
    }

    async fn start_fs_write(self: &Arc<Self>, id: u32, handle: u64, offset: u64, len: Option<u64>) {
        let Some((file, path)) = self.stream_file(id, handle).await else { return };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(fs_stream::WRITE_QUEUE);
        self.state().sessions.insert(id, Session::FsWrite { data: tx });
        let server = self.clone();
        tokio::spawn(async move {
            let result = fs_stream::write_from_host(file, &path, offset, len, &mut rx).await;
            server.finish_stream(id, result).await;
        });
    }
}

/// Signals a child's process group (it leads one: the child calls `setsid`), falling back to
/// the process itself.
pub fn kill_group(pid: i32, signal: i32) {
    if crate::sys::kill(-pid, signal).is_err() {
        let _ = crate::sys::kill(pid, signal);
    }
}

fn set_clock(unix_nanos: u64) {
    let ts =
        libc::timespec { tv_sec: (unix_nanos / 1_000_000_000) as i64, tv_nsec: (unix_nanos % 1_000_000_000) as i64 };
    // SAFETY: valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        log_warn!("clock sync: {}", std::io::Error::last_os_error());
    }
}
