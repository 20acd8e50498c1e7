//! Payload types of every generation-7 message (`p` of the envelope).
//!
//! Conventions of the wire, which serde gives us by default or by attribute: text map keys,
//! unknown keys ignored, absent optional fields read as `None`, byte fields are CBOR byte
//! strings (`serde_bytes`), Rust enums are externally tagged (`{"OpenFile": {...}}`), kinds are
//! snake_case strings. Field order and names are frozen by the snapshot test
//! (`tests/snapshot.rs`, `schema/gen-7-surface.txt`).

use serde::{Deserialize, Serialize};

/// Message type names, as they appear in the envelope's `t`.
pub mod types {
    pub const READY: &str = "core.ready";
    pub const PING: &str = "core.ping";
    pub const PONG: &str = "core.pong";
    pub const TOUCH: &str = "core.touch";
    pub const TOUCHED: &str = "core.touched";
    pub const SHUTDOWN: &str = "core.shutdown";
    pub const ERROR: &str = "core.error";
    pub const CLOCK_SYNC: &str = "core.clock.sync";
    pub const FORKED: &str = "core.forked";
    pub const RELAY_CLIENT_DISCONNECTED: &str = "core.relay.client.disconnected";
    pub const EXEC_REQUEST: &str = "core.exec.request";
    pub const EXEC_STARTED: &str = "core.exec.started";
    pub const EXEC_STDOUT: &str = "core.exec.stdout";
    pub const EXEC_STDERR: &str = "core.exec.stderr";
    pub const EXEC_STDIN: &str = "core.exec.stdin";
    pub const EXEC_STDIN_ERROR: &str = "core.exec.stdin.error";
    pub const EXEC_RESIZE: &str = "core.exec.resize";
    pub const EXEC_SIGNAL: &str = "core.exec.signal";
    pub const EXEC_EXITED: &str = "core.exec.exited";
    pub const EXEC_FAILED: &str = "core.exec.failed";
    pub const FS_REQUEST: &str = "core.fs.request";
    pub const FS_RESPONSE: &str = "core.fs.response";
    pub const FS_DATA: &str = "core.fs.data";
    pub const TCP_CONNECT: &str = "core.tcp.connect";
    pub const TCP_CONNECTED: &str = "core.tcp.connected";
    pub const TCP_DATA: &str = "core.tcp.data";
    pub const TCP_EOF: &str = "core.tcp.eof";
    pub const TCP_CLOSE: &str = "core.tcp.close";
    pub const TCP_CLOSED: &str = "core.tcp.closed";
    pub const TCP_FAILED: &str = "core.tcp.failed";
    /// kubesandbox's own: a pool VM handed to the Sandbox that claimed it (node agent only).
    pub const CLAIM: &str = "kubesandbox.claim";
    pub const CLAIMED: &str = "kubesandbox.claimed";
}

/// Largest `data` of one `core.fs.data` chunk.
pub const FS_CHUNK_MAX: usize = 3 * 1024 * 1024;

/// Payload of messages that carry nothing (`core.ping`, `core.pong`, `core.touch`,
/// `core.shutdown`, `core.tcp.connected`, `core.tcp.eof`, `core.tcp.close`, `core.tcp.closed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `core.ready`: the guest's first frame. Times are nanoseconds of `CLOCK_BOOTTIME`:
/// `boot_time_ns` when the agent started (the kernel's share), `init_time_ns` spent in the
/// agent's PID-1 setup, `ready_time_ns` just before this frame was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub boot_time_ns: u64,
    pub init_time_ns: u64,
    pub ready_time_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touched {
    pub activity_seq: u64,
}

/// `core.clock.sync`: step the guest's realtime clock to the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSync {
    pub unix_time_nanos: u64,
}

/// `core.forked`: this guest runs from a copy of another guest's live state; take the new
/// identity: hostname, machine-id, entropy, clock, and the NIC's new MAC with its network
/// configuration applied again (its neighbours and routes are those of the source's network).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forked {
    pub hostname: String,
    /// 32 lowercase hex digits, written to `/etc/machine-id`.
    pub machine_id: String,
    /// Fresh random bytes from the host, mixed into the guest's pool (the clone shares the
    /// source's pool state).
    #[serde(with = "serde_bytes")]
    pub seed: Vec<u8>,
    pub unix_time_nanos: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<ForkedInterface>,
}

/// A NIC of a forked guest: found by the source's MAC, given `mac`, its addresses and gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkedInterface {
    pub old_mac: String,
    pub mac: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// `kubesandbox.claim`: what a booted pool VM takes on when a Sandbox claims it, as if it had
/// booted with it: the default environment of every exec (replaces the boot one), the
/// hostname, the scripts under `/.msb/scripts` (replace the boot ones), and a fresh identity
/// (machine-id, entropy mixed into the kernel's pool). Answered by `kubesandbox.claimed` (T).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub env: Vec<String>,
    pub hostname: String,
    pub machine_id: String,
    #[serde(with = "serde_bytes")]
    pub entropy: Vec<u8>,
    pub scripts: Vec<Script>,
}

/// One script of a [`Claim`]: written to `/.msb/scripts/<name>` with mode 0755.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    pub name: String,
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    MalformedMessage,
    UnsupportedMessageType,
    UnsupportedProtocolGeneration,
    InvalidFlags,
    InvalidPayload,
    InvalidSession,
}

/// `core.error` (terminal): a recoverable protocol error tied to one correlation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offending_type: Option<String>,
}

