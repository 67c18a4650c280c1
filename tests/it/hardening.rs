//! Defects found by trying the server as an attacker and as a busy user would (issue: hardening).
//! Each test failed on the code before the fix.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    both_dbs,
    common::{Db, TestApp},
};

const CREATE: &str = r#"mutation($input: CreateTemplateInput!) {
  createTemplate(input: $input) { id name status merchantId }
}"#;

const PREVIEW: &str = r#"mutation($t: TemplateInput, $id: ID, $vars: JSON) {
  previewTemplate(template: $t, templateId: $id, variables: $vars) { text violations { field } }
}"#;

async fn create(app: &TestApp, token: &str, input: Value) -> (Option<String>, Value) {
    let (_, body) = app
        .gql(Some(token), CREATE, json!({ "input": input }))
        .await;
    let id = body["data"]["createTemplate"]["id"]
        .as_str()
        .map(str::to_owned);
    (id, body)
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<none>")
}

/// The quadratic-scanner repro (270 KB of `{{!`), twice at once, anonymously: refused by the
/// size cap before any rendering, and the server keeps answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_inline_previews_are_refused_before_rendering() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let body = format!("{}}}}}", "{{!".repeat(90_000));
    let gql = app.gql(
        None,
        PREVIEW,
        json!({ "t": { "type": "TEXT", "body": body } }),
    );
    // REST takes the seed's lowercase type names.
    let rest = app.rest(
        Method::POST,
        "/api/templates/preview",
        None,
        Some(json!({ "template": { "type": "text", "body": body } })),
    );
    let health = async {
        let res = app.client.get(app.url("/health")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    };
    let ((_, g), (rs, r), ()) = tokio::join!(gql, rest, health);
    assert_eq!(code(&g), "VALIDATION", "{g:#}");
    assert_eq!(g["errors"][0]["extensions"]["field"], "template.body");
    assert_eq!(rs, StatusCode::BAD_REQUEST, "{r:#}");
    assert_eq!(r["field"], "template.body", "{r:#}");

    // Any template type: a TEXT template may not smuggle 50 oversized buttons either.
    let buttons: Vec<Value> = (0..50)
        .map(|i| json!({ "id": format!("b{i}"), "title": "t".repeat(500) }))
        .collect();
    let (_, g) = app
        .gql(
            None,
            PREVIEW,
            json!({ "t": { "type": "TEXT", "body": "hi", "buttons": buttons } }),
        )
        .await;
    assert_eq!(code(&g), "VALIDATION", "{g:#}");
}

