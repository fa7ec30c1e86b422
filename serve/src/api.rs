//! What the handlers share: the error answer with its stable code, JSON answers that are never
//! cached, and the checks of path segments and query parameters (portal, ids, `n`).

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pageflow_dataflow::event::is_valid_portal;
use serde::Serialize;

/// `n` when the query does not say.
pub const DEFAULT_N: usize = 10;
/// The largest `n` accepted.
pub const MAX_N: usize = 100;
/// The longest article id accepted, in characters.
pub const MAX_ARTICLE_ID_CHARS: usize = 256;
/// The longest portal accepted, in characters (the one portal rule is `pageflow_dataflow::event`'s).
pub use pageflow_dataflow::event::MAX_PORTAL_CHARS;
/// The longest user id accepted, in characters.
pub const MAX_USER_ID_CHARS: usize = 256;

/// An error answer: status, stable code, and a message saying what to do.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn bad_request(code: &'static str, message: String) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
        }
    }

    pub(crate) fn not_found(code: &'static str, message: String) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code,
            message,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        (self.status, json(&body)).into_response()
    }
}

/// A JSON answer that must not be cached.
pub(crate) fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            bytes,
        )
            .into_response(),
        // Only strings, integers and floats are serialised: this cannot happen.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The query parameters, or `invalid_query`.
pub(crate) type QueryParams = Result<Query<HashMap<String, String>>, QueryRejection>;

pub(crate) fn query_params(query: QueryParams) -> Result<HashMap<String, String>, ApiError> {
    query.map(|Query(params)| params).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "the query string cannot be decoded ({e}); percent-encode parameter values as UTF-8"
            ),
        )
    })
}

pub(crate) fn check_portal(portal: &str) -> Result<(), ApiError> {
    if is_valid_portal(portal) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_portal",
            format!(
                "portal {portal:?} is not a portal name: use 1 to {MAX_PORTAL_CHARS} lowercase letters, digits or '-', starting with a letter or digit (e.g. \"news-1\")"
            ),
        ))
    }
}

/// An id from the path (an article's, a user's): 1 to `max` characters after percent-decoding,
/// else 400 with `code`.
pub(crate) fn id_from_path(
    id: Result<Path<String>, PathRejection>,
    code: &'static str,
    what: &str,
    max: usize,
) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| {
        ApiError::bad_request(
            code,
            format!("the {what} in the path cannot be decoded ({e}); percent-encode it as UTF-8"),
        )
    })?;
    check_id_length(&id, code, what, max)?;
    Ok(id)
}

/// An id of 1 to `max` characters, else 400 with `code`.
pub(crate) fn check_id_length(
    id: &str,
    code: &'static str,
    what: &str,
    max: usize,
) -> Result<(), ApiError> {
    let chars = id.chars().count();
    if (1..=max).contains(&chars) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            code,
            format!("the {what} has {chars} characters: give 1 to {max}"),
        ))
    }
}

/// The `portal` query parameter, required and checked; `why` says why the route needs one.
pub(crate) fn portal_from_query<'a>(
    params: &'a HashMap<String, String>,
    why: &str,
) -> Result<&'a str, ApiError> {
    let Some(portal) = params.get("portal") else {
        return Err(ApiError::bad_request(
            "invalid_portal",
            format!("the portal query parameter is missing: {why}, add ?portal=<name>"),
        ));
    };
    check_portal(portal)?;
    Ok(portal)
}

/// `n` from the query: absent → [`DEFAULT_N`], else a whole number in `1..=MAX_N`.
pub(crate) fn parse_n(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    let Some(text) = params.get("n") else {
        return Ok(DEFAULT_N);
    };
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_N).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_n",
            format!(
                "n={text:?} is not allowed: give a whole number from 1 to {MAX_N}, or leave n out for {DEFAULT_N}"
            ),
        )),
    }
}
