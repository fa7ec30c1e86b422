//! The incremental operators, one per file, each an extension trait on timely streams.
//!
//! Every operator keeps its state in an explicit, named structure (`…State`) rather than in
//! closures, so that it can be inspected, tested alone and checkpointed. Records carry their event
//! time in the data; the timely timestamp is a tick no later than that, and finality always comes
//! from the input frontier (`docs/semantics-notes.md` N7).

pub mod cooccurrence;
pub mod dedup;
pub mod held;
pub mod horizon;
pub mod ingest;
pub mod pair_counts;
pub mod rankings;
pub mod related;
pub mod sessionize;
pub mod top_n;
pub mod window_stats;

#[cfg(test)]
mod idleness_tests;
#[cfg(test)]
mod oracle_tests;
#[cfg(test)]
mod rankings_tests;
