//! Validation of a raw record against `pageview.schema.json`, strictly and in one pass.
//!
//! [`validate`] checks, in the contract's order [N1]: the size ([`MAX_RECORD_BYTES`], judged without
//! the line break [N4]), UTF-8, then JSON syntax (RFC 8259, plus the contract's extras [N3]:
//! repeated keys in one object at any depth, lone surrogates in `\u` escapes, `NaN`/`Infinity`,
//! trailing data; nesting is limited to [`json::MAX_DEPTH`] levels). Only a syntactically valid
//! record is checked against the schema: `not_object`, then `missing_field`, `wrong_type` (`null`
//! included), `out_of_range` and `bad_pattern`, each category over the fields in the schema's
//! property order, so the reason is the earliest category with a failure and the detail names the
//! first failing field in it.
//!
//! Numbers are judged on their exact decimal value [N2] (see [`number`]); string lengths count
//! Unicode code points after unescaping. Strings without escapes are borrowed from the record; the
//! parser builds no tree and allocates nothing for a typical record. Byte offsets in details are
//! 0-based.

mod json;
mod number;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use super::{Reason, is_valid_portal};
use json::{Kind, Slot};
use number::IntClass;

/// Records larger than this (without the line break) are `too_large`.
pub const MAX_RECORD_BYTES: usize = 65_536;

/// A valid pageview that borrows its strings from the record where it can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pageview<'a> {
    /// See [`super::Event::event_id`].
    pub event_id: Cow<'a, str>,
    /// See [`super::Event::portal`].
    pub portal: Cow<'a, str>,
    /// See [`super::Event::user_id`].
    pub user_id: Cow<'a, str>,
    /// See [`super::Event::article_id`].
    pub article_id: Cow<'a, str>,
    /// See [`super::Event::ts`].
    pub ts: u64,
    /// See [`super::Event::dwell_ms`].
    pub dwell_ms: u32,
    /// See [`super::Event::scroll_pct`].
    pub scroll_pct: u8,
    /// See [`super::Event::clicks`].
    pub clicks: u32,
}

/// Why a record is invalid: the contract's reason and a sentence naming the field and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The first failing category, in the contract's order.
    pub reason: Reason,
    /// What was wrong and what to do.
    pub detail: String,
}

fn invalid(reason: Reason, detail: String) -> Invalid {
    Invalid { reason, detail }
}

/// Validates one record (without its line break).
pub fn validate(bytes: &[u8]) -> Result<Pageview<'_>, Invalid> {
    if bytes.len() > MAX_RECORD_BYTES {
        // "More than", not a length: sources keep only the first bytes of an oversized record
        // (the file source keeps 65,537 of a line of any length), so its length is not known here.
        return Err(invalid(
            Reason::TooLarge,
            format!(
                "the record is more than {MAX_RECORD_BYTES} bytes (64 KiB) long without its line \
                 break, the most a record may have; send less, e.g. shorter strings or fewer extra \
                 properties"
            ),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let at = error.valid_up_to();
            let what = match error.error_len() {
                Some(1) => "a byte that is not valid UTF-8".to_string(),
                Some(n) => format!("{n} bytes that are not valid UTF-8"),
                None => "the record ends in the middle of a UTF-8 character".to_string(),
            };
            return Err(invalid(
                Reason::InvalidUtf8,
                format!("byte {at}: {what}: send the record as UTF-8 text"),
            ));
        }
    };
    let mut slots: [Slot<'_>; FIELD_COUNT] = Default::default();
    match json::parse(text, &mut slots) {
        Ok(None) => check(&mut slots),
        Ok(Some(kind)) => Err(invalid(
            Reason::NotObject,
            format!(
                "the record is {}, not an object: a record must be one JSON object with the \
                 pageview's fields (event_id, portal, user_id, article_id, ts, ...)",
                kind.described()
            ),
        )),
        Err(error) => Err(invalid(
            Reason::InvalidJson,
            format!("byte {}: {}", error.at, error.what),
        )),
    }
}

/// The number of properties in the schema.
const FIELD_COUNT: usize = 11;

/// What the schema asks of a property.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// A string of `min..=max` code points.
    Text { min: usize, max: usize },
    /// A string matching `^[a-z0-9][a-z0-9-]{0,31}$`.
    Portal,
    /// An integer in `0..=max`.
    Integer { max: u64 },
}

