//! Seeded synthetic news-portal traffic: realistic pageview beacons for demos, tests and benchmarks.
//!
//! The concepts:
//!
//! - **Catalogue.** Each portal (`g1`, `ge`, `gshow` by default) has `articles_per_portal` articles
//!   split into `topics_per_portal` topic clusters (`g1/politica/noticia-00042`). Topics and the
//!   articles within a topic are chosen with Zipf-distributed popularity (`zipf_exponent`), so there
//!   are clear popular articles and a long tail. The catalogue depends on the seed only, so every
//!   partition shares it.
//! - **Sessions.** A reader picks a portal and reads 1–15 articles, mostly from one topic cluster
//!   (so related articles exist), with gaps of the page's dwell time plus seconds to minutes between
//!   reads. Some readers come back after more than 30 minutes (a new session). `dwell_ms`,
//!   `scroll_pct` and `clicks` follow realistic distributions (log-normal dwell with quick bounces,
//!   scroll depth that grows with dwell, mostly zero clicks).
//! - **Readers.** A new session goes to the reader idle the longest, so a reader's sessions are as
//!   far apart as the population allows. Readers in a session or planning to return are busy; the
//!   rest must last more than 30 minutes of new sessions. Keep `users` at least ~750 × the event
//!   rate (the default 50 000 readers suit the default 50 events per second), or readers run out,
//!   sessions go to busy readers and the job sees them merged into longer ones.
//! - **Breaking news.** Every `spike_every` of event time a new article (`g1/mundo/urgente-3`) appears
//!   on one portal and, for 10–20 minutes, takes a large share of that portal's reads (ramping up
//!   fast, then fading): a planted trend. [`SyntheticConfig::planned_spikes`] says which and when.
//! - **Delivery.** Beacons are delivered roughly in event-time order, except that an
//!   `out_of_order_share` of them arrive up to `max_delivery_delay` late, a `duplicate_share` are
//!   re-sent with the same `event_id` (browser retries, also within `max_delivery_delay`), and an
//!   `invalid_share` are malformed ([`MalformedKind`]: truncated JSON, a missing field, a wrong type,
//!   a value out of range, a bad portal, not an object, bad UTF-8). With the default
//!   `max_delivery_delay` of 2 s, below the job's default 5 s out-of-orderness, nothing is late.
//! - **Event time.** The `k`-th event generated has `ts = start + k · 1000 / rate` (integer
//!   milliseconds), so event time advances at exactly `rate` events per second. [`SyntheticTraffic`]
//!   uses simulated time: `start = start_ts`, `rate = simulated_events_per_second`, as fast as the
//!   CPU allows and deterministic. [`SyntheticSource`] with `events_per_second = Some(r)` instead
//!   starts at the wall clock and holds each record back until the wall clock reaches its delivery
//!   time, so `ts` tracks the wall clock (`ts ≈ now`) and records flow at `r` per second.
//! - **Partitions.** Several sources with different `partition_index` generate disjoint readers
//!   (`user_id` `u<index>-<n>`) and disjoint `event_id`s, and each is deterministic per
//!   `(seed, partition_index)`. Breaking news is shared: it happens on the site, not in a partition.
//! - **Resuming.** After a restart from a checkpoint, [`SyntheticSource::resume_after`] continues a
//!   partition: positions go on, no delivered `event_id` comes again, and paced event time goes on
//!   from the wall clock. It reseeds the generator instead of regenerating what was delivered.
//! - **Determinism and speed.** One small portable pseudo-random generator (SplitMix64) drives
//!   everything in a fixed order; the JSON is written by hand into a reusable buffer with correct
//!   escaping. Same seed, same bytes; well over a million lines per second in a release build.
//!
//! Where each concept lives:
//!
//! | file | concept |
//! |------|---------|
//! | `config.rs` | [`SyntheticConfig`] (every parameter, its default, its validation), [`PlannedSpike`] |
//! | `catalogue.rs` | portals, topic clusters and articles with Zipf popularity |
//! | `names.rs` | topic and breaking-news article names |
//! | `spikes.rs` | breaking-news spikes |
//! | `traffic.rs` | [`SyntheticTraffic`]: sessions, readers, delivery order, rendering |
//! | `malformed.rs` | [`MalformedKind`]: the deliberately broken records |
//! | `random.rs` | SplitMix64 and cumulative distributions |
//! | `json.rs` | hand-written JSON output |
//! | `file.rs` | [`write_json_lines`]: the traffic as a JSON-lines file |
//! | `source.rs` | [`SyntheticSource`]: the traffic as a (paced) source partition |

mod catalogue;
mod config;
mod file;
mod json;
mod malformed;
mod names;
mod random;
mod source;
mod spikes;
mod traffic;

#[cfg(test)]
mod tests;

pub use config::{PlannedSpike, SyntheticConfig};
pub use file::write_json_lines;
pub use json::write_json_string;
pub use malformed::MalformedKind;
pub use source::SyntheticSource;
pub use traffic::{SyntheticRecord, SyntheticTraffic};
