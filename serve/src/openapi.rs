//! The API's OpenAPI 3.0 description, served at `GET /openapi.json`.
//!
//! `openapi.json` beside this file is the description, written by hand: every route of
//! [`ROUTES`] with its parameters and their constraints (the portal pattern, ids of 1 to 256
//! characters, `n` from 1 to 100), its answers (the error body included, and the 401/403/429 of
//! the guarded route groups) and the two security schemes, `ApiKey` (the `x-api-key` header) and
//! `CognitoJwt` (a bearer JWT). At start-up each operation's `security` is filled in from the
//! running configuration's policy of its route group (see [`crate::auth`]), and `info.version`
//! from the crate, so the document served is the API as it runs.
//!
//! Tests check that the router, the route list and the document's `paths` agree (a route added
//! to the router must be added to [`ROUTES`] and to `openapi.json`), that every `$ref` resolves,
//! and that the router's answers are documented; `scripts/schemathesis.sh` checks the running
//! binary against the document.

use axum::body::Bytes;
use serde_json::{Value, json};

use crate::auth::{Policy, ROUTES, RouteAccess, RouteGroup};

/// The description as written, before the running configuration is filled in.
pub const TEMPLATE: &str = include_str!("openapi.json");

/// The document for the policies `policy_of`, as JSON bytes.
pub(crate) fn document(policy_of: &dyn Fn(RouteGroup) -> Policy) -> Bytes {
    let Ok(mut document) = serde_json::from_str::<Value>(TEMPLATE) else {
        // The template is tested to parse; should it not, it is still served as written.
        return Bytes::from_static(TEMPLATE.as_bytes());
    };
    document["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    for route in ROUTES {
        let policy = match route.access {
            RouteAccess::AlwaysOpen => Policy::Open,
            RouteAccess::Group(group) => policy_of(group),
        };
        if let Some(operation) = document
            .pointer_mut(&format!("/paths/{}/get", escape_pointer(route.path)))
            .and_then(Value::as_object_mut)
        {
            operation.insert("security".to_string(), security_requirement(policy));
        }
    }
    match serde_json::to_vec(&document) {
        Ok(bytes) => Bytes::from(bytes),
        Err(_) => Bytes::from_static(TEMPLATE.as_bytes()),
    }
}

/// An operation's `security` for `policy`: alternatives, any one of which suffices.
fn security_requirement(policy: Policy) -> Value {
    match policy {
        Policy::Open => json!([]),
        Policy::ApiKey => json!([{"ApiKey": []}]),
        Policy::Jwt => json!([{"CognitoJwt": []}]),
        Policy::ApiKeyOrJwt => json!([{"ApiKey": []}, {"CognitoJwt": []}]),
    }
}

/// `path` as one JSON-pointer token (`~` → `~0`, `/` → `~1`).
fn escape_pointer(path: &str) -> String {
    path.replace('~', "~0").replace('/', "~1")
}
