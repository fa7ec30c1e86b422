//! The browser tracker, `GET /tracker.js`, and a page to try it on, `GET /tracker/test.html`.
//!
//! The script is `jobs/assets/tracker.js`, built into the binary: plain ES2017, no dependencies, no
//! build step (its life cycle and API are in its header comment and the README, "The front door").
//! It is answered with an `ETag` (a hash of its text) and `Cache-Control: public, max-age=300`: a
//! page loads it from the browser's cache for five minutes, then revalidates (`If-None-Match` →
//! 304), so a new version reaches every reader within minutes of a deploy without a versioned URL.
//!
//! The test page is for trying the tracker by hand and for the browser test
//! (`jobs/tests/end_to_end/tracker.rs`): an article long enough to scroll, a button and a link to
//! click, and the tracker for `?portal=` (default `g1`) and `?article=` (default `test-article`).
//! `?consent=required` makes the page wait for `pageflow('consent', true)`.

use std::sync::LazyLock;

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// The tracker's source.
pub const TRACKER_JS: &str = include_str!("../../../assets/tracker.js");

/// How long a browser may use its copy of the script before it asks again.
const TRACKER_CACHE_CONTROL: &str = "public, max-age=300";

/// The script's entity tag: a hash of its text, so it changes exactly when the script does.
static TRACKER_ETAG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "\"{:016x}\"",
        xxhash_rust::xxh3::xxh3_64(TRACKER_JS.as_bytes())
    )
});

/// `GET /tracker.js`: the script, or 304 when the browser's copy (`If-None-Match`) is current.
pub async fn tracker_js(headers: HeaderMap) -> Response {
    let etag = TRACKER_ETAG.as_str();
    let current = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| matches!(tag.trim(), "*") || tag.trim() == etag)
        });
    let status = if current {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut response = if current {
        status.into_response()
    } else {
        (status, TRACKER_JS).into_response()
    };
    let answer = response.headers_mut();
    answer.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    answer.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(TRACKER_CACHE_CONTROL),
    );
    if let Ok(value) = HeaderValue::from_str(etag) {
        answer.insert(header::ETAG, value);
    }
    response
}

/// The test page's query.
#[derive(Debug, Default, Deserialize)]
pub struct TestPageQuery {
    portal: Option<String>,
    article: Option<String>,
    consent: Option<String>,
}

/// `GET /tracker/test.html`: an article page with the tracker, for trying it and the browser test.
pub async fn test_page(Query(query): Query<TestPageQuery>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        render_test_page(&query),
    )
        .into_response()
}

fn render_test_page(query: &TestPageQuery) -> String {
    let portal = escape(query.portal.as_deref().unwrap_or("g1"));
    let article = escape(query.article.as_deref().unwrap_or("test-article"));
    let consent = if query.consent.as_deref() == Some("required") {
        " data-require-consent=\"true\""
    } else {
        ""
    };
    let paragraph = "<p>This page is long on purpose: scrolling it moves the tracker's scroll \
                     depth, and the time it is visible is its dwell time. Hiding it (another tab) \
                     pauses the dwell; leaving it sends the view.</p>\n";
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"pageflow:article\" content=\"{article}\">\n\
         <title>pageflow tracker test: {article}</title>\n\
         <script src=\"/tracker.js\" data-portal=\"{portal}\"{consent}></script>\n</head>\n<body>\n\
         <h1>Article {article}</h1>\n\
         <p>A test page of <code>pageflow collect</code> for the browser tracker (portal {portal}).</p>\n\
         <button id=\"like\" type=\"button\">Like</button>\n\
         {paragraphs}\
         <p><a id=\"next\" href=\"/tracker/test.html?portal={portal}&amp;article={article}-next\">Next article</a></p>\n\
         </body>\n</html>\n",
        paragraphs = paragraph.repeat(60),
    )
}

/// `text` safe inside HTML text and double-quoted attributes.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            other => other.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_script_is_javascript_with_an_etag_and_a_short_cache() {
        let response = tracker_js(HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=300");
        let etag = headers[header::ETAG].to_str().unwrap().to_string();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body, TRACKER_JS.as_bytes());
    }

    #[tokio::test]
    async fn a_current_copy_is_answered_304_without_a_body() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"old\", {}", TRACKER_ETAG.as_str())).unwrap(),
        );
        let response = tracker_js(headers).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], TRACKER_ETAG.as_str());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(body.is_empty());

        let mut stale = HeaderMap::new();
        stale.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"old\""));
        assert_eq!(tracker_js(stale).await.status(), StatusCode::OK);
    }

    #[test]
    fn the_test_page_loads_the_tracker_for_its_portal_and_escapes_the_query() {
        let page = render_test_page(&TestPageQuery {
            portal: Some("ge".to_string()),
            article: Some("a\"><script>x</script>".to_string()),
            consent: None,
        });
        assert!(page.contains("<script src=\"/tracker.js\" data-portal=\"ge\"></script>"));
        assert!(page.contains("content=\"a&quot;&gt;&lt;script&gt;x&lt;/script&gt;\""));
        assert!(!page.contains("<script>x"));
        let waiting = render_test_page(&TestPageQuery {
            consent: Some("required".to_string()),
            ..TestPageQuery::default()
        });
        assert!(waiting.contains("data-portal=\"g1\" data-require-consent=\"true\""));
        assert!(waiting.contains("content=\"test-article\""));
    }
}