/// Values are capped before rendering, and so is what rendering produces.
#[tokio::test]
async fn variables_and_rendered_output_are_capped() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let body = "{{a}}".repeat(200); // 1000 characters: a valid stored body
    let (id, created) = create(
        &app,
        &app.admin,
        json!({ "name": "many-vars", "type": "TEXT", "body": body }),
    )
    .await;
    let id = id.unwrap_or_else(|| panic!("{created:#}"));

    // 50 KB in one value: over the variables cap.
    let (_, g) = app
        .gql(
            None,
            PREVIEW,
            json!({ "id": id, "vars": { "a": "x".repeat(50_000) } }),
        )
        .await;
    assert_eq!(code(&g), "VALIDATION", "{g:#}");
    assert_eq!(g["errors"][0]["extensions"]["field"], "variables");
    assert!(
        g["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("bytes of text"),
        "{g:#}"
    );

    // 20 KB fits the variables cap, but 200 copies of it would be 4 MB of output.
    let (_, g) = app
        .gql(
            None,
            PREVIEW,
            json!({ "id": id, "vars": { "a": "x".repeat(20_000) } }),
        )
        .await;
    assert_eq!(code(&g), "VALIDATION", "{g:#}");
    assert!(
        g["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("rendered message is larger"),
        "{g:#}"
    );

    // Small values still render.
    let (_, g) = app
        .gql(None, PREVIEW, json!({ "id": id, "vars": { "a": "y" } }))
        .await;
    assert_eq!(
        g["data"]["previewTemplate"]["text"],
        "y".repeat(200),
        "{g:#}"
    );
}

/// Names are unique per merchant; platform templates have a namespace of their own; a CONFLICT
/// never reveals another merchant's template.
async fn template_names_are_per_merchant(db: Db) {
    let app = TestApp::spawn(db).await;
    let (a, b) = (app.merchant("m-a"), app.merchant("m-b"));
    let draft =
        |name: &str| json!({ "name": name, "type": "TEXT", "body": "x", "status": "DRAFT" });
    let (id_a, body) = create(&app, &a, draft("promo")).await;
    assert!(id_a.is_some(), "{body:#}");
    let (id_b, body) = create(&app, &b, draft("promo")).await;
    assert!(id_b.is_some(), "B may use a name A uses: {body:#}");
    let (_, body) = create(&app, &a, draft("promo")).await;
    assert_eq!(code(&body), "CONFLICT", "{body:#}");
    let (platform, body) = create(&app, &app.admin, draft("promo")).await;
    assert!(platform.is_some(), "{body:#}");
    let (_, body) = create(&app, &app.admin, draft("promo")).await;
    assert_eq!(code(&body), "CONFLICT", "{body:#}");

    // By name, each caller gets its own namespace.
    let q = r#"query { template(name: "promo") { id merchantId } }"#;
    let mine = app.gql_ok(Some(&b), q, json!({})).await;
    assert_eq!(mine["template"]["id"].as_str(), id_b.as_deref());
    let admin = app.gql_ok(Some(&app.admin), q, json!({})).await;
    assert_eq!(admin["template"]["id"].as_str(), platform.as_deref());

    // Renaming into a taken name in one's own namespace is a CONFLICT; into another's is fine.
    let (other, _) = create(&app, &b, draft("other")).await;
    let rename = r#"mutation($id: ID!, $n: String!) { updateTemplate(id: $id, input: { name: $n }) { name } }"#;
    let (_, body) = app
        .gql(Some(&b), rename, json!({ "id": other, "n": "promo" }))
        .await;
    assert_eq!(code(&body), "CONFLICT", "{body:#}");
}

/// Version history is for those who may write the template.
async fn template_history_is_for_writers_only(db: Db) {
    let app = TestApp::spawn(db).await;
    let owner = app.merchant("m-owner");
    let (id, body) = create(
        &app,
        &owner,
        json!({ "name": "hist", "type": "TEXT", "body": "v1" }),
    )
    .await;
    let id = id.unwrap_or_else(|| panic!("{body:#}"));
    app.gql_ok(
        Some(&owner),
        r#"mutation($id: ID!) { updateTemplate(id: $id, input: { body: "v2 secret wording" }) { version } }"#,
        json!({ "id": id }),
    )
    .await;
    let q = r#"query($id: ID!) { templateVersions(templateId: $id) { version } }"#;
    let (_, anon) = app.gql(None, q, json!({ "id": id })).await;
    assert_eq!(code(&anon), "UNAUTHENTICATED", "{anon:#}");
    let (_, other) = app
        .gql(Some(&app.merchant("m-other")), q, json!({ "id": id }))
        .await;
    assert_eq!(code(&other), "FORBIDDEN", "{other:#}");
    let mine = app.gql_ok(Some(&owner), q, json!({ "id": id })).await;
    assert_eq!(mine["templateVersions"], json!([{ "version": 1 }]));
}

/// Oversized fields are VALIDATION for every template type, on both databases (PostgreSQL
/// answered 500 for a TEXT template's 300-character buttonText).
async fn oversized_fields_are_refused_for_every_type(db: Db) {
    let app = TestApp::spawn(db).await;
    let cases = [
        (
            json!({ "type": "TEXT", "buttonText": "b".repeat(300) }),
            "buttonText",
        ),
        (
            json!({ "type": "MEDIA", "media": { "link": "https://x.example/a.jpg" },
                    "buttons": [{ "id": "a", "title": "t".repeat(30) }] }),
            "buttons[0].title",
        ),
        (
            json!({ "type": "TEXT", "sections": [{ "title": "s".repeat(40), "rows": [{ "id": "r", "title": "t" }] }] }),
            "sections[0].title",
        ),
        (
            json!({ "type": "TEXT", "header": "h".repeat(300) }),
            "header",
        ),
    ];
    for (i, (extra, field)) in cases.into_iter().enumerate() {
        let mut input = json!({ "name": format!("big-{i}"), "body": "hello" });
        input
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (id, body) = create(&app, &app.admin, input).await;
        assert!(id.is_none(), "case {i} was stored: {body:#}");
        assert_eq!(code(&body), "VALIDATION", "case {i}: {body:#}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body:#}");
    }
    // A merchant id longer than the column is VALIDATION too, not a database error.
    let (_, body) = create(
        &app,
        &app.admin,
        json!({ "name": "long-merchant", "type": "TEXT", "body": "x", "merchantId": "m".repeat(100) }),
    )
    .await;
    assert_eq!(code(&body), "VALIDATION", "{body:#}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "merchantId");
}

/// 64 writers at once on templates, media and the queue: no INTERNAL (SQLite answered "database is
/// locked" to a third of them).
async fn concurrent_writers_never_fail(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.run_workers = false).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (client, url, token) = (app.client.clone(), app.url("/graphql"), app.admin.clone());
        let merchant = app.merchant(&format!("m-{}", i % 4));
        tasks.spawn(async move {
            let post = |token: String, query: &str, variables: Value| {
                client
                    .post(&url)
                    .bearer_auth(token)
                    .json(&json!({ "query": query, "variables": variables }))
                    .send()
            };
            let mut bodies = vec![];
            let res = post(
                merchant.clone(),
                CREATE,
                json!({ "input": { "name": format!("t-{i}"), "type": "TEXT", "body": "hi" } }),
            )
            .await
            .unwrap();
            let created: Value = res.json().await.unwrap();
            if let Some(id) = created["data"]["createTemplate"]["id"].as_str() {
                let res = post(
                    merchant,
                    r#"mutation($id: ID!) { updateTemplate(id: $id, input: { body: "v2" }) { version } }"#,
                    json!({ "id": id }),
                )
                .await
                .unwrap();
                bodies.push(res.json::<Value>().await.unwrap());
            }
            bodies.push(created);
            // A media upload (its own bytes) in the mix.
            let png = crate::common::tiny_png(i as u8);
            let res = post(
                token.clone(),
                crate::common::docs::UPLOAD_MEDIA_BASE64,
                json!({ "i": { "fileData": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png),
                               "fileName": format!("p{i}.png"), "merchantId": format!("m-{}", i % 4) } }),
            )
            .await
            .unwrap();
            bodies.push(res.json::<Value>().await.unwrap());
            let res = post(
                token,
                r#"mutation($n: String!) { enqueueJob(queue: ORDER_PROCESSING, name: $n, data: {}) { id } }"#,
                json!({ "n": format!("job-{i}") }),
            )
            .await
            .unwrap();
            bodies.push(res.json::<Value>().await.unwrap());
            bodies
        });
    }
    let mut answered = 0;
    while let Some(bodies) = tasks.join_next().await {
        for body in bodies.unwrap() {
            assert!(body.get("errors").is_none(), "{body:#}");
            answered += 1;
        }
    }
    assert_eq!(answered, 64 * 4);

    // Racing for one name: exactly one wins, the rest are CONFLICT, none INTERNAL.
    let merchant = app.merchant("m-race");
    let racers = (0..16).map(|_| {
        create(
            &app,
            &merchant,
            json!({ "name": "contested", "type": "TEXT", "body": "x" }),
        )
    });
    let results = futures::future::join_all(racers).await;
    let won = results.iter().filter(|(id, _)| id.is_some()).count();
    assert_eq!(won, 1, "{results:#?}");
    for (id, body) in &results {
        if id.is_none() {
            assert_eq!(code(body), "CONFLICT", "{body:#}");
        }
    }
}

