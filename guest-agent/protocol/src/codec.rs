//! Frame codec of the agent channel.
//!
//! # Wire format
//!
//! ```text
//! +----------------+----------------+-----------+----------------------------+
//! | len: u32 BE    | id: u32 BE     | flags: u8 | body: CBOR (len - 5 bytes) |
//! +----------------+----------------+-----------+----------------------------+
//! ```
//!
//! * `len` counts `id` + `flags` + `body`, so it is at least [`HEADER_LEN`] (5) and at most
//!   [`MAX_FRAME_LEN`] (4 MiB). A length outside those bounds cannot be skipped safely (we no
//!   longer know where the next frame starts): it is a fatal stream error, [`CodecError`].
//! * `id` is the correlation id shared by every frame of one session (one exec, one fs op).
//! * `flags` is a bit set: [`FLAG_TERMINAL`], [`FLAG_SESSION_START`], [`FLAG_SHUTDOWN`],
//!   [`FLAG_BULK`]. The codec does not judge flags; the dispatcher does (`invalid_flags`).
//! * `body` is the CBOR envelope `{"v": uint, "t": text, "p": bytes}` decoded by
//!   [`crate::envelope`]; the codec treats it as opaque bytes.
//!
//! The decoder is incremental: feed it whatever the transport returned with
//! [`FrameDecoder::push`] and pull complete frames with [`FrameDecoder::next_frame`]. It never
//! buffers more than one maximal frame plus one read, whatever the input.

use thiserror::Error;

/// Bytes of `id` + `flags`: the smallest legal `len`.
pub const HEADER_LEN: u32 = 5;
/// Largest legal `len` (4 MiB).
pub const MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;
/// Bytes before the body on the wire: `len` + `id` + `flags`.
pub const PREFIX_LEN: usize = 9;

/// Last frame of a session.
pub const FLAG_TERMINAL: u8 = 0x01;
/// First frame of a session (`core.exec.request`, `core.fs.request`, `core.tcp.connect`).
pub const FLAG_SESSION_START: u8 = 0x02;
/// `core.shutdown`.
pub const FLAG_SHUTDOWN: u8 = 0x04;
/// Bulk transfer (generation 8+); a generation-7 guest refuses it.
pub const FLAG_BULK: u8 = 0x08;
/// Every flag a generation-7 peer understands.
pub const KNOWN_FLAGS: u8 = FLAG_TERMINAL | FLAG_SESSION_START | FLAG_SHUTDOWN;

/// One frame: correlation id, flags and the still-encoded CBOR body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: u32,
    pub flags: u8,
    pub body: Vec<u8>,
}

/// Fatal stream errors: the byte stream cannot be resynchronised after them.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame length {0} is below the minimum of {HEADER_LEN}")]
    TooShort(u32),
    #[error("frame length {0} exceeds the maximum of {MAX_FRAME_LEN}")]
    TooLong(u32),
    #[error("frame body of {0} bytes exceeds the maximum of {max}", max = MAX_FRAME_LEN - HEADER_LEN)]
    BodyTooLong(usize),
}

