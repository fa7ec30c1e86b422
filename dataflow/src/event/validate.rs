//! Validation of a raw record against `pageview.schema.json` (placeholder: being replaced by the
//! strict single-pass validator).

use std::borrow::Cow;

use super::Reason;

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

/// Validates one record (without its line break).
pub fn validate(bytes: &[u8]) -> Result<Pageview<'_>, Invalid> {
    let invalid = |reason, detail: &str| Invalid { reason, detail: detail.to_string() };
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(invalid(Reason::TooLarge, "record too large"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| invalid(Reason::InvalidUtf8, "not utf8"))?;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| invalid(Reason::InvalidJson, "not json"))?;
    let object = value.as_object().ok_or_else(|| invalid(Reason::NotObject, "not an object"))?;
    let string = |name: &str| -> Result<Cow<'_, str>, Invalid> {
        match object.get(name) {
            None => Err(invalid(Reason::MissingField, name)),
            Some(serde_json::Value::String(s)) => Ok(Cow::Owned(s.clone())),
            Some(_) => Err(invalid(Reason::WrongType, name)),
        }
    };
    let number = |name: &str, max: u64| -> Result<u64, Invalid> {
        match object.get(name) {
            None => Ok(0),
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| invalid(Reason::WrongType, name))?;
                if n > max { Err(invalid(Reason::OutOfRange, name)) } else { Ok(n) }
            }
        }
    };
    let event_id = string("event_id")?;
    let portal = string("portal")?;
    let user_id = string("user_id")?;
    let article_id = string("article_id")?;
    let ts = match object.get("ts") {
        None => return Err(invalid(Reason::MissingField, "ts")),
        Some(_) => number("ts", 253_402_300_799_999)?,
    };
    Ok(Pageview {
        event_id: Cow::Owned(event_id.into_owned()),
        portal: Cow::Owned(portal.into_owned()),
        user_id: Cow::Owned(user_id.into_owned()),
        article_id: Cow::Owned(article_id.into_owned()),
        ts,
        dwell_ms: number("dwell_ms", 86_400_000)? as u32,
        scroll_pct: number("scroll_pct", 100)? as u8,
        clicks: number("clicks", 100_000)? as u32,
    })
}
