//! CORS: which pages may send beacons, per portal (`[[collect.portals]] origins`).
//!
//! A browser names the page's origin in the `Origin` header. A request from an origin no portal
//! lists is refused as a whole (403 `origin_not_allowed`), its preflight too; from a listed origin,
//! each event must belong to a portal that lists it, else it is rejected with the reason
//! `origin_not_allowed` (a page of one portal cannot write into another's stream). Allowed answers
//! carry `Access-Control-Allow-Origin` with that origin and `Vary: Origin`. Requests without
//! `Origin` (not from a browser page: servers, tests, the pixel) are not restricted.
//!
//! `navigator.sendBeacon` with a string body is a CORS "simple" request (`text/plain`, no
//! preflight); `fetch` with `Content-Type: application/json` sends the preflight `OPTIONS` first.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{HeaderMap, HeaderValue, header};

use super::config::CollectConfig;
use super::request::{Judged, RejectedEvent};

/// The reason given to an event whose portal does not list the request's origin.
pub const ORIGIN_NOT_ALLOWED: &str = "origin_not_allowed";

/// How long a browser may keep a preflight's answer (a day).
const PREFLIGHT_MAX_AGE_SECONDS: &str = "86400";

/// The allowed origins of each portal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origins {
    by_portal: BTreeMap<String, BTreeSet<String>>,
    any_portal: BTreeSet<String>,
}

impl Origins {
    /// The origins `[[collect.portals]]` lists.
    pub fn from_config(config: &CollectConfig) -> Self {
        let mut origins = Origins::default();
        for entry in &config.portals {
            let listed: BTreeSet<String> = entry.origins.iter().cloned().collect();
            origins.any_portal.extend(listed.iter().cloned());
            origins.by_portal.insert(entry.portal.clone(), listed);
        }
        origins
    }

    /// Whether some portal lists `origin`.
    pub fn allowed(&self, origin: &str) -> bool {
        self.any_portal.contains(origin)
    }

    /// Whether `portal` lists `origin`.
    pub fn allowed_for(&self, portal: &str, origin: &str) -> bool {
        self.by_portal
            .get(portal)
            .is_some_and(|origins| origins.contains(origin))
    }

    /// Moves the accepted events whose portal does not list `origin` to the rejected ones (kept in
    /// the body's order).
    pub fn restrict(&self, judged: &mut Judged, origin: &str) {
        let (kept, refused): (Vec<_>, Vec<_>) = std::mem::take(&mut judged.accepted)
            .into_iter()
            .partition(|event| self.allowed_for(&event.portal, origin));
        judged.accepted = kept;
        if refused.is_empty() {
            return;
        }
        judged
            .rejected
            .extend(refused.into_iter().map(|event| RejectedEvent {
                index: event.index,
                reason: ORIGIN_NOT_ALLOWED,
                detail: format!(
                    "pages of {origin} may not send events of portal `{}`: add the origin to its [[collect.portals]] origins, or send the event from one of its pages",
                    event.portal
                ),
            }));
        judged.rejected.sort_by_key(|rejected| rejected.index);
    }
}

/// The request's `Origin`, if it has a readable one.
pub fn origin(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
}

/// Adds the headers that let the page at `origin` read the answer.
pub fn allow(headers: &mut HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// Adds the preflight's answer headers for an allowed origin.
pub fn allow_preflight(headers: &mut HeaderMap, origin: &str) {
    allow(headers, origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECONDS),
    );
}

#[cfg(test)]
mod tests {
    use super::super::config::CollectPortal;
    use super::super::request::AcceptedEvent;
    use super::*;

    fn origins() -> Origins {
        let portal = |name: &str, origins: &[&str]| CollectPortal {
            portal: name.to_string(),
            stream: format!("pageviews-{name}"),
            origins: origins.iter().map(|o| o.to_string()).collect(),
            sqs_queue: None,
        };
        Origins::from_config(&CollectConfig {
            portals: vec![
                portal("g1", &["https://g1.example.com"]),
                portal(
                    "ge",
                    &["https://ge.example.com", "https://m.ge.example.com"],
                ),
            ],
            ..CollectConfig::default()
        })
    }

    fn accepted(index: usize, portal: &str) -> AcceptedEvent {
        AcceptedEvent {
            index,
            portal: portal.to_string(),
            user_id: "u".to_string(),
            record: Vec::new(),
        }
    }

    #[test]
    fn an_origin_is_allowed_for_the_portals_that_list_it() {
        let origins = origins();
        assert!(origins.allowed("https://m.ge.example.com"));
        assert!(!origins.allowed("https://evil.example.com"));
        assert!(origins.allowed_for("g1", "https://g1.example.com"));
        assert!(!origins.allowed_for("g1", "https://ge.example.com"));
        assert!(!origins.allowed_for("gshow", "https://g1.example.com"));
    }

    #[test]
    fn events_of_other_portals_are_rejected_in_the_bodys_order() {
        let mut judged = Judged {
            accepted: vec![accepted(0, "g1"), accepted(2, "ge"), accepted(3, "g1")],
            rejected: vec![RejectedEvent {
                index: 1,
                reason: "missing_field",
                detail: String::new(),
            }],
        };
        origins().restrict(&mut judged, "https://g1.example.com");
        assert_eq!(
            judged.accepted.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![0, 3]
        );
        assert_eq!(
            judged
                .rejected
                .iter()
                .map(|r| (r.index, r.reason))
                .collect::<Vec<_>>(),
            vec![(1, "missing_field"), (2, ORIGIN_NOT_ALLOWED)]
        );
        assert!(judged.rejected[1].detail.contains("`ge`"));
    }
}