impl Frame {
    pub fn new(id: u32, flags: u8, body: Vec<u8>) -> Self {
        Frame { id, flags, body }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let len = checked_len(self.body.len())?;
        let mut out = Vec::with_capacity(PREFIX_LEN + self.body.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(self.flags);
        out.extend_from_slice(&self.body);
        Ok(out)
    }
}

fn checked_len(body_len: usize) -> Result<u32, CodecError> {
    let len = body_len
        .checked_add(HEADER_LEN as usize)
        .filter(|len| *len <= MAX_FRAME_LEN as usize)
        .ok_or(CodecError::BodyTooLong(body_len))?;
    Ok(len as u32)
}

/// Validates a `len` field.
pub fn check_len(len: u32) -> Result<(), CodecError> {
    if len < HEADER_LEN {
        Err(CodecError::TooShort(len))
    } else if len > MAX_FRAME_LEN {
        Err(CodecError::TooLong(len))
    } else {
        Ok(())
    }
}

/// Incremental decoder; see the module documentation.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the transport.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Forgets buffered bytes (after a fatal error or a transport reconnect).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Returns the next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// The length is validated as soon as its 4 bytes arrived, before the body is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]);
        check_len(len)?;
        let total = 4 + len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let id = u32::from_be_bytes([avail[4], avail[5], avail[6], avail[7]]);
        let flags = avail[8];
        let body = avail[PREFIX_LEN..total].to_vec();
        self.start += total;
        Ok(Some(Frame { id, flags, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(len: u32, id: u32, flags: u8, body: &[u8]) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(&id.to_be_bytes());
        v.push(flags);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn round_trips_a_frame() {
        let frame = Frame::new(7, FLAG_TERMINAL, b"abc".to_vec());
        let bytes = frame.encode().unwrap();
        assert_eq!(bytes, wire(8, 7, 1, b"abc"));
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        assert_eq!(dec.next_frame().unwrap(), Some(frame));
        assert_eq!(dec.next_frame().unwrap(), None);
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn accepts_the_empty_body_minimum() {
        let mut dec = FrameDecoder::new();
        dec.push(&wire(5, 1, 0, b""));
        assert_eq!(dec.next_frame().unwrap(), Some(Frame::new(1, 0, vec![])));
    }

    #[test]
    fn rejects_length_below_header() {
        for len in 0..HEADER_LEN {
            let mut dec = FrameDecoder::new();
            dec.push(&len.to_be_bytes());
            assert_eq!(dec.next_frame(), Err(CodecError::TooShort(len)));
        }
    }

    #[test]
    fn rejects_length_above_maximum_before_buffering_body() {
        let mut dec = FrameDecoder::new();
        dec.push(&(MAX_FRAME_LEN + 1).to_be_bytes());
        assert_eq!(dec.next_frame(), Err(CodecError::TooLong(MAX_FRAME_LEN + 1)));
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert_eq!(dec.next_frame(), Err(CodecError::TooLong(u32::MAX)));
    }

    #[test]
    fn accepts_exactly_the_maximum() {
        let body = vec![0xAB; (MAX_FRAME_LEN - HEADER_LEN) as usize];
        let frame = Frame::new(3, 0, body);
        let bytes = frame.encode().unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        assert_eq!(dec.next_frame().unwrap(), Some(frame));
    }

    #[test]
    fn refuses_to_encode_an_oversized_body() {
        let frame = Frame::new(3, 0, vec![0; (MAX_FRAME_LEN - HEADER_LEN + 1) as usize]);
        assert!(matches!(frame.encode(), Err(CodecError::BodyTooLong(_))));
    }

    #[test]
    fn reassembles_frames_split_at_every_byte() {
        let mut stream = Vec::new();
        for i in 0..5u32 {
            stream.extend(Frame::new(i, i as u8, vec![i as u8; i as usize * 3]).encode().unwrap());
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &stream {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], Frame::new(4, 4, vec![4; 12]));
    }

    #[test]
    fn waits_for_an_incomplete_length_or_body() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0]);
        assert_eq!(dec.next_frame().unwrap(), None);
        dec.push(&[0, 9, 0, 0, 0, 1, 0, 1]);
        assert_eq!(dec.next_frame().unwrap(), None);
        dec.push(&[2, 3, 4]);
        assert_eq!(dec.next_frame().unwrap(), Some(Frame::new(1, 0, vec![1, 2, 3, 4])));
    }

    #[test]
    fn reset_discards_partial_input() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 9, 1]);
        dec.reset();
        dec.push(&wire(5, 2, 0, b""));
        assert_eq!(dec.next_frame().unwrap(), Some(Frame::new(2, 0, vec![])));
    }
}
