//! The CBOR envelope inside every frame body: `{"v": uint, "t": text, "p": bytes}`.
//!
//! `v` is the sender's generation (the SDK stamps 10; a guest accepts any `v`, higher
//! included), `t` the message type and `p` a CBOR byte string holding the CBOR-encoded payload
//! map. Decoding is two-step on purpose: a bad envelope is `malformed_message` (we do not know
//! what was meant), a good envelope with a bad payload is `invalid_payload` for type `t`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use thiserror::Error;

use crate::GENERATION;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub t: String,
    pub p: ByteBuf,
}

#[derive(Debug, Error)]
pub enum EnvelopeError {
    #[error("frame body is not a CBOR envelope {{v, t, p}}: {0}")]
    Malformed(String),
    #[error("payload of {t} does not decode: {reason}")]
    InvalidPayload { t: String, reason: String },
    #[error("cannot encode {t}: {reason}")]
    Encode { t: String, reason: String },
}

impl Envelope {
    /// Decodes a frame body into its envelope.
    pub fn decode(body: &[u8]) -> Result<Self, EnvelopeError> {
        ciborium::de::from_reader(body).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    /// Decodes the payload as `T`. An empty `p` is read as an empty map, which some peers
    /// send for payload-less messages such as `core.ping`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, EnvelopeError> {
        let bytes: &[u8] = if self.p.is_empty() { &[0xA0] } else { &self.p };
        ciborium::de::from_reader(bytes)
            .map_err(|e| EnvelopeError::InvalidPayload { t: self.t.clone(), reason: e.to_string() })
    }

    /// Builds an envelope of our own generation around `payload`.
    pub fn wrap<T: Serialize>(t: &str, payload: &T) -> Result<Self, EnvelopeError> {
        let mut p = Vec::new();
        ciborium::ser::into_writer(payload, &mut p)
            .map_err(|e| EnvelopeError::Encode { t: t.into(), reason: e.to_string() })?;
        Ok(Envelope { v: GENERATION, t: t.to_string(), p: ByteBuf::from(p) })
    }

    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(self.p.len() + self.t.len() + 16);
        ciborium::ser::into_writer(self, &mut out)
            .map_err(|e| EnvelopeError::Encode { t: self.t.clone(), reason: e.to_string() })?;
        Ok(out)
    }
}

/// Encodes `payload` of type `t` into a complete frame body.
pub fn encode_body<T: Serialize>(t: &str, payload: &T) -> Result<Vec<u8>, EnvelopeError> {
    Envelope::wrap(t, payload)?.encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ExecStdin, Touched};

    #[test]
    fn round_trips_a_payload() {
        let body = encode_body("core.touched", &Touched { activity_seq: 42 }).unwrap();
        let env = Envelope::decode(&body).unwrap();
        assert_eq!(env.v, GENERATION);
        assert_eq!(env.t, "core.touched");
        assert_eq!(env.payload::<Touched>().unwrap().activity_seq, 42);
    }

    #[test]
    fn accepts_a_higher_generation_and_unknown_envelope_keys() {
        #[derive(Serialize)]
        struct Future<'a> {
            v: u32,
            t: &'a str,
            p: ByteBuf,
            extra: u8,
        }
        let mut p = Vec::new();
        ciborium::ser::into_writer(&ExecStdin { data: b"x".to_vec() }, &mut p).unwrap();
        let mut body = Vec::new();
        let future = Future { v: 10, t: "core.exec.stdin", p: ByteBuf::from(p), extra: 1 };
        ciborium::ser::into_writer(&future, &mut body).unwrap();
        let env = Envelope::decode(&body).unwrap();
        assert_eq!(env.v, 10);
        assert_eq!(env.payload::<ExecStdin>().unwrap().data, b"x");
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(Envelope::decode(b"\xff\x00"), Err(EnvelopeError::Malformed(_))));
        assert!(matches!(Envelope::decode(b""), Err(EnvelopeError::Malformed(_))));
    }

    #[test]
    fn a_wrong_payload_is_invalid_payload_naming_the_type() {
        let body = encode_body("core.exec.stdin", &Touched { activity_seq: 1 }).unwrap();
        let env = Envelope::decode(&body).unwrap();
        let err = env.payload::<ExecStdin>().unwrap_err();
        assert!(err.to_string().contains("core.exec.stdin"), "{err}");
    }

    #[test]
    fn empty_payload_reads_as_empty_map() {
        let env = Envelope { v: 7, t: "core.ping".into(), p: ByteBuf::new() };
        env.payload::<crate::messages::Empty>().unwrap();
    }
}
