//! A text rendering of the protocol surface, frozen by `tests/snapshot.rs`.
//!
//! Every message type is listed with its direction and flags, and its payload is rendered from
//! a fully populated sample *as it is encoded on the wire* (field names, CBOR types, enum
//! tags), so renaming a field, changing a type or dropping a variant changes the text even if
//! nobody remembered to update a hand-written list.

use std::fmt::Write as _;

use ciborium::value::Value;
use serde::Serialize;

use crate::codec::{FLAG_SESSION_START, FLAG_SHUTDOWN, FLAG_TERMINAL, MAX_FRAME_LEN};
use crate::messages::*;
use crate::GENERATION;

fn to_value<T: Serialize>(v: &T) -> Value {
    Value::serialized(v).expect("samples serialize")
}

fn render(value: &Value) -> String {
    match value {
        Value::Integer(_) => "int".into(),
        Value::Bytes(_) => "bytes".into(),
        Value::Float(_) => "float".into(),
        Value::Text(_) => "text".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => "null".into(),
        Value::Tag(t, v) => format!("tag{t}({})", render(v)),
        Value::Array(items) => match items.first() {
            Some(first) => format!("[{}]", render(first)),
            None => "[]".into(),
        },
        Value::Map(entries) => {
            let fields: Vec<String> = entries
                .iter()
                .map(|(k, v)| match k {
                    Value::Text(k) => format!("{k}: {}", render(v)),
                    other => format!("{}: {}", render(other), render(v)),
                })
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        _ => "?".into(),
    }
}

fn enum_values<T: Serialize>(values: &[T]) -> String {
    let names: Vec<String> = values
        .iter()
        .map(|v| match to_value(v) {
            Value::Text(s) => s,
            other => render(&other),
        })
        .collect();
    names.join(" | ")
}

fn entry() -> FsEntry {
    FsEntry {
        path: "/p".into(),
        kind: "file".into(),
        size: 1,
        mode: 0o644,
        modified: Some(1),
        uid: 0,
        gid: 0,
        atime: Some(1),
        mtime: Some(1),
    }
}

fn attrs() -> SetAttrs {
    SetAttrs { mode: Some(1), uid: Some(1), gid: Some(1), size: Some(1), atime: Some(1), mtime: Some(1) }
}

/// Every fs operation, fully populated.
pub fn sample_fs_ops() -> Vec<FsOp> {
    let p = || "/p".to_string();
    vec![
        FsOp::Stat { path: p(), follow_symlink: true },
        FsOp::List { path: p() },
        FsOp::Mkdir { path: p(), mode: Some(0o755), user: Some("u".into()) },
        FsOp::Remove { path: p() },
        FsOp::RemoveDir { path: p(), recursive: true },
        FsOp::Copy { src: p(), dst: p() },
        FsOp::Rename { src: p(), dst: p() },
        FsOp::OpenFile {
            path: p(),
            options: OpenOptions {
                read: true,
                write: true,
                append: true,
                create: true,
                truncate: true,
                create_new: true,
                mode: Some(0o644),
                user: Some("u".into()),
            },
        },
        FsOp::Read { handle: 1, offset: 0, len: Some(1) },
        FsOp::Write { handle: 1, offset: 0, len: Some(1) },
        FsOp::CloseHandle { handle: 1 },
        FsOp::RealPath { path: p() },
        FsOp::ReadLink { path: p() },
        FsOp::Symlink { target: p(), link_path: p(), user: Some("u".into()) },
        FsOp::SetStat { path: p(), follow_symlink: true, attrs: attrs() },
        FsOp::OpenDir { path: p() },
        FsOp::ReadDir { handle: 1, limit: Some(1) },
        FsOp::FStat { handle: 1 },
        FsOp::FSetStat { handle: 1, attrs: attrs() },
    ]
}

/// `(type, direction, flags, sample payload)` of every message type we speak.
fn samples() -> Vec<(&'static str, &'static str, u8, Value)> {
    use types::*;
    let data = || b"x".to_vec();
    vec![
        (READY, "G->H", 0, to_value(&Ready { agent_version: Some("v".into()), ..Ready::default() })),
        (PING, "H->G", 0, to_value(&Empty {})),
        (PONG, "G->H", FLAG_TERMINAL, to_value(&Empty {})),
        (TOUCH, "H->G", 0, to_value(&Empty {})),
        (TOUCHED, "G->H", FLAG_TERMINAL, to_value(&Touched { activity_seq: 1 })),
        (SHUTDOWN, "H->G", FLAG_SHUTDOWN, to_value(&Empty {})),
        (CLOCK_SYNC, "H->G", 0, to_value(&ClockSync { unix_time_nanos: 1 })),
        (
            FORKED,
            "H->G",
            0,
            to_value(&Forked {
                hostname: "h".into(),
                machine_id: "0".repeat(32),
                seed: data(),
                unix_time_nanos: 1,
                interfaces: vec![ForkedInterface {
                    old_mac: "52:54:00:00:00:01".into(),
                    mac: "52:54:00:00:00:02".into(),
                    addresses: vec!["10.0.2.15/24".into()],
                    gateway: Some("10.0.2.1".into()),
                }],
            }),
        ),
        (
            ERROR,
            "both",
            FLAG_TERMINAL,
            to_value(&CoreError {
                kind: ErrorKind::InvalidSession,
                message: "m".into(),
                offending_type: Some("t".into()),
            }),
        ),
        (
            RELAY_CLIENT_DISCONNECTED,
            "relay->G",
            0,
            to_value(&RelayClientDisconnected { id_start: 1, id_end_exclusive: 2 }),
        ),
        (
            EXEC_REQUEST,
            "H->G",
            FLAG_SESSION_START,
            to_value(&ExecRequest {
                cmd: "c".into(),
                args: vec!["a".into()],
                env: vec!["K=V".into()],
                cwd: Some("/".into()),
                user: Some("u".into()),
                tty: true,
                rows: 24,
                cols: 80,
                rlimits: vec![Rlimit { resource: "nofile".into(), soft: 1, hard: 1 }],
            }),
        ),
        (EXEC_STARTED, "G->H", 0, to_value(&ExecStarted { pid: 1 })),
        (EXEC_STDOUT, "G->H", 0, to_value(&ExecOutput { data: data() })),
        (EXEC_STDERR, "G->H", 0, to_value(&ExecOutput { data: data() })),
        (EXEC_STDIN, "H->G", 0, to_value(&ExecStdin { data: data() })),
        (
            EXEC_STDIN_ERROR,
            "G->H",
            0,
            to_value(&ExecStdinError { errno: Some(32), errno_name: Some("EPIPE".into()), message: "m".into() }),
        ),
        (EXEC_RESIZE, "H->G", 0, to_value(&ExecResize { rows: 1, cols: 1 })),
        (EXEC_SIGNAL, "H->G", 0, to_value(&ExecSignal { signal: 9 })),
        (EXEC_EXITED, "G->H", FLAG_TERMINAL, to_value(&ExecExited { code: 0 })),
        (
            EXEC_FAILED,
            "G->H",
            FLAG_TERMINAL,
            to_value(&ExecFailed {
                kind: ExecFailureKind::NotFound,
                errno: Some(2),
                errno_name: Some("ENOENT".into()),
                message: "m".into(),
                stage: Some("exec".into()),
            }),
        ),
        (FS_REQUEST, "H->G", FLAG_SESSION_START, to_value(&FsRequest { op: FsOp::List { path: "/".into() } })),
        (
            FS_RESPONSE,
            "G->H",
            FLAG_TERMINAL,
            to_value(&FsResponse { ok: true, error: Some("e".into()), data: Some(FsResponseData::Handle(1)) }),
        ),
        (FS_DATA, "both", 0, to_value(&FsData { data: data() })),
        (TCP_CONNECT, "H->G", FLAG_SESSION_START, to_value(&TcpConnect { host: "h".into(), port: 1 })),
        (TCP_CONNECTED, "G->H", 0, to_value(&Empty {})),
        (TCP_DATA, "both", 0, to_value(&TcpData { data: data() })),
        (TCP_EOF, "both", 0, to_value(&Empty {})),
        (TCP_CLOSE, "H->G", 0, to_value(&Empty {})),
        (TCP_CLOSED, "G->H", FLAG_TERMINAL, to_value(&Empty {})),
        (TCP_FAILED, "G->H", FLAG_TERMINAL, to_value(&TcpFailed { error: "e".into() })),
        (
            CLAIM,
            "H->G",
            0,
            to_value(&Claim {
                env: vec!["K=V".into()],
                hostname: "h".into(),
                machine_id: "m".into(),
                entropy: data(),
                scripts: vec![Script { name: "n".into(), content: data() }],
            }),
        ),
        (CLAIMED, "G->H", FLAG_TERMINAL, to_value(&Empty {})),
    ]
}

fn flag_names(flags: u8) -> &'static str {
    match flags {
        FLAG_TERMINAL => "TERMINAL",
        FLAG_SESSION_START => "SESSION_START",
        FLAG_SHUTDOWN => "SHUTDOWN",
        _ => "-",
    }
}

