//! Malformed records on purpose: [`MalformedKind`] says how a record is broken (and so which
//! dead-letter reason the job must give it); `Required` and `Field` are the deliberate changes the
//! renderer makes to a valid line.

use pageflow_dataflow::event::Reason;

/// How a malformed record is broken, and so which dead-letter reason it must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MalformedKind {
    /// A valid line cut short.
    TruncatedJson,
    /// A required field left out.
    MissingField,
    /// A field of the wrong JSON type (`null` included).
    WrongType,
    /// A number or string length outside its bounds.
    OutOfRange,
    /// A portal that does not match the portal pattern.
    BadPortal,
    /// Valid JSON that is not an object.
    NotObject,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
}

impl MalformedKind {
    /// Every kind.
    pub const ALL: [MalformedKind; 7] = [
        MalformedKind::TruncatedJson,
        MalformedKind::MissingField,
        MalformedKind::WrongType,
        MalformedKind::OutOfRange,
        MalformedKind::BadPortal,
        MalformedKind::NotObject,
        MalformedKind::InvalidUtf8,
    ];

    /// The dead-letter reason validation must give a record of this kind.
    pub fn expected_reason(self) -> Reason {
        match self {
            MalformedKind::TruncatedJson => Reason::InvalidJson,
            MalformedKind::MissingField => Reason::MissingField,
            MalformedKind::WrongType => Reason::WrongType,
            MalformedKind::OutOfRange => Reason::OutOfRange,
            MalformedKind::BadPortal => Reason::BadPattern,
            MalformedKind::NotObject => Reason::NotObject,
            MalformedKind::InvalidUtf8 => Reason::InvalidUtf8,
        }
    }
}

/// The required fields, in the schema's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Required {
    EventId,
    Portal,
    UserId,
    ArticleId,
    Ts,
}

impl Required {
    pub(super) const ALL: [Required; 5] = [
        Required::EventId,
        Required::Portal,
        Required::UserId,
        Required::ArticleId,
        Required::Ts,
    ];
}

/// One deliberate change to a valid line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    /// No change.
    None,
    /// Leave a required field out (`missing_field`).
    Omit(Required),
    /// `"ts":"123"` (`wrong_type`).
    StringTs,
    /// `"user_id":123` (`wrong_type`).
    NumericUserId,
    /// `"portal":null` (`wrong_type`).
    NullPortal,
    /// `scroll_pct` above 100 (`out_of_range`).
    ScrollPct(u64),
    /// `"event_id":""` (`out_of_range`: minLength 1).
    EmptyEventId,
    /// A portal that breaks the pattern (`bad_pattern`).
    BadPortal(&'static str),
    /// A 0xFF byte inside `article_id` (`invalid_utf8`).
    InvalidUtf8ArticleId,
}