/// One property of the schema.
#[derive(Debug)]
struct Field {
    name: &'static str,
    required: bool,
    rule: Rule,
    /// What a good value is ("it must be ..."), for `wrong_type` and `out_of_range`.
    expect: &'static str,
    /// Why it is needed, for `missing_field`.
    missing: &'static str,
}

/// The schema's properties, in its order.
const FIELDS: [Field; FIELD_COUNT] = [
    Field {
        name: "event_id",
        required: true,
        rule: Rule::Text { min: 1, max: 128 },
        expect: "it must be a string of 1 to 128 characters, unique per beacon",
        missing: "every pageview needs a string id of 1 to 128 characters, unique per beacon \
                  (retried beacons repeat it)",
    },
    Field {
        name: "portal",
        required: true,
        rule: Rule::Portal,
        expect: "it must be a string naming the site, such as \"g1\"",
        missing: "every pageview needs the portal it was read on, a short lowercase name such as \
                  \"g1\"",
    },
    Field {
        name: "user_id",
        required: true,
        rule: Rule::Text { min: 1, max: 128 },
        expect: "it must be a string of 1 to 128 characters",
        missing: "every pageview needs the reader's id, a string of 1 to 128 characters",
    },
    Field {
        name: "article_id",
        required: true,
        rule: Rule::Text { min: 1, max: 256 },
        expect: "it must be a string of 1 to 256 characters",
        missing: "every pageview needs the id of the article read, a string of 1 to 256 \
                  characters",
    },
    Field {
        name: "ts",
        required: true,
        rule: Rule::Integer {
            max: 253_402_300_799_999,
        },
        expect: "it must be an integer event time in ms since the epoch, from 0 to \
                 253402300799999 (the end of year 9999)",
        missing: "every pageview needs an integer event time in ms since the epoch",
    },
    Field {
        name: "dwell_ms",
        required: false,
        rule: Rule::Integer { max: 86_400_000 },
        expect: "it must be an integer from 0 to 86400000 (ms on the page), or left out",
        missing: "",
    },
    Field {
        name: "scroll_pct",
        required: false,
        rule: Rule::Integer { max: 100 },
        expect: "it must be an integer from 0 to 100",
        missing: "",
    },
    Field {
        name: "clicks",
        required: false,
        rule: Rule::Integer { max: 100_000 },
        expect: "it must be an integer from 0 to 100000",
        missing: "",
    },
    Field {
        name: "url",
        required: false,
        rule: Rule::Text { min: 0, max: 2048 },
        expect: "it must be a string of at most 2048 characters, or left out",
        missing: "",
    },
    Field {
        name: "referrer",
        required: false,
        rule: Rule::Text { min: 0, max: 2048 },
        expect: "it must be a string of at most 2048 characters, or left out",
        missing: "",
    },
    Field {
        name: "device",
        required: false,
        rule: Rule::Text { min: 0, max: 64 },
        expect: "it must be a string of at most 64 characters, or left out",
        missing: "",
    },
];

/// The position of a property in [`FIELDS`], for a key of the top-level object.
fn field_index(key: &str) -> Option<usize> {
    Some(match key {
        "event_id" => 0,
        "portal" => 1,
        "user_id" => 2,
        "article_id" => 3,
        "ts" => 4,
        "dwell_ms" => 5,
        "scroll_pct" => 6,
        "clicks" => 7,
        "url" => 8,
        "referrer" => 9,
        "device" => 10,
        _ => return None,
    })
}

/// A value from the record for a message: quoted and escaped like a Rust string, at most 40
/// characters of it.
fn quoted(text: &str) -> String {
    const LONGEST: usize = 40;
    match text.char_indices().nth(LONGEST) {
        Some((cut, _)) => format!("{:?}…", text.get(..cut).unwrap_or_default()),
        None => format!("{text:?}"),
    }
}

/// A number from the record for a message, at most 40 characters of it.
fn number_text(text: &str) -> String {
    const LONGEST: usize = 40;
    match text.get(..LONGEST) {
        Some(head) if text.len() > LONGEST => format!("{head}… ({} characters)", text.len()),
        _ => text.to_string(),
    }
}

