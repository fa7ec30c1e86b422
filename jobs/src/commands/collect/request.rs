//! A `POST /v1/collect` body: split into events, each judged exactly as the job judges a record.
//!
//! The body is either a JSON array of pageview objects or newline-delimited JSON (one object per
//! line, blank lines skipped); which one is told by its first non-blank byte (`[`), not by the
//! `Content-Type`, because `navigator.sendBeacon` sends a string as `text/plain` whatever it holds.
//! At most [`MAX_BODY_BYTES`] and [`MAX_EVENTS`] per request.
//!
//! The array is split into its elements' bytes without being parsed (`split_array`): only the
//! brackets, braces and strings are followed. Each element (or line) then goes through
//! [`pageflow_dataflow::event::validate`], the job's own strict validation with its reasons
//! (`invalid_json`, `missing_field`, `bad_pattern`, …), so one malformed event is rejected with its
//! index while the others are accepted, and an event the collector accepts is one the job counts.
//! Only an element whose brackets or quotes do not balance (a truncated body) cannot be told from
//! the next one: then the array as a whole is refused (`invalid_body`).
//! On top of that, its `portal` must be one of `[[collect.portals]]` (`unknown_portal`).
//!
//! An accepted event is written as the client sent it, less the whitespace between JSON tokens
//! ([`compact`]): one line, nothing added or reordered, so a record is one JSON line wherever it is
//! archived.

use pageflow_dataflow::event::validate;

/// The largest body accepted (1 MiB); larger is 413 `body_too_large`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most events in one body; more is 413 `too_many_events`.
pub const MAX_EVENTS: usize = 500;

/// The reason given to a valid event whose portal is not collected here.
pub const UNKNOWN_PORTAL: &str = "unknown_portal";

/// Why a body as a whole cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// No events at all.
    #[error(
        "the body holds no events: send a JSON array of pageview objects or one JSON object per line"
    )]
    NoEvents,
    /// More than [`MAX_EVENTS`].
    #[error(
        "the body holds {count} events, more than the {MAX_EVENTS} a request may carry: send them in several requests"
    )]
    TooManyEvents {
        /// How many were counted (at least `MAX_EVENTS + 1`).
        count: usize,
    },
    /// A JSON array whose structure is broken (not closed, or data after its end).
    #[error(
        "the body is not a JSON array: {what}; send `[{{…}}, {{…}}]` or one JSON object per line"
    )]
    BrokenArray {
        /// What was wrong.
        what: String,
    },
}

/// An event that passed: where it was in the body, and what to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedEvent {
    /// Its 0-based index among the body's events.
    pub index: usize,
    /// Its portal (one of `[[collect.portals]]`).
    pub portal: String,
    /// Its `user_id`: the Kinesis partition key, so each reader's events stay in order.
    pub user_id: String,
    /// The record to write: the event as sent, compacted to one line.
    pub record: Vec<u8>,
}

/// An event that did not pass, as the answer reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RejectedEvent {
    /// Its 0-based index among the body's events.
    pub index: usize,
    /// The job's reason code (`invalid_json`, `missing_field`, …) or `unknown_portal`.
    pub reason: &'static str,
    /// What was wrong and what to do.
    pub detail: String,
}

/// The body's events, judged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// The events to write, in the body's order.
    pub accepted: Vec<AcceptedEvent>,
    /// The others, in the body's order.
    pub rejected: Vec<RejectedEvent>,
}

/// Splits `body` into events and judges each; `collected` says whether a portal is collected here.
pub fn judge(body: &[u8], collected: impl Fn(&str) -> bool) -> Result<Judged, BodyError> {
    let events = split_events(body)?;
    let mut judged = Judged::default();
    for (index, event) in events.into_iter().enumerate() {
        match validate(event) {
            Ok(pageview) if collected(&pageview.portal) => {
                judged.accepted.push(AcceptedEvent {
                    index,
                    portal: pageview.portal.into_owned(),
                    user_id: pageview.user_id.into_owned(),
                    record: compact(event),
                });
            }
            Ok(pageview) => judged.rejected.push(RejectedEvent {
                index,
                reason: UNKNOWN_PORTAL,
                detail: format!(
                    "portal `{}` is not collected here: send its events to its own collector, or add it to [[collect.portals]]",
                    pageview.portal
                ),
            }),
            Err(invalid) => judged.rejected.push(RejectedEvent {
                index,
                reason: invalid.reason.code(),
                detail: invalid.detail,
            }),
        }
    }
    Ok(judged)
}

