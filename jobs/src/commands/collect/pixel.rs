//! `GET /v1/pixel.gif?…`: the beacon of a page without JavaScript (`<img src=…>` or `<noscript>`).
//!
//! The query's fields make one pageview object with the schema's names (`event_id`, `portal`,
//! `user_id`, `article_id`, `ts`, `dwell_ms`, `scroll_pct`, `clicks`, `url`, `referrer`,
//! `device`); other parameters (cache busters such as `_=123`) are left out, and a name given twice
//! counts with its first value. The numeric fields are written as JSON integers when they are
//! integers, else as the string given, so that the job's validation rejects them with its reason
//! (`wrong_type`). The collector fills in only what a static page cannot know:
//! - `ts`, when absent: the arrival time (ms since the epoch);
//! - `event_id`, when absent: a new random UUID (so a browser that re-requests the image counts
//!   twice; a page that can give an id should).
//!
//! The event then goes through `routes::accept`, the judging and durable write of
//! `POST /v1/collect`. The answer is always a 1×1 transparent GIF with `Cache-Control: no-store`
//! (an image must not be cached, or the next view is not requested); its status says the outcome:
//! 200 accepted, 400 rejected (the reason is in `/metrics`), 503 not durable (with `Retry-After`),
//! 429 over the client's rate limit, 403 from a page origin no portal lists.

use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::cors;
use super::routes::{Collector, accept};

/// A 1×1 transparent GIF (GIF89a, one transparent pixel).
pub const TRANSPARENT_GIF: [u8; 42] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x01, 0x44, 0x00, 0x3b,
];

/// The schema's string fields, taken from the query as they are.
const TEXT_FIELDS: [&str; 7] = [
    "event_id",
    "portal",
    "user_id",
    "article_id",
    "url",
    "referrer",
    "device",
];

/// The schema's integer fields.
const INTEGER_FIELDS: [&str; 4] = ["ts", "dwell_ms", "scroll_pct", "clicks"];

/// `GET /v1/pixel.gif`.
pub async fn pixel(State(collector): State<Arc<Collector>>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    let pairs: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|query| {
            form_urlencoded_pairs(query)
                .into_iter()
                .filter(|(name, _)| !name.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let event = pageview_from_query(&pairs, arrival_ms(), new_event_id);
    let origin = cors::origin(&parts.headers);
    let outcome = match (
        origin,
        collector.limits.check(&parts.headers, &parts.extensions),
    ) {
        (Some(origin), _) if !collector.origins.allowed(origin) => StatusCode::FORBIDDEN,
        (_, Err(_)) => StatusCode::TOO_MANY_REQUESTS,
        (_, Ok(())) => match serde_json::to_vec(&event) {
            Ok(bytes) => accept(&collector, &bytes, origin).await.status(),
            // Only strings and integers: this cannot happen.
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
    };
    collector.metrics.record_request(outcome.as_u16());
    gif(outcome)
}

/// The GIF with `status`.
fn gif(status: StatusCode) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        TRANSPARENT_GIF.as_slice(),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The pageview object the query describes; `ts` and `event_id` filled in when absent.
pub fn pageview_from_query(
    pairs: &[(String, String)],
    arrival_ms: u64,
    new_event_id: impl FnOnce() -> String,
) -> Value {
    let first = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let mut event = Map::new();
    for name in TEXT_FIELDS {
        if let Some(value) = first(name) {
            event.insert(name.to_string(), Value::String(value.to_string()));
        }
    }
    for name in INTEGER_FIELDS {
        if let Some(value) = first(name) {
            let number = value
                .parse::<u64>()
                .map(Value::from)
                .or_else(|_| value.parse::<i64>().map(Value::from))
                .unwrap_or_else(|_| Value::String(value.to_string()));
            event.insert(name.to_string(), number);
        }
    }
    event.entry("ts").or_insert_with(|| Value::from(arrival_ms));
    event
        .entry("event_id")
        .or_insert_with(|| Value::String(new_event_id()));
    Value::Object(event)
}

/// `application/x-www-form-urlencoded` pairs: `+` is a space, `%XX` a byte (invalid UTF-8 is
/// replaced, so the job's validation sees a string, not an error here).
fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Now, in ms since the epoch.
fn arrival_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// A random (version 4) UUID: 122 bits of a hash keyed by the process's random seed (std's
/// `RandomState`, from the OS) over the time and a counter, so ids differ within and across
/// processes without another dependency.
fn new_event_id() -> String {
    use std::hash::BuildHasher as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: LazyLock<u64> = LazyLock::new(|| {
        std::collections::hash_map::RandomState::new().hash_one(std::process::id())
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let mut input = [0u8; 32];
    input[..16].copy_from_slice(&nanos.to_le_bytes());
    input[16..24].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    input[24..].copy_from_slice(&SEED.to_le_bytes());
    let hash = xxhash_rust::xxh3::xxh3_128_with_seed(&input, *SEED);
    let bits = (hash & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        form_urlencoded_pairs(query)
    }

    #[test]
    fn the_query_makes_a_pageview_with_integers_and_decoded_text() {
        let event = pageview_from_query(
            &pairs(
                "portal=g1&user_id=u-1&article_id=g1%2Fpolitica%2Fnoticia+1&ts=1700000000000\
                 &dwell_ms=4200&scroll_pct=80&clicks=2&url=https%3A%2F%2Fg1.example.com%2Fa%3Fb%3D1\
                 &event_id=e-1&_=12345&portal=ge",
            ),
            5,
            || unreachable!("the id was given"),
        );
        assert_eq!(
            event,
            serde_json::json!({
                "event_id": "e-1", "portal": "g1", "user_id": "u-1",
                "article_id": "g1/politica/noticia 1", "ts": 1700000000000u64,
                "dwell_ms": 4200, "scroll_pct": 80, "clicks": 2,
                "url": "https://g1.example.com/a?b=1",
            })
        );
    }

    #[test]
    fn the_collector_fills_in_only_ts_and_event_id_when_absent() {
        let event = pageview_from_query(
            &pairs("portal=g1&user_id=u&article_id=a"),
            1_795_435_200_000,
            || "new-id".to_string(),
        );
        assert_eq!(event["ts"], 1_795_435_200_000u64);
        assert_eq!(event["event_id"], "new-id");
        assert!(event.get("dwell_ms").is_none(), "the job's default applies");
    }

    #[test]
    fn a_number_that_is_not_an_integer_stays_a_string_for_the_job_to_reject() {
        let event = pageview_from_query(&pairs("dwell_ms=4.5&clicks=-1&ts=x"), 0, String::new);
        assert_eq!(event["dwell_ms"], "4.5");
        assert_eq!(event["clicks"], -1);
        assert_eq!(event["ts"], "x");
        let judged =
            super::super::request::judge(&serde_json::to_vec(&event).unwrap(), |_| true).unwrap();
        assert!(judged.accepted.is_empty());
    }

    #[test]
    fn percent_decoding_keeps_a_lone_percent_and_replaces_invalid_utf8() {
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("%ff"), "\u{fffd}");
        assert_eq!(decode("%C3%A7"), "ç");
    }

    #[test]
    fn event_ids_are_version_4_uuids() {
        let id = new_event_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, new_event_id());
    }

    #[test]
    fn the_answer_is_a_gif_that_is_never_cached() {
        let response = gif(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "image/gif");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(&TRANSPARENT_GIF[..6], b"GIF89a");
    }
}
