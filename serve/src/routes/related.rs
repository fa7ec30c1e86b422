//! An article's related articles: `GET /v1/articles/{article_id}/related?portal=`.
//!
//! Article ids are often URL paths (`/noticia/2026/12/06/x.ghtml`), so the id may be given as it
//! is, slashes and all (`/v1/articles//noticia/2026/12/06/x.ghtml/related?portal=g1`), or
//! percent-encoded (`%2F` for `/`); both name the same article. The router hands over everything
//! after `/v1/articles/` and the handler splits off the trailing `/related`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use pageflow_dataflow::features::RelatedItem;
use serde::Serialize;

use crate::api::{
    ApiError, MAX_ARTICLE_ID_CHARS, QueryParams, check_id_length, json, parse_n, portal_from_query,
    query_params,
};
use crate::app::App;

/// The body of a related answer.
#[derive(Serialize)]
struct RelatedBody<'a> {
    portal: &'a str,
    article_id: &'a str,
    window_end: u64,
    watermark: u64,
    #[serde(rename = "final")]
    is_final: bool,
    items: &'a [RelatedItem],
}

/// `GET /v1/articles/{article_id}/related?portal=`.
pub(crate) async fn related(
    State(app): State<App>,
    article_id_then_related: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let Path(rest) = article_id_then_related.map_err(|e| {
        ApiError::bad_request(
            "invalid_article_id",
            format!(
                "the article id in the path cannot be decoded ({e}); percent-encode it as UTF-8"
            ),
        )
    })?;
    let Some(article_id) = rest.strip_suffix("/related") else {
        return Err(ApiError::not_found(
            "not_found",
            format!(
                "no such endpoint: /v1/articles/{rest} does not end in /related; ask GET /v1/articles/{{article_id}}/related?portal=<name> (the id may contain '/')"
            ),
        ));
    };
    check_id_length(
        article_id,
        "invalid_article_id",
        "article id",
        MAX_ARTICLE_ID_CHARS,
    )?;
    let params = query_params(query)?;
    let portal = portal_from_query(&params, "article ids are per portal")?;
    let n = parse_n(&params)?;
    let Some(list) = app.state.related(portal, article_id) else {
        return Err(if app.state.knows_portal(portal) {
            ApiError::not_found(
                "article_not_found",
                format!(
                    "no related articles computed for article {article_id:?} in portal {portal:?} yet: check the id, or retry after it has been read together with other articles"
                ),
            )
        } else {
            ApiError::not_found(
                "portal_not_found",
                format!(
                    "nothing computed for portal {portal:?} yet: check the name (GET /v1/portals lists the known ones) or retry once its first events are processed"
                ),
            )
        });
    };
    let items = &list.items[..n.min(list.items.len())];
    Ok(json(&RelatedBody {
        portal: &list.portal,
        article_id: &list.article_id,
        window_end: list.window_end,
        watermark: list.watermark(),
        is_final: true,
        items,
    }))
}