/// The body's events, each trimmed of surrounding whitespace: a JSON array's elements, or the
/// non-blank lines of newline-delimited JSON.
pub fn split_events(body: &[u8]) -> Result<Vec<&[u8]>, BodyError> {
    let events = match body.iter().position(|b| !is_json_space(*b)) {
        None => Vec::new(),
        Some(start) if body[start] == b'[' => split_array(&body[start..])?,
        Some(_) => body
            .split(|b| *b == b'\n')
            .map(trim)
            .filter(|line| !line.is_empty())
            .collect(),
    };
    match events.len() {
        0 => Err(BodyError::NoEvents),
        count if count > MAX_EVENTS => Err(BodyError::TooManyEvents { count }),
        _ => Ok(events),
    }
}

/// The elements of the array that `body` starts with (`[` first), trimmed. Only strings and
/// nesting are followed, so a broken element is still one element, judged on its own.
fn split_array(body: &[u8]) -> Result<Vec<&[u8]>, BodyError> {
    let mut elements = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 1;
    for (at, &byte) in body.iter().enumerate().skip(1) {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b']' => {
                let last = trim(&body[start..at]);
                // `[]` is an empty array; `[a,]` has an empty last element, judged invalid.
                if !(elements.is_empty() && last.is_empty()) {
                    elements.push(last);
                }
                if let Some(offset) = body[at + 1..].iter().position(|b| !is_json_space(*b)) {
                    return Err(BodyError::BrokenArray {
                        what: format!(
                            "there is data after the array's end, at byte {}",
                            at + 1 + offset
                        ),
                    });
                }
                return Ok(elements);
            }
            b',' if depth == 0 => {
                elements.push(trim(&body[start..at]));
                start = at + 1;
            }
            _ => {}
        }
    }
    Err(BodyError::BrokenArray {
        what: "the array is not closed (no `]` at its end)".to_string(),
    })
}

/// The record less the whitespace between JSON tokens (strings are kept byte for byte).
pub fn compact(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len());
    let mut in_string = false;
    let mut escaped = false;
    for &byte in record {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
        } else if is_json_space(byte) {
            continue;
        }
        out.push(byte);
    }
    out
}

