//! The outbound queue: every frame the agent sends goes through one bounded queue to the
//! writer thread. It is bounded in *bytes* (a semaphore of [`OUT_BUDGET`] permits, one per
//! byte, held until the frame is written): when the host reads slowly, senders wait in
//! [`Out::send`], which stops the output pumps from reading their pipes, so the child blocks
//! on a full pipe instead of the agent buffering without bound.

use std::sync::Arc;

use ksb_protocol::{encode_body, Frame};
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::log_error;

/// Bytes of encoded frames that may wait for the writer.
pub const OUT_BUDGET: usize = 8 * 1024 * 1024;

pub struct OutFrame {
    pub bytes: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Clone)]
pub struct Out {
    tx: mpsc::Sender<OutFrame>,
    budget: Arc<Semaphore>,
}

impl Out {
    pub fn new() -> (Self, mpsc::Receiver<OutFrame>) {
        let (tx, rx) = mpsc::channel(1024);
        (Out { tx, budget: Arc::new(Semaphore::new(OUT_BUDGET)) }, rx)
    }

    /// Encodes and queues one frame, waiting while the queue is over budget. Returns false
    /// when the writer is gone (the agent is shutting down).
    pub async fn send<T: Serialize>(&self, id: u32, flags: u8, t: &str, payload: &T) -> bool {
        let bytes = match encode_body(t, payload)
            .map_err(|e| e.to_string())
            .and_then(|body| Frame::new(id, flags, body).encode().map_err(|e| e.to_string()))
        {
            Ok(b) => b,
            Err(e) => {
                log_error!("cannot encode {t} for id {id}: {e}");
                return false;
            }
        };
        let want = bytes.len().min(OUT_BUDGET) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(want).await else {
            return false;
        };
        self.tx.send(OutFrame { bytes, _permit: permit }).await.is_ok()
    }

    /// Bytes currently queued (for tests and diagnostics).
    pub fn queued_bytes(&self) -> usize {
        OUT_BUDGET - self.budget.available_permits()
    }
}
