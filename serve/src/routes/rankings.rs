//! The portals' rankings: `GET /v1/portals`, `GET /v1/portals/{portal}/popular` and
//! `…/trending` (their change streams are in [`super::stream`]).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use pageflow_dataflow::features::{RankedItem, RankingKind};
use serde::Serialize;

use crate::api::{ApiError, QueryParams, check_portal, json, parse_n, query_params};
use crate::app::App;
use crate::state::Ranking;

/// `GET /v1/portals`.
pub(crate) async fn portals(State(app): State<App>) -> Response {
    #[derive(Serialize)]
    struct Portals {
        portals: Vec<String>,
    }
    json(&Portals {
        portals: app.state.portals(),
    })
}

/// The body of a ranking answer (also the data of a change stream's `ranking` event).
#[derive(Serialize)]
pub(crate) struct RankingBody<'a> {
    portal: &'a str,
    kind: &'static str,
    window_start: u64,
    window_end: u64,
    watermark: u64,
    #[serde(rename = "final")]
    is_final: bool,
    items: &'a [RankedItem],
}

/// `GET /v1/portals/{portal}/popular`.
pub(crate) async fn popular(
    State(app): State<App>,
    portal: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    ranking(&app, RankingKind::Popular, portal, query)
}

/// `GET /v1/portals/{portal}/trending`.
pub(crate) async fn trending(
    State(app): State<App>,
    portal: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    ranking(&app, RankingKind::Trending, portal, query)
}

fn ranking(
    app: &App,
    kind: RankingKind,
    portal: Result<Path<String>, PathRejection>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let portal = portal_from_path(portal)?;
    let params = query_params(query)?;
    let n = parse_n(&params)?;
    let only_final = parse_final(&params)?;
    let ranking = if only_final {
        app.state.final_ranking(&portal, kind)
    } else {
        app.state.ranking(&portal, kind)
    };
    let Some(ranking) = ranking else {
        let which = if only_final { "final " } else { "" };
        return Err(ApiError::not_found(
            "portal_not_found",
            format!(
                "no {which}{} ranking for portal {portal:?} yet: check the name (GET /v1/portals lists the known ones) or retry once its first window is complete",
                kind.name()
            ),
        ));
    };
    Ok(json(&ranking_body(&ranking, n)))
}

/// `final` from the query: absent or `false` → the ranking to serve (the provisional preview of
/// the window still filling when it is newer); `true` → the last final ranking only.
fn parse_final(params: &std::collections::HashMap<String, String>) -> Result<bool, ApiError> {
    match params.get("final").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_final",
            format!(
                "final={other:?} is not allowed: give final=true for the last final ranking, or leave it out for the newest (possibly provisional) one"
            ),
        )),
    }
}

/// The portal of a `/v1/portals/{portal}/…` path, decoded and checked (`invalid_portal`).
pub(crate) fn portal_from_path(
    portal: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let Path(portal) = portal.map_err(|e| {
        ApiError::bad_request(
            "invalid_portal",
            format!("the portal in the path cannot be decoded ({e}); use lowercase letters, digits or '-'"),
        )
    })?;
    check_portal(&portal)?;
    Ok(portal)
}

/// The answer body of `ranking` cut to its first `n` items.
pub(crate) fn ranking_body(ranking: &Ranking, n: usize) -> RankingBody<'_> {
    RankingBody {
        portal: &ranking.portal,
        kind: ranking.kind.name(),
        window_start: ranking.window_start,
        window_end: ranking.window_end,
        watermark: ranking.watermark,
        is_final: ranking.is_final,
        items: &ranking.items[..n.min(ranking.items.len())],
    }
}
