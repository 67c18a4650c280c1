//! Request limits: the per-IP rate limit, the body size limit, malformed and too-deep GraphQL, and
//! the request id every response carries. SQLite only: none of this touches the database shape.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use smartbot::{Config, config::RateLimit};

use crate::common::{Db, TestApp};

fn three_per_minute(c: &mut smartbot::Config) {
    c.rate_limit = Some(RateLimit {
        max: 3,
        window: Duration::from_secs(60),
    });
}

fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()
        .get(header::RETRY_AFTER)
        .unwrap_or_else(|| panic!("no Retry-After on {}", res.status()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn rest_rate_limit() {
    let app = TestApp::spawn_with(Db::Sqlite, three_per_minute).await;

    // Health checks are exempt and do not use up the allowance.
    for _ in 0..10 {
        let res = app.client.get(app.url("/health")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    for i in 0..3 {
        let (status, body) = app.rest(Method::GET, "/api/templates", None, None).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
    }
    let res = app
        .client
        .get(app.url("/api/templates"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&res);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("rate limit")),
        "{body}"
    );

    // Still limited for other routes, still not for /health.
    let (status, body) = app
        .rest(Method::GET, "/api/templates/welcome", None, None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "RATE_LIMITED");
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn graphql_rate_limit() {
    let app = TestApp::spawn_with(Db::Sqlite, three_per_minute).await;
    for i in 0..3 {
        let (status, body) = app.gql(None, "{ version }", json!({})).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
    }
    let res = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ version }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&res) >= 1);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body}"
    );
    assert!(
        body["errors"][0]["extensions"]["retryAfter"]
            .as_u64()
            .is_some_and(|s| s >= 1),
        "{body}"
    );
    assert!(body["data"].is_null());
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// How many of `n` GraphQL requests were refused with 429.
async fn limited_of(app: &TestApp, n: u32) -> u32 {
    let mut limited = 0;
    for i in 0..n {
        let (status, body) = app.gql(None, "{ version }", json!({})).await;
        match status {
            StatusCode::OK => assert_eq!(body["data"]["version"], env!("CARGO_PKG_VERSION")),
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("request {i}: {other} {body}"),
        }
    }
    limited
}

#[tokio::test]
async fn no_rate_limit_when_off() {
    let default = Config::embedded("unused")
        .rate_limit
        .expect("on by default");
    let n = default.max + 50;
    // Control: with the default allowance on (over a day, so nothing refills meanwhile), n
    // requests do run into it.
    let on = TestApp::spawn_with(Db::Sqlite, |c| {
        c.rate_limit = Some(RateLimit {
            max: default.max,
            window: Duration::from_secs(86_400),
        })
    })
    .await;
    assert_eq!(
        limited_of(&on, n).await,
        50,
        "the default limit is {}",
        default.max
    );
    // Off (the harness default): all n pass.
    let off = TestApp::spawn(Db::Sqlite).await;
    assert_eq!(off.server.state.config.rate_limit, None);
    assert_eq!(limited_of(&off, n).await, 0);
}

#[tokio::test]
async fn body_limit() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.body_limit = 2048).await;
    let big = "x".repeat(4096);

    // REST, with a Content-Length the server can refuse up front.
    let res = app
        .client
        .post(app.url("/api/templates"))
        .bearer_auth(&app.admin)
        .json(&json!({ "name": "big", "type": "text", "body": big }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(res.headers().contains_key("x-request-id"));
    let text = res.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("413 body is not JSON: {text:?}"));
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], "PAYLOAD_TOO_LARGE", "{body}");

    // GraphQL.
    let res = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&app.admin)
        .json(&json!({
            "query": "mutation($b: String!) { createTemplate(input: { name: \"big\", type: TEXT, body: $b }) { id } }",
            "variables": { "b": big }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let text = res.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("413 body is not JSON: {text:?}"));
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE",
        "{body}"
    );

    // Streamed bodies (no Content-Length) are cut off as well.
    for path in ["/api/templates", "/graphql"] {
        let chunks: Vec<Result<String, std::io::Error>> = vec![
            Ok(r#"{"query":"{ version }","name":""#.to_owned()),
            Ok("y".repeat(4096)),
            Ok(r#""}"#.to_owned()),
        ];
        let res = app
            .client
            .post(app.url(path))
            .bearer_auth(&app.admin)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let body: Value = res.json().await.unwrap();
        let code = if path == "/graphql" {
            &body["errors"][0]["extensions"]["code"]
        } else {
            &body["code"]
        };
        assert_eq!(code, "PAYLOAD_TOO_LARGE", "{path}: {body}");
    }

    // Nothing was created, and small bodies still work.
    let data = app
        .gql_ok(Some(&app.admin), "{ templates { totalCount } }", json!({}))
        .await;
    assert_eq!(data["templates"]["totalCount"], 4);
}

#[tokio::test]
async fn malformed_graphql_requests() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.graphql_max_depth = 4).await;

    // Not JSON.
    let res = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(r#"{"query": "{ version }""#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("malformed GraphQL request"),
        "{message}"
    );
    assert_eq!(body["errors"][0]["extensions"]["code"], "VALIDATION");

    // JSON, but not a GraphQL request.
    let res = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({ "nothing": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // A syntax error.
    let (status, body) = app.gql(None, "{ templates { ", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "VALIDATION");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("malformed GraphQL query"),
        "{body}"
    );

    // Valid syntax, unknown field: a normal GraphQL error, not a crash.
    let (status, body) = app.gql(None, "{ nope }", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nope")
    );

    // Depth: templates > edges > node > buttons > id is 5 deep with max 4.
    let (_, body) = app
        .gql(
            None,
            "{ templates { edges { node { buttons { id } } } } }",
            json!({}),
        )
        .await;
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("nested too deep"), "{body}");
    assert!(body.get("data").is_none_or(Value::is_null), "{body}");
    // Four deep is fine.
    let data = app
        .gql_ok(None, "{ templates { edges { node { name } } } }", json!({}))
        .await;
    assert_eq!(data["templates"]["edges"].as_array().unwrap().len(), 4);
}

