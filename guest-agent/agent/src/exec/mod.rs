//! Exec sessions: `core.exec.request` → fork/exec ([`spawn`]) → output pumps, stdin writer,
//! resize and signals → `core.exec.exited` with the [`status::exit_code`] rule.

pub mod session;
pub mod spawn;
pub mod status;
