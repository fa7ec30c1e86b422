//! `GET /`: the dashboard, one self-contained HTML page (no external script or style) that reads
//! the API like any other client.

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

/// The page served at `/`.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// `GET /`: the live page.
pub(crate) async fn index() -> Response {
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
                ),
            ),
        ],
        Html(DASHBOARD_HTML),
    )
        .into_response()
}