/// A client's x-request-id is kept only when short and plain; otherwise a fresh one is made
/// (a 100-character id made every write fail on PostgreSQL).
async fn request_ids_are_sanitised(db: Db) {
    let app = TestApp::spawn(db).await;
    for (sent, kept) in [
        ("abc-123_X.y", true),
        (&*"r".repeat(100), false),
        ("bad id with spaces", false),
        ("", false),
    ] {
        let res = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(&app.admin)
            .header("x-request-id", sent)
            .json(&json!({ "query": CREATE, "variables": { "input": {
                "name": format!("rid-{}", sent.len()), "type": "TEXT", "body": "x" } } }))
            .send()
            .await
            .unwrap();
        let echoed = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: Value = res.json().await.unwrap();
        assert!(body.get("errors").is_none(), "{sent:?}: {body:#}");
        assert_eq!(echoed == sent, kept, "{sent:?} -> {echoed:?}");
        assert!(!echoed.is_empty() && echoed.len() <= 64);
    }
}

both_dbs!(
    template_names_are_per_merchant,
    template_history_is_for_writers_only,
    oversized_fields_are_refused_for_every_type,
    concurrent_writers_never_fail,
    request_ids_are_sanitised,
);

/// Behind a proxy the client is the rightmost hop the trusted proxy vouched for: a forged
/// leftmost `X-Forwarded-For` neither escapes the rate limit nor lands in audit rows.
#[tokio::test]
async fn forwarded_for_cannot_be_forged() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.trust_proxy = true;
        c.rate_limit = Some("5/15m".parse().unwrap());
    })
    .await;
    let mut statuses = vec![];
    for i in 0..10 {
        let res = app
            .client
            .get(app.url("/api/templates"))
            .header("x-forwarded-for", format!("10.9.{i}.1, 198.51.100.7"))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
    // A different real client (rightmost hop) has its own allowance...
    let res = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&app.admin)
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.5")
        .json(&json!({ "query": CREATE, "variables": { "input": { "name": "via-proxy", "type": "TEXT", "body": "x" } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // ...and is what the audit row records.
    let data = app
        .gql_ok(
            Some(&app.admin),
            r#"{ auditLogs(first: 5) { nodes { action ip } } }"#,
            json!({}),
        )
        .await;
    let row = data["auditLogs"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["action"] == "template.create")
        .cloned()
        .expect("an audit row");
    assert_eq!(row["ip"], "203.0.113.5", "{row}");
}

/// With configured proxies, every trusted hop is skipped; an untrusted peer's header is ignored.
#[test]
fn forwarded_client_walks_from_the_right() {
    use smartbot::http::forwarded_client;
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let nets: Vec<ipnet::IpNet> = vec![
        "10.0.0.0/8".parse().unwrap(),
        "127.0.0.1/32".parse().unwrap(),
    ];
    let peer = ip("127.0.0.1");
    let hops = ["1.1.1.1", "203.0.113.9", "10.1.1.1", "10.2.2.2"];
    assert_eq!(
        forwarded_client(peer, hops.into_iter(), &nets),
        ip("203.0.113.9")
    );
    // The peer is not a configured proxy: the header is the client's own words.
    assert_eq!(
        forwarded_client(ip("192.0.2.1"), hops.into_iter(), &nets),
        ip("192.0.2.1")
    );
    // No list: the peer is the one trusted proxy.
    assert_eq!(
        forwarded_client(peer, hops.into_iter(), &[]),
        ip("10.2.2.2")
    );
    // Garbage stops the walk at the last vouched-for address.
    assert_eq!(
        forwarded_client(peer, ["1.1.1.1", "junk", "10.1.1.1"].into_iter(), &nets),
        ip("10.1.1.1")
    );
}

/// `/uploads` serves public files and is not an API call: it does not spend the allowance.
#[tokio::test]
async fn uploads_do_not_count_against_the_rate_limit() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.rate_limit = Some("3/15m".parse().unwrap());
    })
    .await;
    for _ in 0..10 {
        let res = app
            .client
            .get(app.url("/uploads/ab/nothing.jpg"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }
    for _ in 0..3 {
        let res = app
            .client
            .get(app.url("/api/templates"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}

/// The admin token is printed only when the secret was just generated, not at every start.
#[tokio::test]
async fn admin_token_only_on_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = || crate::common::config_in(dir.path());
    let first = smartbot::spawn(config()).await.unwrap();
    assert!(first.admin_token.is_some());
    first.stop().await.unwrap();
    let second = smartbot::spawn(config()).await.unwrap();
    assert!(second.admin_token.is_none(), "printed again on restart");
    second.stop().await.unwrap();
}

/// Every refusal comes in the house's error shape, including the ones the router and the
/// extractors raise themselves: a method a route does not take, a path or query string that does
/// not decode, and the errors async-graphql raises before any resolver runs.
#[tokio::test]
async fn refusals_outside_the_handlers_keep_the_error_shape() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let admin = Some(app.admin.as_str());
    for (method, path, status, code) in [
        (
            Method::DELETE,
            "/api/templates",
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::GET,
            "/api/events",
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::PATCH,
            "/health",
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (
            Method::GET,
            "/api/templates/%ff%fe",
            StatusCode::BAD_REQUEST,
            "VALIDATION",
        ),
        (
            Method::GET,
            "/api/media/%ff",
            StatusCode::BAD_REQUEST,
            "VALIDATION",
        ),
        (
            Method::GET,
            "/api/templates?type=bogus",
            StatusCode::BAD_REQUEST,
            "VALIDATION",
        ),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{method} {path}");
        let body: Value = res
            .json()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        assert_eq!(body["success"], false, "{method} {path}: {body}");
        assert_eq!(body["code"], code, "{method} {path}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    for (query, field) in [
        ("{ templates { nope } }", "query"),
        ("query A { __typename } query B { __typename }", "query"),
        ("{ templates(type: BOGUS) { totalCount } }", "query"),
        ("{ templates(first: \"x\") { totalCount } }", "query"),
    ] {
        let (_, body) = app.gql(admin, query, json!({})).await;
        let err = &body["errors"][0];
        assert_eq!(err["extensions"]["code"], "VALIDATION", "{query}: {body}");
        assert_eq!(err["extensions"]["field"], field, "{query}: {body}");
    }
    // A variable that does not coerce, and the service's own codes are left as they are.
    let (_, body) = app
        .gql(
            admin,
            "query($n: Int) { templates(first: $n) { totalCount } }",
            json!({ "n": "many" }),
        )
        .await;
    assert_eq!(code(&body), "VALIDATION", "{body}");
    let (_, body) = app
        .gql(None, "{ auditLogs { totalCount } }", json!({}))
        .await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
}

/// A document that nests deeper than the parser can recurse (a few kilobytes of `[[[[`) is
/// refused before anything parses it, over HTTP and over a WebSocket: it used to overflow a
/// worker thread's stack and abort the whole server, anonymously, with one request.
#[tokio::test]
async fn deeply_nested_documents_are_refused_before_parsing() {
    use crate::ws::{connect, recv, send};
    let app = TestApp::spawn(Db::Sqlite).await;
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    for query in [
        format!("{{ __typename(x: {}) }}", deep(5000)),
        format!("{{ templates(search: {}) {{ totalCount }} }}", deep(3000)),
        format!("{}{}", "{ a ".repeat(3000), "}".repeat(3000)),
    ] {
        let (status, body) = app.gql(None, &query, json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(code(&body), "VALIDATION", "{body}");
    }
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = connect(&app, "/graphql/ws", protocol).await;
        send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
        assert_eq!(recv(&mut ws).await["type"], "connection_ack");
        let kind = if protocol == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        let query = format!("subscription {{ heartbeat(x: {}) }}", deep(5000));
        send(
            &mut ws,
            json!({ "type": kind, "id": "1", "payload": { "query": query } }),
        )
        .await;
        let v = recv(&mut ws).await;
        assert_eq!(v["type"], "error", "{protocol}: {v}");
        let err = if v["payload"].is_array() {
            &v["payload"][0]
        } else {
            &v["payload"]
        };
        assert_eq!(err["extensions"]["code"], "VALIDATION", "{v}");
    }
    // The server is still there.
    let (status, _) = app.gql(None, "{ __typename }", json!({})).await;
    assert_eq!(status, StatusCode::OK);
}

/// A deadlock between two transactions on PostgreSQL (40P01) is a CONFLICT the caller may send
/// again, not an INTERNAL error: the database rolled the loser back and nothing was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_is_a_conflict() {
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    let pg = crate::common::PgDatabase::create().await;
    let db = Database::connect(pg.url.as_str()).await.unwrap();
    db.execute_unprepared(
        "CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 0), (2, 0)",
    )
    .await
    .unwrap();
    let (a, b) = (db.begin().await.unwrap(), db.begin().await.unwrap());
    a.execute_unprepared("UPDATE t SET n = 1 WHERE id = 1")
        .await
        .unwrap();
    b.execute_unprepared("UPDATE t SET n = 1 WHERE id = 2")
        .await
        .unwrap();
    // Each now wants the other's row: PostgreSQL rolls one back after deadlock_timeout.
    let (ra, rb) = tokio::join!(
        a.execute_unprepared("UPDATE t SET n = 2 WHERE id = 2"),
        b.execute_unprepared("UPDATE t SET n = 2 WHERE id = 1"),
    );
    let lost = match (ra, rb) {
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
        other => panic!("expected exactly one deadlock victim: {other:?}"),
    };
    let err = smartbot::error::Error::from(lost);
    assert_eq!(err.code(), "CONFLICT", "{err:?}");
    assert_eq!(err.status(), StatusCode::CONFLICT);
}

/// A Redis of its own on a free loopback port, stopped when dropped.
struct OwnRedis {
    child: std::process::Child,
    url: String,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test (apt-get install redis-server)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With Redis gone, requests that need it fail with a typed error (UNAVAILABLE, 503: send it
/// again) instead of waiting for Redis to return, and the shared rate limit lets requests
/// through, as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_fails_fast_and_typed() {
    use std::time::Duration;
    // Fails, never hangs, when a request waits for Redis to come back (the commands' own
    // timeouts are 1 s for the rate limit and 5 s for the queue).
    async fn answered<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("no answer within 30 s: the request waits for Redis")
    }
    let mut redis = OwnRedis::start();
    let url = redis.url.clone();
    let app = TestApp::spawn_with(Db::Sqlite, move |c| {
        c.redis_url = Some(url);
        c.rate_limit = Some("50/15m".parse().unwrap());
    })
    .await;
    assert_eq!(app.rest(Method::GET, "/ready", None, None).await.0, 200);
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    // Rate-limited and Redis-free: let through.
    let (status, body) = answered(app.rest(Method::GET, "/api/templates", None, None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Readiness names Redis as unavailable.
    let (status, body) = answered(app.rest(Method::GET, "/ready", None, None)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["redis"], "unavailable", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    // An enqueue is UNAVAILABLE, over GraphQL and over REST.
    let (_, body) = answered(app.gql(
        Some(&app.admin),
        r#"mutation { enqueueJob(queue: MEDIA_PROCESSING, name: "x", data: {}) { id } }"#,
        json!({}),
    ))
    .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAVAILABLE",
        "{body}"
    );
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("job queue"), "{message}");
    assert!(!message.contains("Error"), "no driver detail: {message}");
    // An upload, whose processing cannot be queued, is undone and refused: no row that would
    // never get its sizes (and would answer a retry as a duplicate), no files.
    let png = crate::media::png_bytes(40, 30);
    let (status, body) = answered(app.rest(
        Method::POST,
        "/api/media/upload",
        Some(&app.admin),
        Some(json!({ "fileData": crate::media::b64(&png), "fileName": "a.png" })),
    ))
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    assert_eq!(crate::media::media_rows(&app).await, 0);
    assert_eq!(crate::media::uploads(&app), 0, "files of the undone upload");
}

/// A kilobyte of fragments that each spread the one before twice selects 2^30 fields: refused
/// as VALIDATION right after parsing, for anyone, instead of walked field by field (it held both
/// cores and gigabytes). An introspection query with nested fragments, as GraphiQL sends, passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_that_multiply_are_refused_before_validation() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut q = "query { ...F30 } fragment F0 on QueryRoot { __typename }".to_owned();
    for i in 1..=30 {
        q += &format!(
            " fragment F{i} on QueryRoot {{ ...F{j} ...F{j} }}",
            j = i - 1
        );
    }
    let (code, body) = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        app.gql_err(None, &q, json!({})),
    )
    .await
    .expect("answered, not walked");
    assert_eq!(code, "VALIDATION", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "query", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("fragments are expanded"),
        "{body}"
    );
    let introspection = r#"query {
      __schema { types { ...FullType } directives { name args { ...InputValue } } }
    }
    fragment FullType on __Type {
      kind name fields(includeDeprecated: true) { name args { ...InputValue } type { ...TypeRef } }
      inputFields { ...InputValue } interfaces { ...TypeRef } possibleTypes { ...TypeRef }
      enumValues(includeDeprecated: true) { name }
    }
    fragment InputValue on __InputValue { name type { ...TypeRef } defaultValue }
    fragment TypeRef on __Type {
      kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } }
    }"#;
    let (status, body) = app.gql(None, introspection, json!({})).await;
    assert!(body["errors"].is_null(), "{status}: {body}");
    assert!(body["data"]["__schema"]["types"].as_array().unwrap().len() > 50);
}

