//! `GET /openapi.json`: the API's description (see [`crate::openapi`]) as the running
//! configuration's security fills it in.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::app::App;

/// `GET /openapi.json`.
pub(crate) async fn openapi_json(State(app): State<App>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        app.openapi.clone(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use serde_json::{Value, json};

    use crate::auth::AuthConfig;
    use crate::auth::tests::{KEY, get, test_security};
    use crate::auth::{Policy, ROUTES, RouteAccess, RouteGroup};
    use crate::cors::CorsConfig;
    use crate::openapi::{TEMPLATE, document};
    use crate::rate_limit::RateLimitConfig;
    use crate::{App, ServingState, app_router, router};
    use pageflow_metrics::Metrics;

    fn template() -> Value {
        serde_json::from_str(TEMPLATE).unwrap_or_else(|e| panic!("openapi.json: {e}"))
    }

    fn served(policy_of: &dyn Fn(RouteGroup) -> Policy) -> Value {
        serde_json::from_slice(&document(policy_of)).unwrap()
    }

    fn route_paths() -> BTreeSet<String> {
        ROUTES.iter().map(|route| route.path.to_string()).collect()
    }

    /// The paths of the router's routes, read from its `Debug` form (axum prints each route's
    /// path there; it has no other way to list them).
    fn router_paths() -> BTreeSet<String> {
        let router = router(Arc::new(ServingState::new()), Arc::new(Metrics::new()));
        let debug = format!("{router:?}");
        // Only the routes, not the fallback router's internal catch-all paths.
        let routes = debug.split("fallback_router").next().unwrap_or_default();
        let mut paths = BTreeSet::new();
        let mut rest = routes;
        while let Some(at) = rest.find("RouteId(") {
            rest = &rest[at..];
            let Some(open) = rest.find(": \"") else { break };
            let after = &rest[open + 3..];
            let Some(close) = after.find('"') else { break };
            paths.insert(after[..close].to_string());
            rest = &after[close..];
        }
        assert!(
            paths.contains("/healthz") && paths.contains("/v1/portals"),
            "cannot read the routes from the router's Debug form (did axum change it?): {paths:?}\n{debug}"
        );
        paths
    }

    #[test]
    fn every_route_is_documented_and_every_documented_path_is_a_route() {
        let document = template();
        let paths = document["paths"]
            .as_object()
            .unwrap_or_else(|| panic!("openapi.json has no paths"));
        let documented: BTreeSet<String> = paths.keys().cloned().collect();
        assert_eq!(
            documented,
            route_paths(),
            "openapi.json paths vs auth::ROUTES"
        );
        for (path, item) in paths {
            let methods: Vec<&String> = item
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            assert_eq!(methods, ["get"], "{path}: every route is GET only");
        }
    }

    #[test]
    fn the_router_serves_exactly_the_listed_routes() {
        let listed: BTreeSet<String> = ROUTES
            .iter()
            .map(|route| route.router_path.to_string())
            .collect();
        assert_eq!(router_paths(), listed, "router vs auth::ROUTES");
    }

    /// `value`, following a local `$ref`.
    fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.trim_start_matches('#');
                document
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} does not resolve"))
            }
            None => value,
        }
    }

    #[test]
    fn every_reference_resolves_and_every_path_parameter_is_declared() {
        let document = template();
        fn walk<'a>(value: &'a Value, refs: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(reference)) = map.get("$ref") {
                        refs.push(reference);
                    }
                    map.values().for_each(|v| walk(v, refs));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, refs)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(&document, &mut refs);
        assert!(refs.len() > 20);
        for reference in refs {
            assert!(
                document
                    .pointer(reference.trim_start_matches('#'))
                    .is_some(),
                "{reference} does not resolve"
            );
        }
        for route in ROUTES {
            let operation = &document["paths"][route.path]["get"];
            let declared: BTreeSet<&str> = operation["parameters"]
                .as_array()
                .map(|parameters| {
                    parameters
                        .iter()
                        .map(|p| resolve(&document, p))
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            let in_template: BTreeSet<&str> = route
                .path
                .split('/')
                .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(declared, in_template, "{}", route.path);
            let responses = operation["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{}: no responses", route.path));
            assert!(responses.contains_key("200"), "{}", route.path);
            let guarded = matches!(route.access, RouteAccess::Group(_));
            for code in ["401", "403", "429"] {
                assert_eq!(
                    responses.contains_key(code),
                    guarded,
                    "{}: {code} is documented exactly on guarded routes",
                    route.path
                );
            }
        }
    }

    #[test]
    fn security_follows_the_configured_policies() {
        let document = served(&|group| match group {
            RouteGroup::Rankings => Policy::ApiKeyOrJwt,
            RouteGroup::Recommendations => Policy::Jwt,
            RouteGroup::Metrics => Policy::ApiKey,
            RouteGroup::Dashboard => Policy::Open,
        });
        let security = |path: &str| document["paths"][path]["get"]["security"].clone();
        assert_eq!(
            security("/v1/portals/{portal}/popular"),
            json!([{"ApiKey": []}, {"CognitoJwt": []}])
        );
        assert_eq!(
            security("/v1/users/{user_id}/recommendations"),
            json!([{"CognitoJwt": []}])
        );
        assert_eq!(security("/metrics"), json!([{"ApiKey": []}]));
        assert_eq!(security("/"), json!([]));
        assert_eq!(security("/healthz"), json!([]));
        assert_eq!(security("/openapi.json"), json!([]));
        assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemes = &document["components"]["securitySchemes"];
        assert_eq!(schemes["ApiKey"]["name"], "x-api-key");
        assert_eq!(schemes["CognitoJwt"]["scheme"], "bearer");
    }

    /// A request path for `template` with sample parameter values.
    fn sample_path(template: &str) -> String {
        let path = template
            .replace("{portal}", "g1")
            .replace("{article_id}", "a1")
            .replace("{user_id}", "u1");
        if template.contains("{article_id}") || template.contains("{user_id}") {
            format!("{path}?portal=g1")
        } else {
            path
        }
    }

    #[tokio::test]
    async fn the_routers_answers_are_documented() {
        let document = template();
        let documented = |path: &str, status: StatusCode| {
            document["paths"][path]["get"]["responses"]
                .get(status.as_str())
                .is_some()
        };
        // Open routes, then routes that need a key (asked without one, and with one).
        let auth = AuthConfig {
            rankings: Policy::ApiKey,
            recommendations: Policy::ApiKey,
            dashboard: Policy::ApiKey,
            metrics: Policy::ApiKey,
            ..AuthConfig::default()
        };
        let (security, _dir) =
            test_security(auth, RateLimitConfig::default(), CorsConfig::default()).await;
        let secured = app_router(
            App::new(Arc::new(ServingState::new()), Arc::new(Metrics::new()))
                .with_security(security),
        );
        let open = router(Arc::new(ServingState::new()), Arc::new(Metrics::new()));
        for route in ROUTES {
            let uri = sample_path(route.path);
            for (router, headers) in [
                (&open, &[][..]),
                (&secured, &[][..]),
                (&secured, &[("x-api-key", KEY)][..]),
            ] {
                let request: Request<Body> = get(&uri, headers);
                let response = router.clone().oneshot(request).await.unwrap();
                assert!(
                    documented(route.path, response.status()),
                    "GET {uri} answered {}, which openapi.json does not list",
                    response.status()
                );
            }
        }
    }

    #[tokio::test]
    async fn the_document_is_served_with_the_running_policies() {
        let open = router(Arc::new(ServingState::new()), Arc::new(Metrics::new()));
        let response = open.oneshot(get("/openapi.json", &[])).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let document: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(document["openapi"], "3.0.3");
        assert_eq!(
            document["paths"]["/v1/portals"]["get"]["security"],
            json!([])
        );
    }
}
