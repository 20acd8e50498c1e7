"""Python side of microsandbox's agent protocol (generation 7), as spoken by our guest agent.

``frame`` is the byte-level codec (``[len][id][flags][CBOR body]``) shared by the relay and
every client; ``messages`` names the message types and builds/parses the CBOR bodies;
``client`` is an asyncio client for a relay socket (exec with streaming stdio, filesystem ops)
that the CLI and the tests use. See ``/work/shared/design/PROTOCOL.md`` §1-2 for the wire.
"""

from kubesandbox_protocol.client import (
    AgentClient,
    AgentError,
    ExecFailedError,
    ExecResult,
    ExecSession,
    FsError,
)
from kubesandbox_protocol.frame import (
    FLAG_SESSION_START,
    FLAG_SHUTDOWN,
    FLAG_TERMINAL,
    MAX_FRAME_LEN,
    Frame,
    FrameDecoder,
    FrameError,
    decode_frame,
    encode_frame,
)
from kubesandbox_protocol.messages import GENERATION, Body, MessageType, decode_body, encode_body

__all__ = [
    "FLAG_SESSION_START",
    "FLAG_SHUTDOWN",
    "FLAG_TERMINAL",
    "GENERATION",
    "MAX_FRAME_LEN",
    "AgentClient",
    "AgentError",
    "Body",
    "ExecFailedError",
    "ExecResult",
    "ExecSession",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FsError",
    "MessageType",
    "decode_body",
    "decode_frame",
    "encode_body",
    "encode_frame",
]
