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
