//! Fuzzes the whole inbound decoding stack: frames (fed in two data-dependent pieces, to
//! exercise the incremental decoder), envelopes, typed host messages. Nothing may panic, and
//! the decoder must not buffer beyond one maximal frame plus the last push.
#![no_main]

use ksb_protocol::codec::{FrameDecoder, MAX_FRAME_LEN};
use ksb_protocol::{Envelope, HostMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut dec = FrameDecoder::new();
    for piece in [&data[..split], &data[split..]] {
        dec.push(piece);
        assert!(dec.pending() <= MAX_FRAME_LEN as usize + 4 + piece.len());
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(env) = Envelope::decode(&frame.body) {
                        let _ = HostMessage::decode(&env, frame.flags);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    dec.reset();
                    break;
                }
            }
        }
    }
});
