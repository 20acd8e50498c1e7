//! Feeds random and mutated bytes to the decoder stack for a bounded time (a stable-toolchain
//! stand-in for the cargo-fuzz target in `guest-agent/fuzz/`): nothing may panic, and the
//! decoder never buffers more than one maximal frame plus one push.

use std::time::{Duration, Instant};

use ksb_protocol::codec::{FrameDecoder, MAX_FRAME_LEN};
use ksb_protocol::{encode_body, Envelope, Frame, HostMessage};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn decode_all(input: &[u8], chunk: usize) {
    let mut dec = FrameDecoder::new();
    for piece in input.chunks(chunk.max(1)) {
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
}

fn seeds() -> Vec<Vec<u8>> {
    use ksb_protocol::messages::*;
    let mut out = Vec::new();
    let mut push = |t: &str, body: Vec<u8>| {
        let _ = t;
        out.push(Frame::new(1, 2, body).encode().unwrap());
    };
    push(
        "exec",
        encode_body(
            types::EXEC_REQUEST,
            &ExecRequest {
                cmd: "ls".into(),
                args: vec!["-l".into()],
                env: vec!["A=B".into()],
                cwd: Some("/".into()),
                user: None,
                tty: true,
                rows: 24,
                cols: 80,
                rlimits: vec![Rlimit { resource: "nofile".into(), soft: 1, hard: 2 }],
            },
        )
        .unwrap(),
    );
    for op in ksb_protocol::schema::sample_fs_ops() {
        push("fs", encode_body(types::FS_REQUEST, &FsRequest { op }).unwrap());
    }
    push("stdin", encode_body(types::EXEC_STDIN, &ExecStdin { data: b"hello".to_vec() }).unwrap());
    out
}

/// `KSB_WRITE_FUZZ_SEEDS=guest-agent/fuzz/corpus/decode cargo test --test decoder_robustness`
/// writes the seeds as a cargo-fuzz corpus.
#[test]
fn write_fuzz_seeds_when_asked() {
    if let Some(dir) = std::env::var_os("KSB_WRITE_FUZZ_SEEDS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds().iter().enumerate() {
            std::fs::write(std::path::Path::new(&dir).join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}

#[test]
fn random_and_mutated_input_never_panics() {
    let budget = Duration::from_millis(std::env::var("KSB_FUZZ_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1500));
    let seeds = seeds();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let start = Instant::now();
    let mut cases = 0u64;
    while start.elapsed() < budget {
        let mut input = if rng.below(4) == 0 {
            (0..rng.below(512)).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            let mut s = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(8) {
                let i = rng.below(s.len());
                match rng.below(4) {
                    0 => s[i] = rng.next() as u8,
                    1 => s[i] ^= 1 << rng.below(8),
                    2 => {
                        s.remove(i);
                    }
                    _ => s.insert(i, rng.next() as u8),
                }
            }
            s
        };
        if rng.below(8) == 0 {
            input.extend_from_slice(&seeds[0]);
        }
        decode_all(&input, 1 + rng.below(64));
        cases += 1;
    }
    assert!(cases > 100, "only {cases} cases ran");
}

#[test]
fn huge_declared_cbor_lengths_inside_a_small_frame_are_rejected_cheaply() {
    // A CBOR byte string announcing 2^32 bytes inside a 20-byte body must fail, not allocate.
    let mut body = vec![0xA3, 0x61, b'v', 0x07, 0x61, b't', 0x60, 0x61, b'p', 0x5A, 0xFF, 0xFF, 0xFF, 0xFF];
    body.extend_from_slice(&[0; 6]);
    assert!(Envelope::decode(&body).is_err());
    let frame = Frame::new(1, 0, body).encode().unwrap();
    decode_all(&frame, frame.len());
}
