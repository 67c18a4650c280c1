//! Who may read and write what: anonymous callers, merchant isolation, admin and service tokens,
//! and rejected tokens (forged, expired, malformed), on both databases.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use smartbot::auth::{Role, token::Claims};

use crate::{
    both_dbs,
    common::{Db, TestApp},
};

const CREATE: &str = r#"mutation($input: CreateTemplateInput!) {
  createTemplate(input: $input) { id name status merchantId createdBy }
}"#;
const UPDATE: &str = r#"mutation($id: ID!) {
  updateTemplate(id: $id, input: { body: "changed" }) { id body version }
}"#;
const DELETE: &str = r#"mutation($id: ID!) { deleteTemplate(id: $id) { id } }"#;
const SET_STATUS: &str = r#"mutation($id: ID!, $status: TemplateStatus!) {
  setTemplateStatus(id: $id, status: $status) { id status }
}"#;
const GET: &str = r#"query($id: ID!) { template(id: $id) { id name status merchantId body } }"#;
const NAMES: &str = r#"{ templates(first: 100) { totalCount edges { node { name status } } } }"#;

fn names(data: &Value) -> Vec<String> {
    data["templates"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Creates a template as `token` and returns its id.
async fn create(app: &TestApp, token: &str, input: Value) -> String {
    let data = app
        .gql_ok(Some(token), CREATE, json!({ "input": input }))
        .await;
    data["createTemplate"]["id"].as_str().unwrap().to_owned()
}

async fn anonymous_cannot_write_or_see_drafts(db: Db) {
    let app = TestApp::spawn(db).await;
    let admin = app.admin.clone();

    let (code, body) = app
        .gql_err(
            None,
            CREATE,
            json!({ "input": { "name": "anon", "type": "TEXT", "body": "hi" } }),
        )
        .await;
    assert_eq!(code, "UNAUTHENTICATED", "{body:#}");
    assert!(body["data"].is_null(), "{body:#}");

    let active = create(
        &app,
        &admin,
        json!({ "name": "public_one", "type": "TEXT", "body": "hello" }),
    )
    .await;
    let draft = create(
        &app,
        &admin,
        json!({ "name": "secret_draft", "type": "TEXT", "body": "soon", "status": "DRAFT" }),
    )
    .await;

    let (code, _) = app.gql_err(None, UPDATE, json!({ "id": active })).await;
    assert_eq!(code, "UNAUTHENTICATED");
    let (code, _) = app.gql_err(None, DELETE, json!({ "id": active })).await;
    assert_eq!(code, "UNAUTHENTICATED");
    let (code, _) = app
        .gql_err(
            None,
            SET_STATUS,
            json!({ "id": active, "status": "ARCHIVED" }),
        )
        .await;
    assert_eq!(code, "UNAUTHENTICATED");

    // Nothing changed.
    let t = app.gql_ok(Some(&admin), GET, json!({ "id": active })).await;
    assert_eq!(t["template"]["body"], "hello");
    assert_eq!(t["template"]["status"], "ACTIVE");

    // Drafts are invisible to anonymous callers, in the list and by id or name.
    let anon = names(&app.gql_ok(None, NAMES, json!({})).await);
    assert!(anon.contains(&"public_one".to_owned()), "{anon:?}");
    assert!(!anon.contains(&"secret_draft".to_owned()), "{anon:?}");
    assert_eq!(anon.len(), 5, "4 seeded + public_one: {anon:?}");
    let all = names(&app.gql_ok(Some(&admin), NAMES, json!({})).await);
    assert!(all.contains(&"secret_draft".to_owned()), "{all:?}");

    let (code, _) = app.gql_err(None, GET, json!({ "id": draft })).await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = app
        .gql_err(
            None,
            r#"{ template(name: "secret_draft") { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let (status, body) = app
        .rest(Method::GET, &format!("/api/templates/{draft}"), None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");

    // Writes over REST are refused too.
    let (status, body) = app
        .rest(
            Method::DELETE,
            &format!("/api/templates/{active}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "UNAUTHENTICATED");
}

async fn merchant_isolation(db: Db) {
    let app = TestApp::spawn(db).await;
    let a = app.merchant("m-a");
    let b = app.merchant("m-b");

    let data = app
        .gql_ok(
            Some(&a),
            CREATE,
            json!({ "input": { "name": "a_draft", "type": "TEXT", "body": "A only", "status": "DRAFT" } }),
        )
        .await;
    let t = &data["createTemplate"];
    assert_eq!(t["merchantId"], "m-a", "{t}");
    assert_eq!(t["status"], "DRAFT");
    assert_eq!(t["createdBy"], "merchant-m-a");
    let id = t["id"].as_str().unwrap().to_owned();

    // A sees its draft; B does not know it exists.
    let seen = app.gql_ok(Some(&a), GET, json!({ "id": id })).await;
    assert_eq!(seen["template"]["merchantId"], "m-a");
    assert!(names(&app.gql_ok(Some(&a), NAMES, json!({})).await).contains(&"a_draft".into()));
    assert!(!names(&app.gql_ok(Some(&b), NAMES, json!({})).await).contains(&"a_draft".into()));
    let (code, _) = app.gql_err(Some(&b), GET, json!({ "id": id })).await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = app.gql_err(Some(&b), UPDATE, json!({ "id": id })).await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = app.gql_err(Some(&b), DELETE, json!({ "id": id })).await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = app
        .gql_err(
            Some(&b),
            SET_STATUS,
            json!({ "id": id, "status": "ACTIVE" }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");

    // A activates it: B may read it but not change it.
    let data = app
        .gql_ok(
            Some(&a),
            SET_STATUS,
            json!({ "id": id, "status": "ACTIVE" }),
        )
        .await;
    assert_eq!(data["setTemplateStatus"]["status"], "ACTIVE");
    let seen = app.gql_ok(Some(&b), GET, json!({ "id": id })).await;
    assert_eq!(seen["template"]["name"], "a_draft");
    assert!(names(&app.gql_ok(Some(&b), NAMES, json!({})).await).contains(&"a_draft".into()));

    let (code, _) = app.gql_err(Some(&b), UPDATE, json!({ "id": id })).await;
    assert_eq!(code, "FORBIDDEN");
    let (code, _) = app.gql_err(Some(&b), DELETE, json!({ "id": id })).await;
    assert_eq!(code, "FORBIDDEN");
    let (code, _) = app
        .gql_err(
            Some(&b),
            SET_STATUS,
            json!({ "id": id, "status": "ARCHIVED" }),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    let (status, body) = app
        .rest(
            Method::PUT,
            &format!("/api/templates/{id}"),
            Some(&b),
            Some(json!({ "body": "hijacked" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "FORBIDDEN");

    // B's attempts changed nothing.
    let seen = app.gql_ok(Some(&a), GET, json!({ "id": id })).await;
    assert_eq!(seen["template"]["body"], "A only");
    assert_eq!(seen["template"]["status"], "ACTIVE");

    // A may still change its own template.
    let data = app.gql_ok(Some(&a), UPDATE, json!({ "id": id })).await;
    assert_eq!(data["updateTemplate"]["body"], "changed");
    assert_eq!(data["updateTemplate"]["version"], 2);

    // A merchant cannot create for another merchant, but may name itself.
    let (code, body) = app
        .gql_err(
            Some(&a),
            CREATE,
            json!({ "input": { "name": "for_b", "type": "TEXT", "body": "x", "merchantId": "m-b" } }),
        )
        .await;
    assert_eq!(code, "FORBIDDEN", "{body:#}");
    let (code, _) = app
        .gql_err(Some(&a), r#"{ template(name: "for_b") { id } }"#, json!({}))
        .await;
    assert_eq!(code, "NOT_FOUND", "the refused create left nothing behind");
    let data = app
        .gql_ok(
            Some(&a),
            CREATE,
            json!({ "input": { "name": "for_a", "type": "TEXT", "body": "x", "merchantId": "m-a" } }),
        )
        .await;
    assert_eq!(data["createTemplate"]["merchantId"], "m-a");

    // A merchant cannot touch platform templates.
    let welcome = app
        .gql_ok(
            Some(&a),
            r#"{ template(name: "welcome") { id merchantId } }"#,
            json!({}),
        )
        .await;
    assert!(welcome["template"]["merchantId"].is_null());
    let (code, _) = app
        .gql_err(Some(&a), DELETE, json!({ "id": welcome["template"]["id"] }))
        .await;
    assert_eq!(code, "FORBIDDEN");

    // A deletes its own.
    let data = app.gql_ok(Some(&a), DELETE, json!({ "id": id })).await;
    assert_eq!(data["deleteTemplate"]["id"], id.as_str());
}

async fn admin_and_service_can_write(db: Db) {
    let app = TestApp::spawn(db).await;
    let service = app.token(Role::Service, None);
    let merchant = app.merchant("m-1");

    // A merchant's draft can be managed by admin and service.
    let id = create(
        &app,
        &merchant,
        json!({ "name": "m_tpl", "type": "TEXT", "body": "b", "status": "DRAFT" }),
    )
    .await;
    let data = app
        .gql_ok(Some(&app.admin), UPDATE, json!({ "id": id }))
        .await;
    assert_eq!(data["updateTemplate"]["version"], 2);
    let data = app
        .gql_ok(
            Some(&service),
            SET_STATUS,
            json!({ "id": id, "status": "ARCHIVED" }),
        )
        .await;
    assert_eq!(data["setTemplateStatus"]["status"], "ARCHIVED");

    // Admin and service create platform or merchant templates.
    let data = app
        .gql_ok(
            Some(&service),
            CREATE,
            json!({ "input": { "name": "svc_tpl", "type": "TEXT", "body": "s", "merchantId": "m-9" } }),
        )
        .await;
    assert_eq!(data["createTemplate"]["merchantId"], "m-9");
    assert_eq!(data["createTemplate"]["createdBy"], "service-x");
    let data = app
        .gql_ok(
            Some(&app.admin),
            CREATE,
            json!({ "input": { "name": "adm_tpl", "type": "TEXT", "body": "a" } }),
        )
        .await;
    assert!(data["createTemplate"]["merchantId"].is_null());
    assert_eq!(data["createTemplate"]["createdBy"], "admin-1");

    let data = app
        .gql_ok(Some(&service), DELETE, json!({ "id": id }))
        .await;
    assert_eq!(data["deleteTemplate"]["id"], id.as_str());
    let (code, _) = app
        .gql_err(Some(&app.admin), GET, json!({ "id": id }))
        .await;
    assert_eq!(code, "NOT_FOUND");
}

async fn audit_logs_are_admin_only(db: Db) {
    let app = TestApp::spawn(db).await;
    const AUDIT: &str = "{ auditLogs { totalCount } }";
    let (code, body) = app
        .gql_err(Some(&app.merchant("m-1")), AUDIT, json!({}))
        .await;
    assert_eq!(code, "FORBIDDEN", "{body:#}");
    let (code, _) = app
        .gql_err(Some(&app.token(Role::Service, None)), AUDIT, json!({}))
        .await;
    assert_eq!(code, "FORBIDDEN");
    let (code, _) = app.gql_err(None, AUDIT, json!({})).await;
    assert_eq!(code, "UNAUTHENTICATED");
    // The seed wrote four audit rows.
    let data = app.gql_ok(Some(&app.admin), AUDIT, json!({})).await;
    assert_eq!(data["auditLogs"]["totalCount"], 4);
}

both_dbs!(
    anonymous_cannot_write_or_see_drafts,
    merchant_isolation,
    admin_and_service_can_write,
    audit_logs_are_admin_only,
);

// ---- rejected tokens ---------------------------------------------------------------------

const TEST_SECRET: &str = "test-secret-test-secret-test-secret";

fn expired_token() -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: "admin-1".into(),
        role: Role::Admin,
        merchant_id: None,
        iat: now - 7200,
        exp: now - 3600,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap()
}

/// POST /graphql with a raw Authorization header.
async fn gql_with_auth(app: &TestApp, authorization: &str, query: &str) -> (StatusCode, Value) {
    let res = app
        .client
        .post(app.url("/graphql"))
        .header("authorization", authorization)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

async fn rest_with_auth(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("authorization", authorization);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    (res.status(), res.json().await.unwrap())
}

async fn assert_rejected(app: &TestApp, authorization: &str, message_contains: &str) {
    let public = "{ templates { totalCount } }";
    let (status, body) = gql_with_auth(app, authorization, public).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "{authorization}: {body:#}"
    );
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{authorization}: {body:#}"
    );
    assert!(body["data"].is_null(), "{body:#}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(message_contains),
        "{authorization}: {message:?} should mention {message_contains:?}"
    );

    let (status, body) = gql_with_auth(
        app,
        authorization,
        r#"mutation { createTemplate(input: { name: "x", type: TEXT, body: "x" }) { id } }"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body:#}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");

    for (method, path, payload) in [
        (Method::GET, "/api/templates", None),
        (Method::GET, "/api/templates/welcome", None),
        (
            Method::POST,
            "/api/templates/preview",
            Some(
                json!({ "templateName": "welcome", "variables": { "customer_name": "A", "store_name": "S" } }),
            ),
        ),
        (
            Method::POST,
            "/api/templates",
            Some(json!({ "name": "x", "type": "text", "body": "x" })),
        ),
    ] {
        let (status, body) =
            rest_with_auth(app, method.clone(), path, authorization, payload).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with {authorization}: {body}"
        );
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["code"], "UNAUTHENTICATED", "{body}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
}

#[tokio::test]
async fn bad_tokens_are_rejected_never_anonymous() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let other = TestApp::spawn_with(Db::Sqlite, |c| {
        c.jwt_secret = Some("a-different-secret-a-different-secret".into());
    })
    .await;
    let forged = other.admin.clone();
    // The forged token is a real token for the other server.
    other
        .gql_ok(Some(&forged), "{ auditLogs { totalCount } }", json!({}))
        .await;

    assert_rejected(&app, &format!("Bearer {forged}"), "signature").await;
    assert_rejected(&app, &format!("Bearer {}", expired_token()), "expired").await;
    assert_rejected(&app, "Bearer abc", "invalid").await;
    assert_rejected(&app, "Basic xyz", "Bearer").await;
    assert_rejected(&app, "Bearer ", "Bearer").await;

    // The same public query succeeds without a token, and with a good one.
    let data = app
        .gql_ok(None, "{ templates { totalCount } }", json!({}))
        .await;
    assert_eq!(data["templates"]["totalCount"], 4);
    let (status, body) = gql_with_auth(
        &app,
        &format!("Bearer {}", app.admin),
        "{ auditLogs { totalCount } }",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["data"]["auditLogs"]["totalCount"], 4);

    // Nothing was created by the rejected writes.
    let (code, _) = app
        .gql_err(
            Some(&app.admin),
            r#"{ template(name: "x") { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
}