/// Checks a syntactically valid record's properties against the schema, category by category.
fn check<'a>(slots: &mut [Slot<'a>; FIELD_COUNT]) -> Result<Pageview<'a>, Invalid> {
    for (field, slot) in FIELDS.iter().zip(slots.iter()) {
        if field.required && *slot == Slot::Absent {
            return Err(invalid(
                Reason::MissingField,
                format!("field `{}` is missing: {}", field.name, field.missing),
            ));
        }
    }

    // Absent optional integers default to 0.
    let mut ints = [IntClass::Value(0); FIELD_COUNT];
    for ((field, slot), int) in FIELDS.iter().zip(slots.iter()).zip(&mut ints) {
        let found = match (field.rule, slot) {
            (_, Slot::Absent) | (Rule::Text { .. } | Rule::Portal, Slot::Str(_)) => continue,
            (Rule::Integer { .. }, Slot::Num(text)) => match number::classify(text) {
                IntClass::Fraction => format!("{}, which is not an integer", number_text(text)),
                class => {
                    *int = class;
                    continue;
                }
            },
            (_, Slot::Str(_)) => Kind::String.described().to_string(),
            (_, Slot::Num(_)) => Kind::Number.described().to_string(),
            (_, Slot::Other(kind)) => kind.described().to_string(),
        };
        return Err(invalid(
            Reason::WrongType,
            format!("field `{}` is {found}: {}", field.name, field.expect),
        ));
    }

    for ((field, slot), int) in FIELDS.iter().zip(slots.iter()).zip(&ints) {
        match (field.rule, slot) {
            (Rule::Text { min, max }, Slot::Str(text)) => {
                // A code point has 1 to 4 bytes: count them only when the bytes are out of range.
                if (min..=max).contains(&text.len()) {
                    continue;
                }
                let chars = text.chars().count();
                if (min..=max).contains(&chars) {
                    continue;
                }
                let found = match chars {
                    0 => "empty".to_string(),
                    1 => "1 character long".to_string(),
                    n => format!("{n} characters long"),
                };
                return Err(invalid(
                    Reason::OutOfRange,
                    format!("field `{}` is {found}: {}", field.name, field.expect),
                ));
            }
            (Rule::Integer { max }, Slot::Num(text)) => match int {
                IntClass::Value(value) if *value <= max => {}
                _ => {
                    return Err(invalid(
                        Reason::OutOfRange,
                        format!(
                            "field `{}` is {}: {}",
                            field.name,
                            number_text(text),
                            field.expect
                        ),
                    ));
                }
            },
            _ => {}
        }
    }

    let [event_id, portal, user_id, article_id, ..] = slots;
    let portal = text(portal);
    if !is_valid_portal(&portal) {
        return Err(invalid(
            Reason::BadPattern,
            format!(
                "field `portal` is {}: it must be 1 to 32 lowercase letters (a-z), digits or \
                 hyphens, not starting with a hyphen (pattern ^[a-z0-9][a-z0-9-]{{0,31}}$)",
                quoted(&portal)
            ),
        ));
    }

    let [_, _, _, _, ts, dwell_ms, scroll_pct, clicks, ..] = ints;
    Ok(Pageview {
        event_id: text(event_id),
        portal,
        user_id: text(user_id),
        article_id: text(article_id),
        ts: integer(ts, "ts")?,
        dwell_ms: integer(dwell_ms, "dwell_ms")?,
        scroll_pct: integer(scroll_pct, "scroll_pct")?,
        clicks: integer(clicks, "clicks")?,
    })
}

/// The string of a checked required property, taken out of its slot.
fn text<'a>(slot: &mut Slot<'a>) -> Cow<'a, str> {
    match std::mem::take(slot) {
        Slot::Str(text) => text,
        _ => Cow::Borrowed(""),
    }
}

/// The value of a checked integer property (absent ones are 0), in its Rust type.
fn integer<T: TryFrom<u64>>(class: IntClass, name: &str) -> Result<T, Invalid> {
    let value = match class {
        IntClass::Value(value) => T::try_from(value).ok(),
        _ => None,
    };
    value.ok_or_else(|| {
        invalid(
            Reason::OutOfRange,
            format!("field `{name}` is out of range (internal error: checked but not converted)"),
        )
    })
}