/// A connection that sends half a request line, or nothing, or headers and then not its body,
/// is closed after `HTTP_READ_TIMEOUT`; it stayed open for good, and twenty thousand of them took
/// every file descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_closed() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.http_read_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = app.server.addr;
    // What the server sends before it closes (nothing, or an error response), within 30 s.
    async fn until_closed(mut s: tokio::net::TcpStream) -> String {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
            .await
            .expect("the server kept the connection open")
            .ok();
        String::from_utf8_lossy(&got).into_owned()
    }
    for sent in [
        &b""[..],
        b"GET /heal",
        b"GET /health HTTP/1.1\r\nHost: x\r\n",
        // HTTP/2's preface, and then nothing: not served, closed.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        until_closed(s).await;
    }
    // An idle keep-alive connection: served once, then closed when no next request comes.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(until_closed(s).await.starts_with("HTTP/1.1 200"));
    // A body that stops: the request is refused and the connection closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /api/templates HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"name\":",
    )
    .await
    .unwrap();
    let answer = until_closed(s).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The server still answers.
    assert_eq!(app.rest(Method::GET, "/health", None, None).await.0, 200);
}

/// At `HTTP_MAX_CONNECTIONS` the server stops accepting: a further client waits until a
/// connection closes, and is then served. The descriptors the database and files need stay free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_free_one() {
    use std::time::Duration;
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.http_max_connections = Some(2);
    })
    .await;
    let addr = app.server.addr;
    let idle: Vec<_> =
        futures::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let client = reqwest::Client::new();
    let url = app.url("/health");
    let waiting = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past the cap");
    drop(idle);
    let status = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("served once a connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

/// A query's root fields come back in the order it selects them (async-graphql wrote each as it
/// finished), and a failed non-null root field nulls `data`, as the spec asks (it was left out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_fields_keep_their_order_and_non_null_failures_propagate() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let query = "{ templates(first: 1) { totalCount } version \
                 orders(first: 1) { totalCount } recentEvents(first: 1) { totalCount } \
                 auditLogs(first: 1) { totalCount } v2: version }";
    for _ in 0..8 {
        let text = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(&app.admin)
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let at: Vec<usize> = [
            "\"templates\"",
            "\"version\"",
            "\"orders\"",
            "\"recentEvents\"",
            "\"auditLogs\"",
            "\"v2\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap_or_else(|| panic!("{k} in {text}")))
        .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
    let (_, body) = app
        .gql(
            Some(&app.admin),
            r#"{ version template(id: "00000000-0000-7000-8000-000000000000") { name } }"#,
            json!({}),
        )
        .await;
    assert!(body["data"].is_null(), "{body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{body}"
    );
    // A mutation stops at its first failed non-null field: the fields after it do not run.
    let mutation = r#"mutation {
      a: createTemplate(input: { name: "serial_a", type: TEXT, body: "a" }) { id }
      b: createTemplate(input: { name: "serial_b", type: TEXT, body: "" }) { id }
      c: createTemplate(input: { name: "serial_c", type: TEXT, body: "c" }) { id }
    }"#;
    let (_, body) = app.gql(Some(&app.admin), mutation, json!({})).await;
    assert!(body["data"].is_null(), "{body}");
    assert_eq!(body["errors"][0]["path"], json!(["b"]), "{body}");
    assert_eq!(body["errors"][1]["extensions"]["code"], "NOT_RUN", "{body}");
    for (name, exists) in [("serial_a", true), ("serial_c", false)] {
        let (_, got) = app
            .gql(
                Some(&app.admin),
                "query($n: String) { templates(search: $n) { totalCount } }",
                json!({ "n": name }),
            )
            .await;
        assert_eq!(
            got["data"]["templates"]["totalCount"],
            u64::from(exists),
            "{name}: {got}"
        );
    }
    // A subscription answers one root field per response: a second one is refused.
    for doc in [
        "subscription { a: heartbeat b: heartbeat }",
        "subscription { events { id } heartbeat }",
        "subscription { ...Both } fragment Both on SubscriptionRoot { heartbeat events { id } }",
    ] {
        let (code, body) = app.gql_err(Some(&app.admin), doc, json!({})).await;
        assert_eq!(code, "VALIDATION", "{doc}: {body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("exactly one root field"),
            "{body}"
        );
    }
}

