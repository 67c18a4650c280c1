//! Who may read and write what: anonymous callers, merchant isolation (both ways, templates and
//! media), admin and service tokens, and rejected tokens (forged, expired, malformed), on both
//! databases.
//!
//! Tests marked DEPENDS-ON-MAIN expect behaviour the lead is landing on main: template names
//! unique per merchant (platform templates in their own namespace), `templateVersions` only for
//! callers who may write the template, `mediaList` closed to anonymous callers and scoped to the
//! calling merchant.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use smartbot::auth::{Role, token::Claims};

use crate::{
    both_dbs,
    common::{Caller, Db, TestApp, docs, tiny_png},
};

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

async fn anonymous_cannot_write_or_see_drafts(db: Db) {
    let app = TestApp::spawn(db).await;
    let (anon, admin) = (app.anonymous(), app.as_admin());

    let input = json!({ "input": { "name": "anon", "type": "TEXT", "body": "hi" } });
    let (code, body) = anon.gql_err(docs::CREATE_TEMPLATE, input).await;
    assert_eq!(code, "UNAUTHENTICATED", "{body:#}");
    assert!(body["data"].is_null(), "{body:#}");

    let active = admin.text_template("public_one", "ACTIVE").await;
    let draft = admin.text_template("secret_draft", "DRAFT").await;
    for (doc, vars) in [
        (
            docs::UPDATE_TEMPLATE_BODY,
            json!({ "id": active, "body": "x" }),
        ),
        (docs::DELETE_TEMPLATE, json!({ "id": active })),
        (
            docs::SET_TEMPLATE_STATUS,
            json!({ "id": active, "status": "ARCHIVED" }),
        ),
    ] {
        assert_eq!(anon.gql_code(doc, vars).await, "UNAUTHENTICATED", "{doc}");
    }
    let (status, body) = anon
        .rest(Method::DELETE, &format!("/api/templates/{active}"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "UNAUTHENTICATED");

    // Nothing changed.
    let t = admin.template(&active).await.unwrap();
    assert_eq!(
        (&t["body"], &t["status"]),
        (&json!("public_one body"), &json!("ACTIVE"))
    );

    // Drafts are invisible to anonymous callers, in the list and by id or name.
    let names = anon.template_names().await;
    assert!(names.contains(&"public_one".to_owned()), "{names:?}");
    assert!(!names.contains(&"secret_draft".to_owned()), "{names:?}");
    assert_eq!(names.len(), 5, "4 seeded + public_one: {names:?}");
    assert!(
        admin
            .template_names()
            .await
            .contains(&"secret_draft".to_owned())
    );
    assert_eq!(anon.template(&draft).await.unwrap_err(), "NOT_FOUND");
    let by_name = json!({ "name": "secret_draft" });
    assert_eq!(
        anon.gql_code(docs::TEMPLATE_BY_NAME, by_name).await,
        "NOT_FOUND"
    );
    let (status, body) = anon
        .rest(Method::GET, &format!("/api/templates/{draft}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");
}

/// `other` can neither see nor change `owner`'s DRAFT `id`, over GraphQL and REST.
async fn assert_draft_hidden(owner: &Caller<'_>, other: &Caller<'_>, id: &str, name: &str) {
    let before = owner.template(id).await.expect("owner reads its draft");
    assert_eq!(before["status"], "DRAFT");
    assert!(owner.template_names().await.contains(&name.to_owned()));
    assert!(
        !other.template_names().await.contains(&name.to_owned()),
        "{name} listed"
    );
    assert_eq!(other.template(id).await.unwrap_err(), "NOT_FOUND", "{name}");
    for (doc, vars) in [
        (
            docs::UPDATE_TEMPLATE_BODY,
            json!({ "id": id, "body": "hijacked" }),
        ),
        (docs::DELETE_TEMPLATE, json!({ "id": id })),
        (
            docs::SET_TEMPLATE_STATUS,
            json!({ "id": id, "status": "ACTIVE" }),
        ),
    ] {
        assert_eq!(
            other.gql_code(doc, vars).await,
            "NOT_FOUND",
            "{name}: {doc}"
        );
    }
    let path = format!("/api/templates/{id}");
    for (method, body) in [
        (Method::GET, None),
        (
            Method::PUT,
            Some(json!({ "body": "hijacked", "status": "active" })),
        ),
        (Method::DELETE, None),
    ] {
        let (status, res) = other.rest(method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {name}: {res}");
        assert_eq!(res["code"], "NOT_FOUND", "{method} {name}: {res}");
    }
    assert_eq!(owner.template(id).await.unwrap(), before, "{name} changed");
}

/// `other` reads `owner`'s ACTIVE `id` but every write is FORBIDDEN and changes nothing.
async fn assert_active_read_only(owner: &Caller<'_>, other: &Caller<'_>, id: &str, name: &str) {
    let before = owner.template(id).await.unwrap();
    assert_eq!(before["status"], "ACTIVE");
    assert_eq!(other.template(id).await.unwrap(), before, "{name}");
    assert!(
        other.template_names().await.contains(&name.to_owned()),
        "{name}"
    );
    for (doc, vars) in [
        (
            docs::UPDATE_TEMPLATE_BODY,
            json!({ "id": id, "body": "hijacked" }),
        ),
        (docs::DELETE_TEMPLATE, json!({ "id": id })),
        (
            docs::SET_TEMPLATE_STATUS,
            json!({ "id": id, "status": "ARCHIVED" }),
        ),
    ] {
        assert_eq!(
            other.gql_code(doc, vars).await,
            "FORBIDDEN",
            "{name}: {doc}"
        );
    }
    let path = format!("/api/templates/{id}");
    for (method, body) in [
        (Method::PUT, Some(json!({ "body": "hijacked" }))),
        (Method::PUT, Some(json!({ "status": "archived" }))),
        (Method::DELETE, None),
    ] {
        let (status, res) = other.rest(method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {name}: {res}");
        assert_eq!(
            (&res["success"], &res["code"]),
            (&json!(false), &json!("FORBIDDEN"))
        );
    }
    assert_eq!(owner.template(id).await.unwrap(), before, "{name} changed");
}

async fn merchant_isolation(db: Db) {
    let app = TestApp::spawn(db).await;
    let (a, b) = (app.as_merchant("m-a"), app.as_merchant("m-b"));

    // Both merchants own a draft; a merchant's template is always its own.
    let ta = a
        .create_template(
            json!({ "name": "a_draft", "type": "TEXT", "body": "A only", "status": "DRAFT" }),
        )
        .await;
    assert_eq!(
        (&ta["merchantId"], &ta["createdBy"]),
        (&json!("m-a"), &json!("merchant-m-a"))
    );
    let tb = b
        .create_template(
            json!({ "name": "b_draft", "type": "TEXT", "body": "B only", "status": "DRAFT" }),
        )
        .await;
    assert_eq!(
        (&tb["merchantId"], &tb["createdBy"]),
        (&json!("m-b"), &json!("merchant-m-b"))
    );
    let (ida, idb) = (id_of(&ta), id_of(&tb));

    assert_draft_hidden(&a, &b, &ida, "a_draft").await;
    assert_draft_hidden(&b, &a, &idb, "b_draft").await;

    // Activated, each is readable by the other and still writable only by its owner.
    for (owner, id) in [(&a, &ida), (&b, &idb)] {
        let vars = json!({ "id": id, "status": "ACTIVE" });
        owner.gql_ok(docs::SET_TEMPLATE_STATUS, vars).await;
    }
    assert_active_read_only(&a, &b, &ida, "a_draft").await;
    assert_active_read_only(&b, &a, &idb, "b_draft").await;
    for (owner, id) in [(&a, &ida), (&b, &idb)] {
        let vars = json!({ "id": id, "body": "changed" });
        let data = owner.gql_ok(docs::UPDATE_TEMPLATE_BODY, vars).await;
        assert_eq!(data["updateTemplate"]["version"], 2);
    }

    // Neither creates for the other, and the refused create leaves nothing behind.
    for (m, other) in [(&a, "m-b"), (&b, "m-a")] {
        let input = json!({ "input": { "name": "for_other", "type": "TEXT", "body": "x", "merchantId": other } });
        assert_eq!(m.gql_code(docs::CREATE_TEMPLATE, input).await, "FORBIDDEN");
    }
    let all = app.as_admin().template_names().await;
    assert!(!all.contains(&"for_other".to_owned()), "{all:?}");
    let mine = a
        .create_template(
            json!({ "name": "for_a", "type": "TEXT", "body": "x", "merchantId": "m-a" }),
        )
        .await;
    assert_eq!(mine["merchantId"], "m-a");

    // Each deletes its own.
    for (owner, other, id) in [(&a, &b, &ida), (&b, &a, &idb)] {
        let data = owner
            .gql_ok(docs::DELETE_TEMPLATE, json!({ "id": id }))
            .await;
        assert_eq!(data["deleteTemplate"]["id"], id.as_str());
        assert_eq!(other.template(id).await.unwrap_err(), "NOT_FOUND");
    }
}

/// A filter narrows what a merchant sees; it never widens it. (A merchant's scope is "its own OR
/// the active ones"; a filter OR-ed onto that group showed other merchants' drafts of that type.)
async fn filters_never_widen_a_merchants_view(db: Db) {
    let app = TestApp::spawn(db).await;
    let (a, b) = (app.as_merchant("m-a"), app.as_merchant("m-b"));
    b.create_template(json!({
        "name": "b_secret", "type": "BUTTONS", "body": "B only", "status": "DRAFT",
        "buttons": [{ "id": "y", "title": "Yes" }],
    }))
    .await;
    let query = r#"query($type: TemplateType, $status: TemplateStatus, $search: String) {
      templates(type: $type, status: $status, search: $search, first: 100) { totalCount nodes { name } }
    }"#;
    for vars in [
        json!({ "type": "BUTTONS" }),
        json!({ "status": "DRAFT" }),
        json!({ "search": "secret" }),
    ] {
        let data = a.gql_ok(query, vars.clone()).await;
        let names = data["templates"]["nodes"].to_string();
        assert!(
            !names.contains("b_secret"),
            "{vars} showed B's draft to A: {names}"
        );
    }
    for path in [
        "/api/templates?type=buttons",
        "/api/templates?status=draft",
        "/api/templates?search=secret",
    ] {
        let (status, body) = a.rest(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            !body.to_string().contains("b_secret"),
            "{path} showed B's draft to A: {body}"
        );
    }
    // B itself still finds it through each filter.
    let data = b
        .gql_ok(query, json!({ "type": "BUTTONS", "status": "DRAFT" }))
        .await;
    assert!(
        data["templates"]["nodes"].to_string().contains("b_secret"),
        "{data}"
    );
}

async fn platform_templates_are_read_only_for_merchants(db: Db) {
    let app = TestApp::spawn(db).await;
    let admin = app.as_admin();
    let platform = admin.text_template("platform_draft", "DRAFT").await;
    let welcome = admin
        .gql_ok(docs::TEMPLATE_BY_NAME, json!({ "name": "welcome" }))
        .await["template"]
        .clone();
    assert!(welcome["merchantId"].is_null(), "{welcome}");
    let welcome_id = id_of(&welcome);

    for m in ["m-a", "m-b"] {
        let m = app.as_merchant(m);
        assert_eq!(m.template(&welcome_id).await.unwrap(), welcome);
        assert_eq!(m.template(&platform).await.unwrap_err(), "NOT_FOUND");
        for (doc, vars) in [
            (
                docs::UPDATE_TEMPLATE_BODY,
                json!({ "id": welcome_id, "body": "hijacked" }),
            ),
            (
                docs::SET_TEMPLATE_STATUS,
                json!({ "id": welcome_id, "status": "ARCHIVED" }),
            ),
            (
                docs::SET_TEMPLATE_STATUS,
                json!({ "id": welcome_id, "status": "DRAFT" }),
            ),
            (docs::DELETE_TEMPLATE, json!({ "id": welcome_id })),
        ] {
            assert_eq!(m.gql_code(doc, vars).await, "FORBIDDEN", "{doc}");
        }
        let path = format!("/api/templates/{welcome_id}");
        for (method, body) in [
            (Method::PUT, Some(json!({ "body": "hijacked" }))),
            (Method::PUT, Some(json!({ "status": "archived" }))),
            (Method::DELETE, None),
        ] {
            let (status, res) = m.rest(method.clone(), &path, body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method}: {res}");
            assert_eq!(res["code"], "FORBIDDEN", "{method}: {res}");
        }
    }
    assert_eq!(
        admin.template(&welcome_id).await.unwrap(),
        welcome,
        "welcome changed"
    );
    let data = admin
        .gql_ok(docs::TEMPLATE_VERSIONS, json!({ "id": welcome_id }))
        .await;
    assert_eq!(
        data["templateVersions"],
        json!([]),
        "no version was written"
    );
}

/// DEPENDS-ON-MAIN: names are unique per merchant; platform names are their own namespace.
async fn template_names_are_per_merchant(db: Db) {
    let app = TestApp::spawn(db).await;
    let (a, b) = (app.as_merchant("m-a"), app.as_merchant("m-b"));
    // B's choice of name is not blocked by (and so does not reveal) A's private draft.
    let pa = a.text_template("promo", "DRAFT").await;
    let pb = b.text_template("promo", "DRAFT").await;
    assert_ne!(pa, pb);
    for (m, own, merchant) in [(&a, &pa, "m-a"), (&b, &pb, "m-b")] {
        let data = m
            .gql_ok(docs::TEMPLATE_BY_NAME, json!({ "name": "promo" }))
            .await;
        assert_eq!(data["template"]["id"], own.as_str());
        assert_eq!(data["template"]["merchantId"], merchant);
        // Still unique within one merchant.
        let input = json!({ "input": { "name": "promo", "type": "TEXT", "body": "again" } });
        assert_eq!(m.gql_code(docs::CREATE_TEMPLATE, input).await, "CONFLICT");
    }
    // A merchant may reuse a platform name; the platform template is untouched.
    let mine = a
        .create_template(
            json!({ "name": "welcome", "type": "TEXT", "body": "mine", "status": "DRAFT" }),
        )
        .await;
    assert_eq!(mine["merchantId"], "m-a");
    let admin = app.as_admin();
    let input = json!({ "input": { "name": "welcome", "type": "TEXT", "body": "dup" } });
    assert_eq!(
        admin.gql_code(docs::CREATE_TEMPLATE, input).await,
        "CONFLICT"
    );
    let names = admin.template_names().await;
    assert_eq!(
        names.iter().filter(|n| *n == "promo").count(),
        2,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| *n == "welcome").count(),
        2,
        "{names:?}"
    );
}

/// DEPENDS-ON-MAIN: history is for callers who may write the template.
async fn template_versions_need_write_access(db: Db) {
    let app = TestApp::spawn(db).await;
    let a = app.as_merchant("m-a");
    let id = a.text_template("history", "ACTIVE").await;
    let vars = json!({ "id": id, "body": "second" });
    a.gql_ok(docs::UPDATE_TEMPLATE_BODY, vars).await;
    let versions = json!({ "id": id });

    for writer in [&a, &app.as_admin(), &app.as_service()] {
        let data = writer
            .gql_ok(docs::TEMPLATE_VERSIONS, versions.clone())
            .await;
        let history = data["templateVersions"].as_array().unwrap();
        assert_eq!(history.len(), 1, "{data}");
        assert_eq!(
            history[0]["content"]["content"]["body"], "history body",
            "{data}"
        );
    }
    // B and anonymous callers may read the ACTIVE template, not its history.
    let (b, anon) = (app.as_merchant("m-b"), app.anonymous());
    for (reader, refusals) in [
        (&b, &["NOT_FOUND", "FORBIDDEN"][..]),
        (&anon, &["NOT_FOUND", "FORBIDDEN", "UNAUTHENTICATED"][..]),
    ] {
        assert_eq!(reader.template(&id).await.unwrap()["body"], "second");
        let (code, body) = reader
            .gql_err(docs::TEMPLATE_VERSIONS, versions.clone())
            .await;
        assert!(refusals.contains(&code.as_str()), "{body:#}");
        assert!(body["data"].is_null(), "{body:#}");
    }
    // Nor the history of a platform template.
    let welcome = a
        .gql_ok(docs::TEMPLATE_BY_NAME, json!({ "name": "welcome" }))
        .await;
    let vars = json!({ "id": welcome["template"]["id"] });
    let code = a.gql_code(docs::TEMPLATE_VERSIONS, vars).await;
    assert!(matches!(code.as_str(), "NOT_FOUND" | "FORBIDDEN"), "{code}");
}

/// A refusal of another merchant's media: FORBIDDEN, or NOT_FOUND where it is not even visible.
fn refused(code: &str) -> bool {
    matches!(code, "FORBIDDEN" | "NOT_FOUND")
}

async fn merchant_media_isolation(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.run_workers = false).await;
    let (a, b) = (app.as_merchant("m-a"), app.as_merchant("m-b"));
    let ma = id_of(&a.upload(&tiny_png(1), None).await);
    let mb = id_of(&b.upload(&tiny_png(2), None).await);
    for (owner, id, product) in [(&a, &ma, "p-a"), (&b, &mb, "p-b")] {
        let vars = json!({ "product": product, "media": id });
        owner.gql_ok(docs::ATTACH_MEDIA, vars).await;
    }

    for (other, id, product) in [(&b, &ma, "p-a"), (&a, &mb, "p-b")] {
        for (doc, vars) in [
            (docs::DELETE_MEDIA, json!({ "id": id })),
            (
                docs::ATTACH_MEDIA,
                json!({ "product": "p-stolen", "media": id }),
            ),
            (
                docs::DETACH_MEDIA,
                json!({ "product": product, "media": id }),
            ),
            (
                docs::REORDER_MEDIA,
                json!({ "product": product, "ids": [id] }),
            ),
        ] {
            let (code, body) = other.gql_err(doc, vars).await;
            assert!(refused(&code), "{doc}: {body:#}");
        }
        let (status, body) = other
            .rest(Method::DELETE, &format!("/api/media/{id}"), None)
            .await;
        assert!(matches!(status.as_u16(), 403 | 404), "{status}: {body}");
        assert!(refused(body["code"].as_str().unwrap_or_default()), "{body}");
    }

    // Nothing changed: both rows, both attachments, nothing on the stolen product.
    let admin = app.as_admin();
    let all = admin.gql_ok(docs::MEDIA_LIST, json!({})).await;
    assert_eq!(all["mediaList"]["totalCount"], 2, "{all}");
    // A product is (merchant, productId): admin names the merchant.
    let none = String::new();
    for (product, merchant, id) in [
        ("p-a", "m-a", &ma),
        ("p-b", "m-b", &mb),
        ("p-stolen", "m-a", &none),
        ("p-stolen", "m-b", &none),
    ] {
        let data = admin
            .gql_ok(
                docs::PRODUCT_MEDIA,
                json!({ "product": product, "merchantId": merchant }),
            )
            .await;
        let want = if id.is_empty() {
            json!([])
        } else {
            json!([{ "mediaId": id, "position": 0 }])
        };
        assert_eq!(data["productMedia"], want, "{product}");
    }

    // Each owner still manages its own.
    for (owner, id, product) in [(&a, &ma, "p-a"), (&b, &mb, "p-b")] {
        let vars = json!({ "product": product, "media": id });
        assert_eq!(
            owner.gql_ok(docs::DETACH_MEDIA, vars).await["detachMediaFromProduct"],
            true
        );
        let data = owner.gql_ok(docs::DELETE_MEDIA, json!({ "id": id })).await;
        assert_eq!(data["deleteMedia"], true);
    }
    let all = admin.gql_ok(docs::MEDIA_LIST, json!({})).await;
    assert_eq!(all["mediaList"]["totalCount"], 0, "{all}");
}

async fn admin_and_service_can_write(db: Db) {
    let app = TestApp::spawn(db).await;
    let (admin, service) = (app.as_admin(), app.as_service());

    // A merchant's draft can be managed by admin and service.
    let id = app.as_merchant("m-1").text_template("m_tpl", "DRAFT").await;
    let vars = json!({ "id": id, "body": "changed" });
    let data = admin.gql_ok(docs::UPDATE_TEMPLATE_BODY, vars).await;
    assert_eq!(data["updateTemplate"]["version"], 2);
    let vars = json!({ "id": id, "status": "ARCHIVED" });
    let data = service.gql_ok(docs::SET_TEMPLATE_STATUS, vars).await;
    assert_eq!(data["setTemplateStatus"]["status"], "ARCHIVED");

    // Admin and service create platform or merchant templates.
    let t = service
        .create_template(
            json!({ "name": "svc_tpl", "type": "TEXT", "body": "s", "merchantId": "m-9" }),
        )
        .await;
    assert_eq!(
        (&t["merchantId"], &t["createdBy"]),
        (&json!("m-9"), &json!("service-x"))
    );
    let t = admin
        .create_template(json!({ "name": "adm_tpl", "type": "TEXT", "body": "a" }))
        .await;
    assert!(t["merchantId"].is_null(), "{t}");
    assert_eq!(t["createdBy"], "admin-1");

    let data = service
        .gql_ok(docs::DELETE_TEMPLATE, json!({ "id": id }))
        .await;
    assert_eq!(data["deleteTemplate"]["id"], id.as_str());
    assert_eq!(admin.template(&id).await.unwrap_err(), "NOT_FOUND");
}

async fn audit_logs_are_admin_only(db: Db) {
    let app = TestApp::spawn(db).await;
    let (code, body) = app
        .as_merchant("m-1")
        .gql_err(docs::AUDIT_COUNT, json!({}))
        .await;
    assert_eq!(code, "FORBIDDEN", "{body:#}");
    assert_eq!(
        app.as_service()
            .gql_code(docs::AUDIT_COUNT, json!({}))
            .await,
        "FORBIDDEN"
    );
    assert_eq!(
        app.anonymous().gql_code(docs::AUDIT_COUNT, json!({})).await,
        "UNAUTHENTICATED"
    );
    // The seed wrote four audit rows.
    let data = app.as_admin().gql_ok(docs::AUDIT_COUNT, json!({})).await;
    assert_eq!(data["auditLogs"]["totalCount"], 4);
}

/// DEPENDS-ON-MAIN: merchants list only their own media; anonymous callers none.
async fn media_list_is_scoped(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.run_workers = false).await;
    let (a, b) = (app.as_merchant("m-a"), app.as_merchant("m-b"));
    let ma = id_of(&a.upload(&tiny_png(1), None).await);
    let mb = id_of(&b.upload(&tiny_png(2), None).await);
    let all = app.as_admin().gql_ok(docs::MEDIA_LIST, json!({})).await;
    assert_eq!(all["mediaList"]["totalCount"], 2, "{all}");
    for (m, own) in [(&a, &ma), (&b, &mb)] {
        let data = m.gql_ok(docs::MEDIA_LIST, json!({})).await;
        assert_eq!(data["mediaList"]["totalCount"], 1, "{data}");
        assert_eq!(data["mediaList"]["nodes"][0]["id"], own.as_str(), "{data}");
    }
    let (code, body) = app.anonymous().gql_err(docs::MEDIA_LIST, json!({})).await;
    assert_eq!(code, "UNAUTHENTICATED", "{body:#}");
    assert!(body["data"].is_null(), "{body:#}");
}

