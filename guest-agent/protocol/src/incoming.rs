//! Typed view of the messages a guest receives: the dispatcher matches on [`HostMessage`].
//!
//! Flag checks live here too, as data: which flags each message type requires, so the agent
//! answers `invalid_flags` uniformly.

use crate::codec::{FLAG_SESSION_START, FLAG_SHUTDOWN, KNOWN_FLAGS};
use crate::envelope::{Envelope, EnvelopeError};
use crate::messages::{types, *};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    Ping,
    Touch,
    Shutdown,
    ClockSync(ClockSync),
    Forked(Forked),
    ClientDisconnected(RelayClientDisconnected),
    ExecRequest(ExecRequest),
    ExecStdin(ExecStdin),
    ExecResize(ExecResize),
    ExecSignal(ExecSignal),
    FsRequest(FsRequest),
    FsData(FsData),
    TcpConnect(TcpConnect),
    TcpData(TcpData),
    TcpEof,
    TcpClose,
    Claim(Claim),
    /// A `core.error` from the host: logged, never answered (no error ping-pong).
    Error(CoreError),
}

/// Why a well-formed envelope is not a message we can act on.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("unsupported message type {0:?}")]
    UnsupportedType(String),
    #[error("{0}")]
    InvalidPayload(#[from] EnvelopeError),
    #[error("{t} needs flags {required:#04x}, got {got:#04x}")]
    InvalidFlags { t: String, required: u8, got: u8 },
    #[error("unknown flag bits {got:#04x} on {t} (bulk transfer is not offered at generation 7)")]
    UnknownFlags { t: String, got: u8 },
}

/// Flags a message type must carry.
pub fn required_flags(t: &str) -> u8 {
    match t {
        types::EXEC_REQUEST | types::FS_REQUEST | types::TCP_CONNECT => FLAG_SESSION_START,
        types::SHUTDOWN => FLAG_SHUTDOWN,
        _ => 0,
    }
}

impl HostMessage {
    /// Decodes the payload of `env` received with `flags`.
    pub fn decode(env: &Envelope, flags: u8) -> Result<Self, IncomingError> {
        let t = env.t.as_str();
        let msg = match t {
            types::PING => HostMessage::Ping,
            types::TOUCH => HostMessage::Touch,
            types::SHUTDOWN => HostMessage::Shutdown,
            types::CLOCK_SYNC => HostMessage::ClockSync(env.payload()?),
            types::FORKED => HostMessage::Forked(env.payload()?),
            types::RELAY_CLIENT_DISCONNECTED => HostMessage::ClientDisconnected(env.payload()?),
            types::EXEC_REQUEST => HostMessage::ExecRequest(env.payload()?),
            types::EXEC_STDIN => HostMessage::ExecStdin(env.payload()?),
            types::EXEC_RESIZE => HostMessage::ExecResize(env.payload()?),
            types::EXEC_SIGNAL => HostMessage::ExecSignal(env.payload()?),
            types::FS_REQUEST => HostMessage::FsRequest(env.payload()?),
            types::FS_DATA => HostMessage::FsData(env.payload()?),
            types::TCP_CONNECT => HostMessage::TcpConnect(env.payload()?),
            types::TCP_DATA => HostMessage::TcpData(env.payload()?),
            types::TCP_EOF => HostMessage::TcpEof,
            types::TCP_CLOSE => HostMessage::TcpClose,
            types::CLAIM => HostMessage::Claim(env.payload()?),
            types::ERROR => HostMessage::Error(env.payload()?),
            other => return Err(IncomingError::UnsupportedType(other.to_string())),
        };
        if flags & !KNOWN_FLAGS != 0 {
            return Err(IncomingError::UnknownFlags { t: t.into(), got: flags });
        }
        let required = required_flags(t);
        if flags & required != required {
            return Err(IncomingError::InvalidFlags { t: t.into(), required, got: flags });
        }
        Ok(msg)
    }

    /// Whether this message opens a new session.
    pub fn starts_session(&self) -> bool {
        matches!(self, HostMessage::ExecRequest(_) | HostMessage::FsRequest(_) | HostMessage::TcpConnect(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{FLAG_BULK, FLAG_TERMINAL};

    fn env<T: serde::Serialize>(t: &str, p: &T) -> Envelope {
        Envelope::wrap(t, p).unwrap()
    }

    #[test]
    fn decodes_the_sdk_exec_request() {
        let req = ExecRequest {
            cmd: "echo".into(),
            args: vec!["hi".into()],
            env: vec![],
            cwd: Some("/".into()),
            user: None,
            tty: false,
            rows: 24,
            cols: 80,
            rlimits: vec![],
        };
        let msg = HostMessage::decode(&env(types::EXEC_REQUEST, &req), FLAG_SESSION_START).unwrap();
        assert_eq!(msg, HostMessage::ExecRequest(req));
    }

    #[test]
    fn session_start_without_its_flag_is_invalid_flags() {
        let e = env(types::FS_REQUEST, &FsRequest { op: FsOp::List { path: "/".into() } });
        assert!(matches!(HostMessage::decode(&e, 0), Err(IncomingError::InvalidFlags { .. })));
    }

    #[test]
    fn bulk_flag_is_refused() {
        let e = env(types::PING, &Empty {});
        assert!(matches!(HostMessage::decode(&e, FLAG_BULK), Err(IncomingError::UnknownFlags { .. })));
        assert!(HostMessage::decode(&e, FLAG_TERMINAL).is_ok());
    }

    #[test]
    fn unknown_type_is_reported_by_name() {
        let e = env("core.bulk.credit", &Empty {});
        let err = HostMessage::decode(&e, 0).unwrap_err();
        assert!(matches!(err, IncomingError::UnsupportedType(ref t) if t == "core.bulk.credit"));
    }

    #[test]
    fn fs_op_is_externally_tagged() {
        let mut p = Vec::new();
        use ciborium::value::Value;
        let t = |s: &str| Value::Text(s.into());
        let flags = ["read", "write", "append", "create", "truncate", "create_new"]
            .iter()
            .map(|k| (t(k), Value::Bool(matches!(*k, "write" | "create" | "truncate"))));
        let mut options: Vec<(Value, Value)> = flags.collect();
        options.push((t("mode"), Value::Null));
        options.push((t("user"), Value::Null));
        let open = Value::Map(vec![(t("path"), t("/tmp/x")), (t("options"), Value::Map(options))]);
        let v = Value::Map(vec![(t("op"), Value::Map(vec![(t("OpenFile"), open)]))]);
        ciborium::ser::into_writer(&v, &mut p).unwrap();
        let e = Envelope { v: 10, t: types::FS_REQUEST.into(), p: serde_bytes::ByteBuf::from(p) };
        match HostMessage::decode(&e, FLAG_SESSION_START).unwrap() {
            HostMessage::FsRequest(FsRequest { op: FsOp::OpenFile { path, options } }) => {
                assert_eq!(path, "/tmp/x");
                assert!(options.write && options.create && options.truncate && !options.read);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
