//! The pageview event, the raw records it is parsed from, and the dead letters that bad records
//! become.
//!
//! A source hands the dataflow [`RawRecord`]s: bytes plus where they came from. [`validate`] turns
//! bytes into a borrowed [`Pageview`] or an [`Invalid`] with a [`Reason`]; the ingest operator turns
//! a valid, on-time pageview into a [`CompactEvent`] and anything else into a [`DeadLetter`].
//!
//! Two forms of an event: [`Event`] owns its strings (the batch oracle, tests, the serving layer),
//! [`CompactEvent`] is how it travels through the dataflow (portal and article interned, user and
//! event ids inline, nothing allocated for typical ids).

mod details;
mod portal_name;
mod validate;

use std::fmt;

use base64::Engine as _;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::intern::{Article, Portal};

pub use details::{DetailedEvent, PageviewDetails};
pub use portal_name::{MAX_PORTAL_CHARS, is_valid_portal};
pub use validate::{Invalid, MAX_RECORD_BYTES, Pageview, validate};

/// Reads with `dwell_ms` at least this long count as engaged.
pub const ENGAGED_DWELL_MS: u32 = 10_000;
/// Reads scrolled at least this far (percent) count as engaged.
pub const ENGAGED_SCROLL_PCT: u8 = 50;

/// A shared, immutable string: events are cloned to several operators and their ids become keys
/// of operator state, so the bytes are allocated once and shared.
pub type Id = std::sync::Arc<str>;

/// A valid, owned pageview as it travels through the dataflow.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Event {
    /// Unique per beacon; retried beacons share it.
    pub event_id: Id,
    /// The site, e.g. `g1`.
    pub portal: Id,
    /// The reader.
    pub user_id: Id,
    /// The article read.
    pub article_id: Id,
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub ts: u64,
    /// Time on page.
    pub dwell_ms: u32,
    /// How far the reader scrolled, 0..=100.
    pub scroll_pct: u8,
    /// Clicks on the page.
    pub clicks: u32,
}

impl Event {
    /// Whether this read counts as engaged (`dwell_ms ≥ 10000` or `scroll_pct ≥ 50`).
    pub fn engaged(&self) -> bool {
        self.dwell_ms >= ENGAGED_DWELL_MS || self.scroll_pct >= ENGAGED_SCROLL_PCT
    }
}

impl From<&Pageview<'_>> for Event {
    fn from(view: &Pageview<'_>) -> Self {
        Event {
            event_id: Id::from(view.event_id.as_ref()),
            portal: Id::from(view.portal.as_ref()),
            user_id: Id::from(view.user_id.as_ref()),
            article_id: Id::from(view.article_id.as_ref()),
            ts: view.ts,
            dwell_ms: view.dwell_ms,
            scroll_pct: view.scroll_pct,
            clicks: view.clicks,
        }
    }
}

/// A valid, on-time pageview as it travels through the dataflow: the portal and article interned
/// ([`Article`]), the user and event ids inline up to 24 bytes (longer ones on the heap), so that
/// moving it between operators copies 80 bytes and allocates nothing for typical ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CompactEvent {
    /// Unique per beacon; retried beacons share it.
    pub event_id: CompactString,
    /// The reader.
    pub user_id: CompactString,
    /// The article read, with its portal.
    pub article: Article,
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub ts: u64,
    /// Time on page.
    pub dwell_ms: u32,
    /// Clicks on the page.
    pub clicks: u32,
    /// How far the reader scrolled, 0..=100.
    pub scroll_pct: u8,
}

impl CompactEvent {
    /// The site.
    pub fn portal(&self) -> Portal {
        self.article.portal()
    }

    /// Whether this read counts as engaged (`dwell_ms ≥ 10000` or `scroll_pct ≥ 50`).
    pub fn engaged(&self) -> bool {
        self.dwell_ms >= ENGAGED_DWELL_MS || self.scroll_pct >= ENGAGED_SCROLL_PCT
    }

    /// The event with owned strings.
    pub fn to_event(&self) -> Event {
        Event {
            event_id: Id::from(self.event_id.as_str()),
            portal: Id::from(self.portal().name()),
            user_id: Id::from(self.user_id.as_str()),
            article_id: Id::from(self.article.id()),
            ts: self.ts,
            dwell_ms: self.dwell_ms,
            scroll_pct: self.scroll_pct,
            clicks: self.clicks,
        }
    }
}

