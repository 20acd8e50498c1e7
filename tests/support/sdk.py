"""Driving the guest agent with the real microsandbox SDK's raw ``AgentClient`` (the oracle):
the same frames the SDK's high-level calls send (``msb-wire-transcript-gen7.txt``), v=10."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from microsandbox.agent import AgentClient as SdkClient

from kubesandbox_protocol.frame import FLAG_SESSION_START
from kubesandbox_protocol.messages import (
    MAX_FS_CHUNK,
    MessageType,
    decode_body,
    encode_body,
    exec_request,
    fs_op,
    open_options,
)

SDK_GENERATION = 10


def body(t: str, payload: dict[str, Any] | None = None) -> bytes:
    return encode_body(t, payload, v=SDK_GENERATION)


async def sdk_exec(
    sdk: SdkClient,
    cmd: str,
    args: Sequence[str] = (),
    *,
    stdin: bytes = b"",
    **options: Any,
) -> tuple[int, bytes, bytes]:
    request = exec_request(cmd, args, **options)
    stream = await sdk.stream(FLAG_SESSION_START, body(MessageType.EXEC_REQUEST, request))
    for off in range(0, len(stdin), 1 << 20):
        await sdk.send(
            stream.id, 0, body(MessageType.EXEC_STDIN, {"data": stdin[off : off + (1 << 20)]})
        )
    await sdk.send(stream.id, 0, body(MessageType.EXEC_STDIN, {"data": b""}))
    out, err, code = bytearray(), bytearray(), None
    async for frame in stream:
        decoded = decode_body(frame["body"])
        if decoded.t == MessageType.EXEC_STDOUT:
            out += decoded.payload["data"]
        elif decoded.t == MessageType.EXEC_STDERR:
            err += decoded.payload["data"]
        elif decoded.t == MessageType.EXEC_EXITED:
            code = decoded.payload["code"]
        elif decoded.t in (MessageType.EXEC_FAILED, MessageType.ERROR):
            raise RuntimeError(f"{decoded.t}: {decoded.payload}")
    assert code is not None, "exec ended without core.exec.exited"
    return int(code), bytes(out), bytes(err)


async def _fs(sdk: SdkClient, variant: str, **fields: Any) -> dict[str, Any]:
    answer = await sdk.request(
        FLAG_SESSION_START, body(MessageType.FS_REQUEST, fs_op(variant, **fields))
    )
    decoded = decode_body(answer["body"])
    assert decoded.t == MessageType.FS_RESPONSE, decoded
    if not decoded.payload.get("ok"):
        raise OSError(decoded.payload.get("error"))
    return decoded.payload


async def sdk_write_file(sdk: SdkClient, path: str, data: bytes) -> None:
    """OpenFile{write,create,truncate} → Write + data chunks + empty chunk → CloseHandle."""
    opened = await _fs(
        sdk, "OpenFile", path=path, options=open_options(write=True, create=True, truncate=True)
    )
    handle = opened["data"]["Handle"]
    stream = await sdk.stream(
        FLAG_SESSION_START,
        body(MessageType.FS_REQUEST, fs_op("Write", handle=handle, offset=0, len=len(data))),
    )
    for off in range(0, len(data), MAX_FS_CHUNK):
        await sdk.send(
            stream.id, 0, body(MessageType.FS_DATA, {"data": data[off : off + MAX_FS_CHUNK]})
        )
    await sdk.send(stream.id, 0, body(MessageType.FS_DATA, {"data": b""}))
    async for frame in stream:
        decoded = decode_body(frame["body"])
        if frame["flags"] & 1:
            assert decoded.payload.get("ok"), decoded.payload
    await _fs(sdk, "CloseHandle", handle=handle)


async def sdk_read_file(sdk: SdkClient, path: str) -> bytes:
    """OpenFile{read} → Read{h,0,null} → data chunks then ok → CloseHandle."""
    opened = await _fs(sdk, "OpenFile", path=path, options=open_options(read=True))
    handle = opened["data"]["Handle"]
    stream = await sdk.stream(
        FLAG_SESSION_START,
        body(MessageType.FS_REQUEST, fs_op("Read", handle=handle, offset=0, len=None)),
    )
    out = bytearray()
    async for frame in stream:
        decoded = decode_body(frame["body"])
        if decoded.t == MessageType.FS_DATA:
            out += decoded.payload.get("data") or b""
        elif frame["flags"] & 1:
            assert decoded.payload.get("ok"), decoded.payload
    await _fs(sdk, "CloseHandle", handle=handle)
    return bytes(out)


async def sdk_fs(sdk: SdkClient, variant: str, **fields: Any) -> Any:
    return (await _fs(sdk, variant, **fields)).get("data")
