//! model-feedback: a stream processor that tells, per tenant, whether a forecasting model still deserves trust.
//!
//! The crate is a pure core (`event`, `fold`, `alert`) with I/O edges around it (`codec`,
//! `storage`, `offline`, and the CLI in `main.rs`). See ARCHITECTURE.md for the map and its invariants.

pub mod alert;
pub mod allocator;
pub mod codec;
pub mod commands;
pub mod config;
pub mod demo;
pub mod event;
pub mod fold;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod offline;
pub mod simulate;
pub mod storage;

/// Names the threads of rayon's global pool, which decodes records (`fold`, `run`) and encodes
/// documents (`fold`), `feedback-pool-N`: unnamed, they take the name of the thread that first
/// used the pool, and `top -H` or a profile would count their work as that thread's. Call it
/// before anything uses the pool; once the pool exists this does nothing.
pub fn name_worker_threads() {
    // An error means the pool was built already, with whatever names it has.
    let _ = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("feedback-pool-{i}"))
        .build_global();
}