both_dbs!(
    filters_never_widen_a_merchants_view,
    anonymous_cannot_write_or_see_drafts,
    merchant_isolation,
    platform_templates_are_read_only_for_merchants,
    template_names_are_per_merchant,
    template_versions_need_write_access,
    merchant_media_isolation,
    media_list_is_scoped,
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

/// A signed admin token that says it is valid only from an hour from now (`nbf`).
fn not_yet_valid_token() -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "sub": "admin-1", "role": "admin", "iat": now, "nbf": now + 3600, "exp": now + 7200 });
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
    assert_rejected(
        &app,
        &format!("Bearer {}", not_yet_valid_token()),
        "not valid yet",
    )
    .await;
    assert_rejected(&app, "Bearer abc", "invalid").await;
    assert_rejected(&app, "Basic xyz", "Bearer").await;
    assert_rejected(&app, "Bearer ", "Bearer").await;

    // The same public query succeeds without a token, and with a good one.
    let data = app
        .gql_ok(None, "{ templates { totalCount } }", json!({}))
        .await;
    assert_eq!(data["templates"]["totalCount"], 4);
    // The scheme is case-insensitive (RFC 9110).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, body) = gql_with_auth(
            &app,
            &format!("{scheme} {}", app.admin),
            "{ auditLogs { totalCount } }",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {body:#}");
        assert_eq!(body["data"]["auditLogs"]["totalCount"], 4);
    }

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