/// `core.relay.client.disconnected`: the relay lost the client owning `[id_start, id_end_exclusive)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayClientDisconnected {
    pub id_start: u32,
    pub id_end_exclusive: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Lowercase resource name without `RLIMIT_`: `nofile`, `nproc`, `as`, `cpu`, ...
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

fn default_rows() -> u16 {
    24
}

fn default_cols() -> u16 {
    80
}

/// `core.exec.request` (session start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=VALUE` entries applied over the sandbox's default environment.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// A name from `/etc/passwd`, `uid`, `uid:gid` or `name:group`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default = "default_rows")]
    pub rows: u16,
    #[serde(default = "default_cols")]
    pub cols: u16,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    pub pid: u32,
}

/// `core.exec.stdin`; empty `data` closes the child's stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStdin {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `core.exec.stdout` and `core.exec.stderr`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `core.exec.stdin.error` (not terminal): writing to the child's stdin failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStdinError {
    #[serde(default)]
    pub errno: Option<i32>,
    #[serde(default)]
    pub errno_name: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSignal {
    pub signal: i32,
}

/// `core.exec.exited` (terminal); a child killed by signal N reports `128 + N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExited {
    pub code: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecFailureKind {
    NotFound,
    PermissionDenied,
    NotExecutable,
    BadCwd,
    BadArgs,
    ResourceLimit,
    UserSetupFailed,
    OutOfMemory,
    PtySetupFailed,
    Other,
}

/// `core.exec.failed` (terminal): the command never ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecFailed {
    pub kind: ExecFailureKind,
    #[serde(default)]
    pub errno: Option<i32>,
    #[serde(default)]
    pub errno_name: Option<String>,
    pub message: String,
    #[serde(default)]
    pub stage: Option<String>,
}

/// Attributes of `SetStat` / `FSetStat`; `None` leaves an attribute alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttrs {
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub atime: Option<i64>,
    #[serde(default)]
    pub mtime: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenOptions {
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub append: bool,
    #[serde(default)]
    pub create: bool,
    #[serde(default)]
    pub truncate: bool,
    #[serde(default)]
    pub create_new: bool,
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
}

/// The operation of a `core.fs.request`, externally tagged: `{"Stat": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    Stat {
        path: String,
        #[serde(default)]
        follow_symlink: bool,
    },
    List {
        path: String,
    },
    Mkdir {
        path: String,
        #[serde(default)]
        mode: Option<u32>,
        #[serde(default)]
        user: Option<String>,
    },
    Remove {
        path: String,
    },
    RemoveDir {
        path: String,
        #[serde(default)]
        recursive: bool,
    },
    Copy {
        src: String,
        dst: String,
    },
    Rename {
        src: String,
        dst: String,
    },
    OpenFile {
        path: String,
        options: OpenOptions,
    },
    Read {
        handle: u64,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        len: Option<u64>,
    },
    Write {
        handle: u64,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        len: Option<u64>,
    },
    CloseHandle {
        handle: u64,
    },
    RealPath {
        path: String,
    },
    ReadLink {
        path: String,
    },
    Symlink {
        target: String,
        link_path: String,
        #[serde(default)]
        user: Option<String>,
    },
    SetStat {
        path: String,
        #[serde(default)]
        follow_symlink: bool,
        attrs: SetAttrs,
    },
    OpenDir {
        path: String,
    },
    ReadDir {
        handle: u64,
        #[serde(default)]
        limit: Option<u32>,
    },
    FStat {
        handle: u64,
    },
    FSetStat {
        handle: u64,
        attrs: SetAttrs,
    },
}

impl FsOp {
    /// Variant name, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            FsOp::Stat { .. } => "Stat",
            FsOp::List { .. } => "List",
            FsOp::Mkdir { .. } => "Mkdir",
            FsOp::Remove { .. } => "Remove",
            FsOp::RemoveDir { .. } => "RemoveDir",
            FsOp::Copy { .. } => "Copy",
            FsOp::Rename { .. } => "Rename",
            FsOp::OpenFile { .. } => "OpenFile",
            FsOp::Read { .. } => "Read",
            FsOp::Write { .. } => "Write",
            FsOp::CloseHandle { .. } => "CloseHandle",
            FsOp::RealPath { .. } => "RealPath",
            FsOp::ReadLink { .. } => "ReadLink",
            FsOp::Symlink { .. } => "Symlink",
            FsOp::SetStat { .. } => "SetStat",
            FsOp::OpenDir { .. } => "OpenDir",
            FsOp::ReadDir { .. } => "ReadDir",
            FsOp::FStat { .. } => "FStat",
            FsOp::FSetStat { .. } => "FSetStat",
        }
    }
}

/// `core.fs.request` (session start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRequest {
    pub op: FsOp,
}

/// One directory entry or stat result. `kind` is `file`, `dir`, `symlink` or `other`; times
/// are Unix seconds (`modified` duplicates `mtime` for older clients).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEntry {
    pub path: String,
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    #[serde(default)]
    pub modified: Option<i64>,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub atime: Option<i64>,
    #[serde(default)]
    pub mtime: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsResponseData {
    Stat(FsEntry),
    List(Vec<FsEntry>),
    Handle(u64),
    Path(String),
}

/// `core.fs.response` (terminal).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsResponse {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub data: Option<FsResponseData>,
}

/// `core.fs.data`: at most [`FS_CHUNK_MAX`] bytes; empty ends a host-to-guest write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsData {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `core.tcp.connect` (session start): open a TCP connection from inside the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnect {
    pub host: String,
    pub port: u16,
}

/// `core.tcp.data`, both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpData {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `core.tcp.failed` (terminal).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpFailed {
    pub error: String,
}