/// A page's cost is what one item selects times the items it may hold: a small query asking
/// for hundreds of pages under aliases is refused before it runs (it answered 50 MB), while a
/// dashboard's full page still passes.
#[tokio::test]
async fn complexity_counts_every_item_a_page_may_hold() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let aliased: String = (0..500)
        .map(|i| format!("t{i}: templates(first: 100) {{ nodes {{ body }} }} "))
        .collect();
    let (_, body) = app.gql(None, &format!("{{ {aliased} }}"), json!({})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too complex"),
        "{body}"
    );
    assert!(body.get("data").is_none_or(Value::is_null), "{body}");
    // The same through a variable.
    let repeated: String = (0..30)
        .map(|i| format!("p{i}: templates(first: $n) {{ nodes {{ body }} }} "))
        .collect();
    let q = format!("query($n: Int) {{ {repeated} }}");
    let q = q.as_str();
    let (_, body) = app.gql(None, q, json!({ "n": 100 })).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "VALIDATION",
        "{body}"
    );
    let data = app.gql_ok(None, q, json!({ "n": 5 })).await;
    assert!(data["p29"]["nodes"].is_array(), "{data}");
    // One full page of a dashboard's list.
    app.gql_ok(
        Some(&app.admin),
        "{ templates(first: 100) { totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id name type status body header footer buttonText version variables createdAt updatedAt } } } }",
        json!({}),
    )
    .await;
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.rate_limit = Some(RateLimit {
            max: 1,
            window: Duration::from_secs(60),
        })
    })
    .await;
    let mut ids = Vec::new();
    // One request allowed per minute; /health, /ready and the explorer are exempt.
    let requests = [
        (app.client.get(app.url("/health")), 200),
        (app.client.get(app.url("/api/templates")), 200),
        // Rate limited from here on.
        (app.client.get(app.url("/api/templates")), 429),
        (
            app.client
                .post(app.url("/graphql"))
                .json(&json!({ "query": "{ version }" })),
            429,
        ),
        (app.client.get(app.url("/ready")), 200),
        (app.client.get(app.url("/no/such/route")), 429),
        (app.client.get(app.url("/explorer/assets/nope.js")), 404),
    ];
    for (req, expected) in requests {
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), expected, "{}", res.url());
        let id = res
            .headers()
            .get("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id on {} {}", res.status(), res.url()))
            .to_str()
            .unwrap()
            .to_owned();
        assert!(!id.is_empty());
        if expected == 429 {
            assert!(retry_after(&res) >= 1, "{}", res.url());
            let body: Value = res.json().await.unwrap();
            let code = body["code"]
                .as_str()
                .or(body["errors"][0]["extensions"]["code"].as_str());
            assert_eq!(code, Some("RATE_LIMITED"), "{body}");
        }
        ids.push(id);
    }
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "request ids repeat: {ids:?}");

    // A client-supplied id is echoed back.
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-123");
}

/// A browser client on another origin may send its bearer token: the preflight names
/// `Authorization` (a `*` would not cover it, per the Fetch spec).
#[tokio::test]
async fn cors_preflight_allows_the_authorization_header() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for path in ["/graphql", "/api/templates"] {
        let res = app
            .client
            .request(reqwest::Method::OPTIONS, app.url(path))
            .header("origin", "http://localhost:5173")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        let allowed = res
            .headers()
            .get("access-control-allow-headers")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{path}: {allowed:?}");
        assert_eq!(
            res.headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok()),
            Some("*")
        );
    }
}
