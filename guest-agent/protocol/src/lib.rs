//! microsandbox's agent protocol, generation 7, as spoken by the kubesandbox guest agent.
//!
//! Layers, outermost first: [`codec`] splits the byte stream into frames
//! (`[len][id][flags][body]`), [`envelope`] decodes a body into `{v, t, p}`, [`messages`] holds
//! the payload types, [`incoming`] turns an envelope into a typed [`incoming::HostMessage`].
//! [`schema`] renders the whole surface as text for the snapshot test.

pub mod codec;
pub mod envelope;
pub mod incoming;
pub mod messages;
pub mod schema;

/// The generation we advertise in `core.ready` and stamp in every envelope's `v`.
/// At 8 and above the SDK requires bulk transfer, which we do not implement.
pub const GENERATION: u32 = 7;

pub use codec::{CodecError, Frame, FrameDecoder};
pub use envelope::{encode_body, Envelope, EnvelopeError};
pub use incoming::{HostMessage, IncomingError};