impl From<&Pageview<'_>> for CompactEvent {
    fn from(view: &Pageview<'_>) -> Self {
        CompactEvent {
            event_id: CompactString::from(view.event_id.as_ref()),
            user_id: CompactString::from(view.user_id.as_ref()),
            article: Article::intern(Portal::intern(&view.portal), &view.article_id),
            ts: view.ts,
            dwell_ms: view.dwell_ms,
            clicks: view.clicks,
            scroll_pct: view.scroll_pct,
        }
    }
}

impl From<&Event> for CompactEvent {
    fn from(event: &Event) -> Self {
        CompactEvent {
            event_id: CompactString::from(&*event.event_id),
            user_id: CompactString::from(&*event.user_id),
            article: Article::intern_names(&event.portal, &event.article_id),
            ts: event.ts,
            dwell_ms: event.dwell_ms,
            clicks: event.clicks,
            scroll_pct: event.scroll_pct,
        }
    }
}

/// Where a record came from: a partition (file, Kinesis shard, synthetic stream) and a position in it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePosition {
    /// The partition's name, e.g. `file:events.jsonl` or `kinesis:g1/shardId-000000000001`.
    pub partition: String,
    /// The position in the partition: a 1-based line number for files, a sequence number for Kinesis.
    pub position: String,
}

/// One record as read from a source, before validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// Where it came from.
    pub position: SourcePosition,
    /// The record's bytes, without the line break.
    pub bytes: Vec<u8>,
    /// Set by a source that could not unpack the record (a corrupt KPL aggregate): why. Ingest
    /// sends it to the dead letters as `corrupt_aggregate` without validating it.
    pub corrupt: Option<String>,
}

impl RawRecord {
    /// A record read at `position`.
    pub fn new(position: SourcePosition, bytes: Vec<u8>) -> Self {
        RawRecord {
            position,
            bytes,
            corrupt: None,
        }
    }
}

/// Why a record went to the dead-letter output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A KPL aggregate whose MD5 trailer or protobuf body is broken: none of its user records can
    /// be trusted, so the whole Kinesis record is kept here.
    CorruptAggregate,
    /// Larger than 64 KiB without the line break.
    TooLarge,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not one JSON value (or NaN/Infinity, trailing data, a repeated key, a lone surrogate).
    InvalidJson,
    /// Valid JSON but not an object.
    NotObject,
    /// A required field is missing.
    MissingField,
    /// A field has the wrong JSON type (`null` included).
    WrongType,
    /// A field is outside its minimum/maximum/length bounds.
    OutOfRange,
    /// A string does not match its pattern.
    BadPattern,
    /// Valid, but its `ts` is below the job's watermark.
    Late,
    /// An output record (a feature, an archive line) that a sink could not write however often it
    /// tried (a record over the service's size limit, a missing stream): kept here instead.
    Undeliverable,
}

impl Reason {
    /// Every reason: the input's, in the order the contract checks them (`late` last), then the
    /// sinks' `undeliverable`.
    pub const ALL: [Reason; 11] = [
        Reason::CorruptAggregate,
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::OutOfRange,
        Reason::BadPattern,
        Reason::Late,
        Reason::Undeliverable,
    ];

    /// The stable snake_case code used in dead letters and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Reason::CorruptAggregate => "corrupt_aggregate",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotObject => "not_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::OutOfRange => "out_of_range",
            Reason::BadPattern => "bad_pattern",
            Reason::Late => "late",
            Reason::Undeliverable => "undeliverable",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A record that was not counted, with everything needed to find, understand and replay it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why it was not counted.
    pub reason: Reason,
    /// What exactly was wrong and what to do about it.
    pub detail: String,
    /// Where it came from.
    #[serde(flatten)]
    pub position: SourcePosition,
    /// The portal, when the record got far enough to tell (archive partitioning).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub portal: Option<String>,
    /// The event time, when the record got far enough to tell (archive partitioning).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ts: Option<u64>,
    /// The record's bytes: as text when they are UTF-8, else base64 in `raw_base64`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw: Option<String>,
    /// The record's bytes in base64 when they are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw_base64: Option<String>,
}

impl DeadLetter {
    /// A dead letter for `bytes` read at `position`.
    pub fn new(reason: Reason, detail: String, position: SourcePosition, bytes: &[u8]) -> Self {
        let (raw, raw_base64) = match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        };
        DeadLetter {
            reason,
            detail,
            position,
            portal: None,
            ts: None,
            raw,
            raw_base64,
        }
    }

    /// One JSON object, one line (no line break).
    pub fn to_json(&self) -> String {
        // A derived Serialize of plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
