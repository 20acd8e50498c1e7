import struct

import pytest

from kubesandbox_protocol.frame import (
    MAX_FRAME_LEN,
    Frame,
    FrameDecoder,
    FrameError,
    decode_frame,
    encode_frame,
)
from kubesandbox_protocol.messages import (
    BodyError,
    MessageType,
    decode_body,
    decode_envelope,
    encode_body,
    fs_op,
)


def test_frame_round_trips_through_bytes() -> None:
    frame = Frame(7, 0x03, b"body")
    data = frame.encode()
    assert data[:4] == struct.pack(">I", 5 + 4)
    assert decode_frame(data) == frame


def test_largest_frame_is_accepted_and_one_more_byte_is_not() -> None:
    body = b"x" * (MAX_FRAME_LEN - 5)
    assert decode_frame(encode_frame(1, 0, body)).body == body
    with pytest.raises(FrameError):
        encode_frame(1, 0, body + b"x")


@pytest.mark.parametrize("length", [0, 4, MAX_FRAME_LEN + 1, 0xFFFFFFFF])
def test_decoder_rejects_lengths_outside_bounds(length: int) -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", length) + b"\0" * 5)


def test_decoder_reassembles_frames_split_anywhere() -> None:
    frames = [Frame(i, i % 4, bytes([i]) * i) for i in range(1, 40)]
    stream = b"".join(f.encode() for f in frames)
    decoder = FrameDecoder()
    out: list[Frame] = []
    for i in range(0, len(stream), 7):
        out += decoder.feed(stream[i : i + 7])
    assert out == frames
    assert decoder.pending == 0


def test_body_round_trip_and_higher_generation_accepted() -> None:
    body = decode_body(encode_body(MessageType.EXEC_STDOUT, {"data": b"\x00\xff"}, v=10))
    assert (body.v, body.t, body.payload) == (10, "core.exec.stdout", {"data": b"\x00\xff"})


def test_payload_is_a_cbor_byte_string_inside_the_envelope() -> None:
    v, t, p = decode_envelope(encode_body(MessageType.FS_REQUEST, fs_op("List", path="/tmp")))
    assert (v, t) == (7, "core.fs.request")
    assert isinstance(p, bytes)
    assert decode_body(encode_body(MessageType.FS_REQUEST, fs_op("List", path="/"))).payload == {
        "op": {"List": {"path": "/"}}
    }


@pytest.mark.parametrize(
    "garbage", [b"", b"\xff\xff", b"\xa0", b"\x83\x01\x02\x03", b"\xa2av\x07at\x01"]
)
def test_garbage_bodies_raise_body_error(garbage: bytes) -> None:
    with pytest.raises(BodyError):
        decode_body(garbage)
