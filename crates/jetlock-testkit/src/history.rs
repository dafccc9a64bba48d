//! A history checker for lock tests (issue 6, item 1).
//!
//! Tasks and processes record what their clients *observed* into a shared
//! [`History`]: every acquire, release and reported loss, each with the
//! interval from just before the call to just after its outcome on
//! `CLOCK_MONOTONIC` ([`Mono`](crate::belief::Mono): holder processes print
//! their readings and the test records them), and with the client's own
//! deadline where it was read. Writes to the protected resource go through
//! a [`FencedLedger`]. [`check`] then judges the whole run and returns a
//! [`Report`] of [`Violation`]s; the beliefs it derives are judged by
//! `belief.rs`.
//!
//! Time is used only to *order* operations (this happened before that
//! one started), never to assert how long something took. Every rule is
//! conservative: a lock that keeps the session contract cannot produce a
//! violation (see `docs/RELIABILITY.md`, "History checker").
//!
//! Where things are: `recorder.rs` is the [`History`] (what clients did and
//! when), `ledger.rs` the [`FencedLedger`] (what the resource accepted),
//! `checker.rs` [`check`] and its [`Report`], `holders.rs` the rules of
//! locks with several holders (read/write locks, semaphores); `tests.rs` hands the checker
//! bad histories it must catch.
#![allow(dead_code)]

mod checker;
pub mod holders;
mod ledger;
mod recorder;

pub use checker::{check, Grant, Report, Violation};
pub use ledger::{FencedLedger, Write};
pub use recorder::{AcquireOutcome, History, OpId, ReleaseOutcome};

#[cfg(test)]
mod tests;