/// JSON's insignificant whitespace.
fn is_json_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !is_json_space(*b));
    let end = bytes.iter().rposition(|b| !is_json_space(*b));
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, portal: &str, user: &str) -> String {
        format!(
            r#"{{"event_id":"{id}","portal":"{portal}","user_id":"{user}","article_id":"a-1","ts":1700000000000,"dwell_ms":1200,"scroll_pct":40,"clicks":1}}"#
        )
    }

    fn collected(portal: &str) -> bool {
        portal == "g1" || portal == "ge"
    }

    fn indexes(judged: &Judged) -> (Vec<usize>, Vec<(usize, &'static str)>) {
        (
            judged.accepted.iter().map(|e| e.index).collect(),
            judged
                .rejected
                .iter()
                .map(|r| (r.index, r.reason))
                .collect(),
        )
    }

    #[test]
    fn a_json_array_is_split_into_its_events_in_order() {
        let body = format!(
            "[{}, {} ,\n{}]",
            event("e-1", "g1", "u-1"),
            event("e-2", "ge", "u-2"),
            event("e-3", "g1", "u-1")
        );
        let judged = judge(body.as_bytes(), collected).unwrap();
        assert_eq!(indexes(&judged), (vec![0, 1, 2], vec![]));
        assert_eq!(judged.accepted[1].portal, "ge");
        assert_eq!(judged.accepted[1].user_id, "u-2");
        assert_eq!(
            judged.accepted[2].record,
            event("e-3", "g1", "u-1").into_bytes()
        );
    }

    #[test]
    fn newline_delimited_json_is_one_event_per_line_with_blank_lines_skipped() {
        // As sendBeacon sends it (text/plain), with CRLF line ends and a blank line.
        let body = format!(
            "{}\r\n\r\n  {}\n{}",
            event("e-1", "g1", "u-1"),
            event("e-2", "g1", "u-2"),
            event("e-3", "g1", "u-3")
        );
        let judged = judge(body.as_bytes(), collected).unwrap();
        assert_eq!(indexes(&judged), (vec![0, 1, 2], vec![]));
        assert_eq!(
            judged.accepted[0].record,
            event("e-1", "g1", "u-1").into_bytes()
        );
    }

    #[test]
    fn each_rejected_event_has_its_index_and_the_jobs_reason() {
        let body = [
            event("e-1", "g1", "u-1"),
            r#"{"event_id":"e-2","portal":"g1"}"#.to_string(),
            "{\"event_id\": NaN}".to_string(),
            "[1, 2]".to_string(),
            event("e-5", "G1", "u-1"),
            event("e-6", "gshow", "u-1"),
            event("e-7", "ge", "u-7"),
            r#"{"event_id":"e-8","portal":"g1","user_id":"u","article_id":"a","ts":"soon","dwell_ms":1,"scroll_pct":1,"clicks":1}"#.to_string(),
            String::new(),
        ];
        let text = format!("[{}]", body.join(","));
        let judged = judge(text.as_bytes(), collected).unwrap();
        assert_eq!(
            indexes(&judged),
            (
                vec![0, 6],
                vec![
                    (1, "missing_field"),
                    (2, "invalid_json"),
                    (3, "not_object"),
                    (4, "bad_pattern"),
                    (5, UNKNOWN_PORTAL),
                    (7, "wrong_type"),
                    (8, "invalid_json"),
                ]
            )
        );
        assert!(
            judged.rejected[0].detail.contains("user_id"),
            "{:?}",
            judged.rejected[0]
        );
        assert!(judged.rejected[4].detail.contains("gshow"));
    }

    #[test]
    fn strings_with_brackets_commas_and_escapes_do_not_split_an_event() {
        let tricky = r#"{"event_id":"e-\"],[{","portal":"g1","user_id":"u, \\","article_id":"a [1]","ts":1700000000000,"dwell_ms":0,"scroll_pct":0,"clicks":0}"#;
        let body = format!("[ {tricky} ,{}]", event("e-2", "g1", "u-2"));
        let judged = judge(body.as_bytes(), collected).unwrap();
        assert_eq!(indexes(&judged), (vec![0, 1], vec![]));
        assert_eq!(judged.accepted[0].user_id, "u, \\");
        assert_eq!(judged.accepted[0].record, tricky.as_bytes());
    }

    #[test]
    fn whitespace_between_tokens_is_removed_and_strings_are_kept() {
        let pretty = "{\n  \"event_id\": \"e 1\",\n\t\"portal\" : \"g1\" }";
        assert_eq!(
            compact(pretty.as_bytes()),
            br#"{"event_id":"e 1","portal":"g1"}"#
        );
    }

    #[test]
    fn empty_bodies_and_empty_arrays_hold_no_events() {
        for body in ["", "  \n", "[]", " [ \n ] "] {
            assert_eq!(
                split_events(body.as_bytes()),
                Err(BodyError::NoEvents),
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_broken_array_is_refused_as_a_whole() {
        let open = format!("[{}", event("e-1", "g1", "u-1"));
        assert!(matches!(
            split_events(open.as_bytes()),
            Err(BodyError::BrokenArray { .. })
        ));
        let trailing = format!("[{}] x", event("e-1", "g1", "u-1"));
        let error = split_events(trailing.as_bytes()).unwrap_err();
        assert!(
            error.to_string().contains("after the array's end"),
            "{error}"
        );
    }

    #[test]
    fn at_most_500_events_in_either_form() {
        let one = event("e", "g1", "u");
        let array = |n: usize| format!("[{}]", vec![one.as_str(); n].join(","));
        let lines = |n: usize| vec![one.as_str(); n].join("\n");
        assert_eq!(split_events(array(500).as_bytes()).unwrap().len(), 500);
        assert_eq!(split_events(lines(500).as_bytes()).unwrap().len(), 500);
        assert!(matches!(
            split_events(array(501).as_bytes()),
            Err(BodyError::TooManyEvents { count: 501 })
        ));
        assert_eq!(
            split_events(lines(600).as_bytes()),
            Err(BodyError::TooManyEvents { count: 600 })
        );
    }

    #[test]
    fn an_oversized_event_is_too_large_like_in_the_job() {
        let big = event("e-1", "g1", &"u".repeat(70_000));
        let body = format!("{big}\n{}", event("e-2", "g1", "u-2"));
        let judged = judge(body.as_bytes(), collected).unwrap();
        assert_eq!(indexes(&judged), (vec![1], vec![(0, "too_large")]));
    }
}