/// Two `Authorization` headers are refused whichever comes first, on GraphQL and REST: the
/// caller is never decided by the headers' order.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let good = format!("Bearer {}", app.admin);
    for (first, second) in [
        (good.as_str(), "Bearer garbage"),
        ("Bearer garbage", good.as_str()),
        (good.as_str(), good.as_str()),
    ] {
        let res = app
            .client
            .post(app.url("/graphql"))
            .header("authorization", first)
            .header("authorization", second)
            .json(&json!({ "query": "{ auditLogs { totalCount } }" }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
            "{body}"
        );
        let res = app
            .client
            .get(app.url("/api/templates"))
            .header("authorization", first)
            .header("authorization", second)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHENTICATED", "{body}");
    }
    // One header still works.
    let res = app
        .client
        .post(app.url("/graphql"))
        .header("authorization", &good)
        .json(&json!({ "query": "{ auditLogs { totalCount } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Who wrote a template (`createdBy` / `created_by`, a user's `sub`) is for the template's own
/// merchant (any of its users), admins and the service. Anonymous callers and other merchants
/// read the ACTIVE template with it null, in GraphQL and REST, from the cache too.
#[tokio::test]
async fn template_authors_are_private() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let t = app
        .as_merchant("m-a")
        .create_template(json!({ "name": "authored", "type": "TEXT", "body": "hi" }))
        .await;
    let id = id_of(&t);
    let author = "merchant-m-a";
    let colleague = app
        .server
        .state
        .keys
        .issue(
            "bob",
            Role::Merchant,
            Some("m-a"),
            std::time::Duration::from_secs(600),
        )
        .unwrap();
    let callers: [(&str, Option<String>, Option<&str>); 5] = [
        ("anonymous", None, None),
        ("another merchant", Some(app.merchant("m-b")), None),
        ("a colleague", Some(colleague), Some(author)),
        ("admin", Some(app.admin.clone()), Some(author)),
        (
            "service",
            Some(app.token(Role::Service, None)),
            Some(author),
        ),
    ];
    let query = r#"query($id: ID!) {
      template(id: $id) { createdBy }
      templates(search: "authored") { nodes { createdBy } }
    }"#;
    for (who, token, want) in callers {
        let want = json!(want);
        // Twice: the second answer comes from the read cache.
        for round in 0..2 {
            let data = app
                .gql_ok(token.as_deref(), query, json!({ "id": id }))
                .await;
            assert_eq!(data["template"]["createdBy"], want, "{who} {round}");
            assert_eq!(
                data["templates"]["nodes"][0]["createdBy"], want,
                "{who} {round}"
            );
            let (status, one) = app
                .rest(
                    Method::GET,
                    &format!("/api/templates/{id}"),
                    token.as_deref(),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(one["template"]["created_by"], want, "{who} {round}");
            let (status, list) = app
                .rest(
                    Method::GET,
                    "/api/templates?search=authored",
                    token.as_deref(),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(list["templates"][0]["created_by"], want, "{who} {round}");
        }
    }
}

/// An empty `merchantId` is VALIDATION wherever it names a merchant: never the platform, nor
/// "every merchant", nor a merchant named "". Leaving it out (or null) means none.
#[tokio::test]
async fn an_empty_merchant_id_is_refused() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let admin = app.as_admin();
    for (what, query) in [
        (
            "createTemplate",
            r#"mutation { createTemplate(input: { name: "x", type: TEXT, body: "b", merchantId: "" }) { id } }"#,
        ),
        (
            "mediaList",
            r#"{ mediaList(merchantId: "") { totalCount } }"#,
        ),
        (
            "recentEvents",
            r#"{ recentEvents(merchantId: " ") { totalCount } }"#,
        ),
        (
            "uploadMediaBase64",
            r#"mutation { uploadMediaBase64(input: { fileData: "iVBORw0KGgo=", merchantId: "  " }) { id } }"#,
        ),
    ] {
        let (code, body) = admin.gql_err(query, json!({})).await;
        assert_eq!(code, "VALIDATION", "{what}: {body:#}");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], "merchantId",
            "{what}: {body:#}"
        );
    }
    // Empty audit filters are a mistake too, each named.
    for field in ["actorId", "action", "targetType", "targetId"] {
        let (code, body) = admin
            .gql_err(
                &format!("{{ auditLogs(filter: {{ {field}: \"\" }}) {{ totalCount }} }}"),
                json!({}),
            )
            .await;
        assert_eq!(code, "VALIDATION", "{field}: {body:#}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body:#}");
    }
    // No template has an empty name.
    let (code, body) = admin
        .gql_err(r#"{ template(name: " ") { id } }"#, json!({}))
        .await;
    assert_eq!(code, "VALIDATION", "{body:#}");
    // Nothing was created on the platform.
    let data = admin
        .gql_ok(r#"{ templates(search: "x") { totalCount } }"#, json!({}))
        .await;
    assert_eq!(data["templates"]["totalCount"], 0, "{data}");
}