/// Every build started together succeeds, and the defaults are seeded once.
async fn all_start_and_seed_once(
    builds: impl Iterator<Item = impl Future<Output = smartbot::error::Result<smartbot::App>>>,
) {
    let apps = futures::future::join_all(builds).await;
    for app in &apps {
        assert!(app.is_ok(), "{:?}", app.as_ref().err());
    }
    use sea_orm::{EntityTrait, PaginatorTrait};
    let db = &apps[0].as_ref().unwrap().state.db;
    let n = entity::message_template::Entity::find()
        .count(db)
        .await
        .unwrap();
    assert_eq!(n, 4, "the defaults, once");
}

/// Instances started together on one fresh PostgreSQL database take turns to migrate and seed:
/// all start, and the defaults are seeded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_all_start() {
    let pg = crate::common::PgDatabase::create().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let builds = dirs.iter().map(|d| {
        let mut c = smartbot::Config::embedded(d.path());
        c.database_url = pg.url.clone();
        c.jwt_secret = Some("test-secret-test-secret-test-secret".into());
        smartbot::build(c)
    });
    all_start_and_seed_once(builds).await;
}

/// The same on SQLite: instances started together on one DATA_DIR take turns (a lock file beside
/// the database); one of two failed with "index … already exists".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_on_one_sqlite_file_all_start() {
    let dir = tempfile::tempdir().unwrap();
    let builds = (0..3).map(|_| {
        let mut c = smartbot::Config::embedded(dir.path());
        c.jwt_secret = Some("test-secret-test-secret-test-secret".into());
        smartbot::build(c)
    });
    all_start_and_seed_once(builds).await;
}

/// With the database not answering, template reads (served through the read cache, which
/// first reads the templates' generation) are UNAVAILABLE (503: send it again), as every other
/// read is, not INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_reads_without_the_database_are_unavailable() {
    use sea_orm::ConnectionTrait;
    let app = TestApp::spawn(Db::Postgres).await;
    let list = || app.rest(reqwest::Method::GET, "/api/templates", None, None);
    assert_eq!(
        list().await.0,
        StatusCode::OK,
        "the reads work, and are cached"
    );
    let url = app.server.state.config.database_url.clone();
    let name = url
        .rsplit('/')
        .next()
        .and_then(|n| n.split('?').next())
        .unwrap()
        .to_owned();
    let admin = sea_orm::Database::connect(crate::common::postgres_base_url())
        .await
        .unwrap();
    let set = |allow: bool| format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {allow}");
    admin.execute_unprepared(&set(false)).await.unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap();
    let (status, body) = list().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    let (_, body) = app
        .gql(None, "{ templates(first: 1) { totalCount } }", json!({}))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAVAILABLE",
        "{body}"
    );
    admin.execute_unprepared(&set(true)).await.unwrap();
}