/// The protocol surface as text (see the module documentation).
pub fn surface() -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# kubesandbox guest agent protocol surface (generated; see tests/snapshot.rs)");
    let _ = writeln!(out, "generation {GENERATION}");
    let _ = writeln!(out, "frame [len u32 BE][id u32 BE][flags u8][CBOR body], len 5..={MAX_FRAME_LEN}");
    let _ = writeln!(out, "flags TERMINAL=0x01 SESSION_START=0x02 SHUTDOWN=0x04 (BULK=0x08 refused)");
    let _ = writeln!(out, "envelope {{v: int, t: text, p: bytes(CBOR payload)}}");
    let _ = writeln!(out, "fs chunk max {FS_CHUNK_MAX}");
    let _ = writeln!(out);
    for (t, dir, flags, payload) in samples() {
        let _ = writeln!(out, "{t} [{dir}] [{}] {}", flag_names(flags), render(&payload));
    }
    let _ = writeln!(out);
    for op in sample_fs_ops() {
        let _ = writeln!(out, "fs.op {}", render(&to_value(&op)));
    }
    let datas = [
        FsResponseData::Stat(entry()),
        FsResponseData::List(vec![entry()]),
        FsResponseData::Handle(1),
        FsResponseData::Path("/p".into()),
    ];
    for d in &datas {
        let _ = writeln!(out, "fs.response.data {}", render(&to_value(d)));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "enum core.error.kind = {}",
        enum_values(&[
            ErrorKind::MalformedMessage,
            ErrorKind::UnsupportedMessageType,
            ErrorKind::UnsupportedProtocolGeneration,
            ErrorKind::InvalidFlags,
            ErrorKind::InvalidPayload,
            ErrorKind::InvalidSession,
        ])
    );
    let _ = writeln!(
        out,
        "enum core.exec.failed.kind = {}",
        enum_values(&[
            ExecFailureKind::NotFound,
            ExecFailureKind::PermissionDenied,
            ExecFailureKind::NotExecutable,
            ExecFailureKind::BadCwd,
            ExecFailureKind::BadArgs,
            ExecFailureKind::ResourceLimit,
            ExecFailureKind::UserSetupFailed,
            ExecFailureKind::OutOfMemory,
            ExecFailureKind::PtySetupFailed,
            ExecFailureKind::Other,
        ])
    );
    out
}
