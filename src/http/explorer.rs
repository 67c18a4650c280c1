//! GraphiQL and GraphQL Playground, served with every script and stylesheet embedded in the
//! binary, so both work with no internet access.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use super::Path;

pub async fn graphiql() -> Html<&'static str> {
    Html(include_str!("explorer/graphiql.html"))
}

pub async fn playground() -> Html<&'static str> {
    Html(include_str!("explorer/playground.html"))
}

/// The vendored assets; licenses in explorer/assets/LICENSES.md.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("explorer/assets/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("explorer/assets/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("explorer/assets/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("explorer/assets/react-dom.production.min.js"),
    ),
    (
        "graphql-ws.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("explorer/assets/graphql-ws.min.js"),
    ),
    (
        "middleware.js",
        "text/javascript; charset=utf-8",
        include_bytes!("explorer/assets/middleware.js"),
    ),
    (
        "middleware.css",
        "text/css; charset=utf-8",
        include_bytes!("explorer/assets/middleware.css"),
    ),
];

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=86400"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
