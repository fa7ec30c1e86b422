//! An article's related articles: `GET /v1/articles/{article_id}/related?portal=`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use pageflow_dataflow::features::RelatedItem;
use serde::Serialize;

use crate::api::{
    ApiError, MAX_ARTICLE_ID_CHARS, QueryParams, id_from_path, json, parse_n, portal_from_query,
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
    article_id: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let article_id = id_from_path(
        article_id,
        "invalid_article_id",
        "article id",
        MAX_ARTICLE_ID_CHARS,
    )?;
    let params = query_params(query)?;
    let portal = portal_from_query(&params, "article ids are per portal")?;
    let n = parse_n(&params)?;
    let Some(list) = app.state.related(portal, &article_id) else {
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
