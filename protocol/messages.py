"""Message bodies of the agent protocol: ``{"v": generation, "t": type, "p": CBOR(payload)}``.

The payload is CBOR encoded twice on purpose (``p`` is a byte string holding a CBOR map): the
relay and routers can read ``t`` without decoding a 3 MiB data chunk's payload. Payloads are
plain ``dict[str, Any]`` here; the typed builders below produce exactly the shapes the
microsandbox SDK sends (see ``msb-wire-transcript-gen7.txt``), and parsing stays lenient
(unknown keys ignored, absent optional keys are ``None``) as the protocol requires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import cbor2

from kubesandbox_protocol.frame import FLAG_SESSION_START, FLAG_SHUTDOWN, FLAG_TERMINAL, Frame

GENERATION = 7
"""The generation our guest agent advertises and our clients stamp."""

MAX_FS_CHUNK = 3 * 1024 * 1024
"""Largest ``core.fs.data`` chunk either side may send."""


class MessageType(StrEnum):
    READY = "core.ready"
    PING = "core.ping"
    PONG = "core.pong"
    FORKED = "core.forked"
    TOUCH = "core.touch"
    TOUCHED = "core.touched"
    SHUTDOWN = "core.shutdown"
    ERROR = "core.error"
    RELAY_CLIENT_DISCONNECTED = "core.relay.client.disconnected"
    EXEC_REQUEST = "core.exec.request"
    EXEC_STARTED = "core.exec.started"
    EXEC_STDOUT = "core.exec.stdout"
    EXEC_STDERR = "core.exec.stderr"
    EXEC_STDIN = "core.exec.stdin"
    EXEC_STDIN_ERROR = "core.exec.stdin.error"
    EXEC_RESIZE = "core.exec.resize"
    EXEC_SIGNAL = "core.exec.signal"
    EXEC_EXITED = "core.exec.exited"
    EXEC_FAILED = "core.exec.failed"
    FS_REQUEST = "core.fs.request"
    FS_RESPONSE = "core.fs.response"
    FS_DATA = "core.fs.data"
    CLAIM = "kubesandbox.claim"
    """kubesandbox's own: a pool VM handed to the Sandbox that claimed it (node agent only)."""
    CLAIMED = "kubesandbox.claimed"


class ErrorKind(StrEnum):
    MALFORMED_MESSAGE = "malformed_message"
    UNSUPPORTED_MESSAGE_TYPE = "unsupported_message_type"
    UNSUPPORTED_PROTOCOL_GENERATION = "unsupported_protocol_generation"
    INVALID_FLAGS = "invalid_flags"
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_SESSION = "invalid_session"


class BodyError(ValueError):
    """A frame body is not the ``{v, t, p}`` CBOR map the protocol requires."""


@dataclass(frozen=True, slots=True)
class Body:
    v: int
    t: str
    payload: dict[str, Any]


def encode_body(t: str, payload: Mapping[str, Any] | None = None, v: int = GENERATION) -> bytes:
    inner = cbor2.dumps(dict(payload or {}))
    return bytes(cbor2.dumps({"v": v, "t": str(t), "p": inner}))


def decode_envelope(body: bytes) -> tuple[int, str, bytes]:
    """Reads ``v``, ``t`` and the raw payload bytes, without decoding the payload."""
    try:
        outer = cbor2.loads(body)
    except Exception as exc:  # cbor2 raises several unrelated types on garbage
        raise BodyError(f"body is not CBOR: {exc}") from exc
    if not isinstance(outer, dict):
        raise BodyError("body is not a CBOR map")
    v, t, p = outer.get("v"), outer.get("t"), outer.get("p")
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise BodyError("body has no unsigned integer 'v'")
    if not isinstance(t, str):
        raise BodyError("body has no text 't'")
    if p is None:
        p = b""
    if not isinstance(p, bytes):
        raise BodyError("body 'p' is not a byte string")
    return v, t, p


def decode_body(body: bytes) -> Body:
    v, t, p = decode_envelope(body)
    if not p:
        return Body(v, t, {})
    try:
        payload = cbor2.loads(p)
    except Exception as exc:
        raise BodyError(f"payload of {t} is not CBOR: {exc}") from exc
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise BodyError(f"payload of {t} is not a CBOR map")
    return Body(v, t, payload)


def message_frame(
    id: int, t: str, payload: Mapping[str, Any] | None = None, flags: int = 0
) -> Frame:
    return Frame(id, flags, encode_body(t, payload))


# --- builders: exactly what the SDK sends -------------------------------------------------


def exec_request(
    cmd: str,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | Sequence[str] = (),
    cwd: str | None = None,
    user: str | None = None,
    tty: bool = False,
    rows: int = 24,
    cols: int = 80,
    rlimits: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    env_list = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env)
    return {
        "cmd": cmd,
        "args": list(args),
        "env": env_list,
        "cwd": cwd,
        "user": user,
        "tty": tty,
        "rows": rows,
        "cols": cols,
        "rlimits": [dict(r) for r in rlimits],
    }


def open_options(
    *,
    read: bool = False,
    write: bool = False,
    append: bool = False,
    create: bool = False,
    truncate: bool = False,
    create_new: bool = False,
    mode: int | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    return {
        "read": read,
        "write": write,
        "append": append,
        "create": create,
        "truncate": truncate,
        "create_new": create_new,
        "mode": mode,
        "user": user,
    }


def fs_op(variant: str, **fields: Any) -> dict[str, Any]:
    """A ``core.fs.request`` payload: the op as an externally tagged map."""
    return {"op": {variant: fields}}


__all__ = [
    "FLAG_SESSION_START",
    "FLAG_SHUTDOWN",
    "FLAG_TERMINAL",
    "GENERATION",
    "MAX_FS_CHUNK",
    "Body",
    "BodyError",
    "ErrorKind",
    "MessageType",
    "decode_body",
    "decode_envelope",
    "encode_body",
    "exec_request",
    "fs_op",
    "message_frame",
    "open_options",
]
