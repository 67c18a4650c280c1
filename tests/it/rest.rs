//! The seed's REST API under /api: shapes, filters, errors, and agreement with GraphQL.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    both_dbs,
    common::{Db, TestApp},
};

fn template_names(body: &Value) -> Vec<&str> {
    body["templates"]
        .as_array()
        .unwrap_or_else(|| panic!("no templates in {body}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

async fn list_shape_and_filters(db: Db) {
    let app = TestApp::spawn(db).await;
    let (status, body) = app.rest(Method::GET, "/api/templates", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let templates = body["templates"].as_array().unwrap();
    assert_eq!(body["count"], templates.len());
    assert_eq!(templates.len(), 4);
    // Ordered by name.
    assert_eq!(
        template_names(&body),
        vec!["catalog", "order_confirmation", "product_photo", "welcome"]
    );

    let order = templates
        .iter()
        .find(|t| t["name"] == "order_confirmation")
        .unwrap();
    assert!(
        order["id"]
            .as_str()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
        "{order}"
    );
    assert_eq!(order["type"], "buttons");
    assert_eq!(order["status"], "active");
    assert_eq!(order["version"], 1);
    assert_eq!(order["header"], "Order {{ order_id }}");
    assert_eq!(order["footer"], "Reply within 24 hours");
    assert!(order["button_text"].is_null());
    assert!(order["merchant_id"].is_null());
    // Who wrote it is for admins, the service and the template's own merchant.
    assert!(order["created_by"].is_null(), "{order}");
    assert!(order["created_at"].is_string() && order["updated_at"].is_string());
    assert_eq!(
        order["variables"],
        json!(["order_id", "customer_name", "total"])
    );
    assert_eq!(
        order["buttons"],
        json!([
            { "id": "confirm_order", "title": "Confirm" },
            { "id": "change_order", "title": "Change order" },
            { "id": "cancel_order", "title": "Cancel" }
        ])
    );
    let mut keys: Vec<&str> = order
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "body",
            "button_text",
            "buttons",
            "created_at",
            "created_by",
            "footer",
            "header",
            "id",
            "media",
            "merchant_id",
            "name",
            "sections",
            "status",
            "type",
            "updated_at",
            "variables",
            "version",
        ]
    );
    let catalog = templates.iter().find(|t| t["name"] == "catalog").unwrap();
    assert_eq!(catalog["button_text"], "View catalog");
    assert_eq!(catalog["type"], "list");

    // Filters.
    let (status, body) = app
        .rest(
            Method::GET,
            "/api/templates?type=list&status=active",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(template_names(&body), vec!["catalog"]);
    assert_eq!(body["count"], 1);
    let (_, body) = app
        .rest(Method::GET, "/api/templates?status=draft", None, None)
        .await;
    assert_eq!(body["count"], 0, "{body}");
    assert_eq!(body["templates"], json!([]));
    let (_, body) = app
        .rest(Method::GET, "/api/templates?search=WELCOME", None, None)
        .await;
    assert_eq!(template_names(&body), vec!["welcome"], "{body}");

    for (query, field) in [("type=bogus", "type"), ("status=gone", "status")] {
        let (status, body) = app
            .rest(Method::GET, &format!("/api/templates?{query}"), None, None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["code"], "VALIDATION", "{body}");
        assert_eq!(body["field"], field, "{body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
}

async fn create_read_update_delete(db: Db) {
    let app = TestApp::spawn(db).await;
    let id = create_in_the_seeds_shapes(&app).await;
    refusals_keep_the_seeds_shape(&app).await;
    read_update_delete(&app, &id).await;
}

/// POST with the seed's body (buttons as objects, then as bare strings); returns the first id.
async fn create_in_the_seeds_shapes(app: &TestApp) -> String {
    let admin = Some(app.admin.as_str());
    // The seed's body, buttons as objects.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates",
            admin,
            Some(json!({
                "name": "rest_buttons", "type": "buttons", "body": "Hi {{ who }}",
                "buttons": [{ "id": "y", "title": "Yes" }, { "id": "n", "title": "No" }]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["success"], true);
    let t = &body["template"];
    assert_eq!(t["name"], "rest_buttons");
    assert_eq!(t["type"], "buttons");
    assert_eq!(t["status"], "active");
    assert_eq!(t["version"], 1);
    assert_eq!(t["variables"], json!(["who"]));
    assert_eq!(
        t["buttons"],
        json!([{ "id": "y", "title": "Yes" }, { "id": "n", "title": "No" }])
    );
    let id = t["id"].as_str().unwrap().to_owned();

    // Buttons as bare strings get ids from their titles.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates",
            admin,
            Some(json!({
                "name": "rest_bare", "type": "buttons", "body": "Pick",
                "buttons": ["Yes please", "No thanks"]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["template"]["buttons"],
        json!([
            { "id": "yes_please", "title": "Yes please" },
            { "id": "no_thanks", "title": "No thanks" }
        ])
    );
    id
}

/// No token, a duplicate name, malformed and mis-shaped JSON: each refused in the seed's shape.
async fn refusals_keep_the_seeds_shape(app: &TestApp) {
    let admin = Some(app.admin.as_str());
    // No token.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates",
            None,
            Some(json!({ "name": "anon", "type": "text", "body": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "UNAUTHENTICATED");

    // Duplicate name.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates",
            admin,
            Some(json!({ "name": "rest_buttons", "type": "text", "body": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "CONFLICT");

    // Malformed JSON, and JSON of the wrong shape.
    let res = app
        .client
        .post(app.url("/api/templates"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(r#"{"name": "broken", "type": "#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], "VALIDATION", "{body}");
    assert_eq!(body["field"], "body", "{body}");
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates",
            admin,
            Some(json!({ "name": "no_type", "body": "x" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "VALIDATION");
}

/// GET by id and name, PUT (content, null clears, status), DELETE, and unknown routes.
async fn read_update_delete(app: &TestApp, id: &str) {
    let admin = Some(app.admin.as_str());
    // GET by id and by name.
    let (status, body) = app
        .rest(Method::GET, &format!("/api/templates/{id}"), None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["template"]["id"], id);
    let (_, body) = app
        .rest(Method::GET, "/api/templates/rest_buttons", None, None)
        .await;
    assert_eq!(body["template"]["id"], id, "{body}");
    // Any name is addressable, percent-encoded as a path segment.
    let odd = app
        .as_admin()
        .create_template(
            json!({ "name": "a/b ?#%é", "type": "TEXT", "body": "b", "status": "ACTIVE" }),
        )
        .await;
    let (status, body) = app
        .rest(
            Method::GET,
            "/api/templates/a%2Fb%20%3F%23%25%C3%A9",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["template"]["id"], odd["id"], "{body}");
    let (status, body) = app
        .rest(Method::GET, "/api/templates/not_there", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "NOT_FOUND");

    // PUT: content, null clears, status.
    let (status, body) = app
        .rest(
            Method::PUT,
            &format!("/api/templates/{id}"),
            admin,
            Some(json!({ "body": "Hello {{ who }} and {{ other }}", "footer": "Bye", "status": "draft" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let t = &body["template"];
    assert_eq!(t["version"], 2);
    assert_eq!(t["footer"], "Bye");
    assert_eq!(t["status"], "draft");
    assert_eq!(t["variables"], json!(["who", "other"]));
    let (_, body) = app
        .rest(
            Method::PUT,
            &format!("/api/templates/{id}"),
            admin,
            Some(json!({ "footer": null })),
        )
        .await;
    assert!(body["template"]["footer"].is_null(), "{body}");
    assert_eq!(body["template"]["version"], 3);
    assert_eq!(body["template"]["body"], "Hello {{ who }} and {{ other }}");

    // The draft is hidden from anonymous REST readers now.
    let (status, _) = app
        .rest(Method::GET, &format!("/api/templates/{id}"), None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // DELETE.
    let (status, body) = app
        .rest(Method::DELETE, &format!("/api/templates/{id}"), admin, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let (status, body) = app
        .rest(Method::GET, &format!("/api/templates/{id}"), admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = app
        .rest(Method::DELETE, &format!("/api/templates/{id}"), admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Unknown routes answer in the same shape.
    let (status, body) = app.rest(Method::GET, "/api/nothing", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");
}

async fn preview_over_rest(db: Db) {
    let app = TestApp::spawn(db).await;
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates/preview",
            None,
            Some(json!({
                "templateName": "welcome",
                "variables": { "customer_name": "Tari", "store_name": "Mbare Mart" }
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    let text = "Hi Tari! Welcome to Mbare Mart. Reply MENU to see our catalog.";
    assert_eq!(body["preview"]["text"], text);
    assert_eq!(
        body["preview"]["payload"],
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "type": "text",
            "text": { "preview_url": false, "body": text }
        })
    );
    assert_eq!(
        body["preview"]["variables"],
        json!(["customer_name", "store_name"])
    );
    assert_eq!(body["preview"]["violations"], json!([]));

    // With `to`, inline.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates/preview",
            None,
            Some(json!({
                "template": { "type": "text", "body": "Yo {{ n }}" },
                "variables": { "n": 1 },
                "to": "263700000000"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["preview"]["payload"]["to"], "263700000000");
    assert_eq!(body["preview"]["payload"]["text"]["body"], "Yo 1");

    // A missing variable.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates/preview",
            None,
            Some(json!({ "templateName": "welcome", "variables": { "customer_name": "Tari" } })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["code"], "VALIDATION");
    assert_eq!(body["field"], "variables");
    assert_eq!(body["error"], "missing template variables: store_name");
}

async fn rest_and_graphql_agree(db: Db) {
    let app = TestApp::spawn(db).await;
    let admin = Some(app.admin.as_str());

    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates",
            admin,
            Some(json!({
                "name": "from_rest", "type": "list", "body": "Choose", "buttonText": "Open",
                "sections": [{ "title": "S", "rows": [{ "id": "r1", "title": "One", "description": "First" }] }]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let rest_id = body["template"]["id"].as_str().unwrap().to_owned();
    let data = app
        .gql_ok(
            None,
            r#"{ template(name: "from_rest") { id type buttonText sections { title rows { id title description } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["template"],
        json!({
            "id": rest_id, "type": "LIST", "buttonText": "Open",
            "sections": [{ "title": "S", "rows": [{ "id": "r1", "title": "One", "description": "First" }] }]
        })
    );

    let data = app
        .gql_ok(
            admin,
            r#"mutation { createTemplate(input: { name: "from_gql", type: MEDIA, body: "Pic", media: { link: "https://x.example/p.png" } }) { id } }"#,
            json!({}),
        )
        .await;
    let gql_id = data["createTemplate"]["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .rest(Method::GET, &format!("/api/templates/{gql_id}"), None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["template"]["name"], "from_gql");
    assert_eq!(body["template"]["type"], "media");
    assert_eq!(
        body["template"]["media"],
        json!({ "type": "image", "link": "https://x.example/p.png" })
    );
    let (_, body) = app.rest(Method::GET, "/api/templates", None, None).await;
    assert_eq!(body["count"], 6);
    let names = template_names(&body);
    assert!(names.contains(&"from_rest") && names.contains(&"from_gql"));

    // A REST update shows up over GraphQL with its version history.
    let (status, _) = app
        .rest(
            Method::PUT,
            &format!("/api/templates/{gql_id}"),
            admin,
            Some(json!({ "body": "New pic" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The history is for writers: read it as the admin that wrote it.
    let data = app
        .gql_ok(
            admin,
            r#"query($id: ID!) { template(id: $id) { body version } templateVersions(templateId: $id) { version content } }"#,
            json!({ "id": gql_id }),
        )
        .await;
    assert_eq!(data["template"], json!({ "body": "New pic", "version": 2 }));
    assert_eq!(data["templateVersions"][0]["version"], 1);
    assert_eq!(
        data["templateVersions"][0]["content"]["content"]["body"],
        "Pic"
    );
}

/// A body error names the field path, not just `body`; snake_case and camelCase both parse.
async fn body_errors_name_the_field_path(db: Db) {
    let app = TestApp::spawn(db).await;
    let admin = Some(app.admin.as_str());
    let cases = [
        (
            json!({ "name": "bad_row", "type": "list", "body": "x", "button_text": "Open",
                    "sections": [{ "title": "S", "rows": [{ "id": "r1", "title": "One" }, { "id": "r2", "title": 5 }] }] }),
            "sections[0].rows[1].title",
        ),
        (
            json!({ "name": "bad_button", "type": "buttons", "body": "x",
                    "buttons": [{ "id": "a", "title": "A" }, { "id": "b", "title": ["B"] }] }),
            "buttons[1].title",
        ),
        (json!({ "name": "no_type", "body": "x" }), "type"),
        (
            json!({ "name": "bad_type", "type": "fax", "body": "x" }),
            "type",
        ),
        (
            json!({ "name": "bad_media", "type": "media", "body": "x", "media": { "link": 7 } }),
            "media.link",
        ),
        // A value of the wrong shape for an enum: serde_json calls it a syntax error.
        (json!({ "name": "type_5", "type": 5, "body": "x" }), "type"),
        (
            json!({ "name": "type_null", "type": null, "body": "x" }),
            "type",
        ),
        (
            json!({ "name": "type_map", "type": {}, "body": "x" }),
            "type",
        ),
        (
            json!({ "name": "status_5", "type": "text", "body": "x", "status": 5 }),
            "status",
        ),
    ];
    for (body, field) in cases {
        let (status, res) = app
            .rest(Method::POST, "/api/templates", admin, Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {res}");
        assert_eq!(res["code"], "VALIDATION", "{res}");
        assert_eq!(res["field"], field, "{body}: {res}");
    }
    // JSON nested past serde_json's 128 levels is about the body, not a field's type.
    let deep = format!(
        "{{\"event_type\":\"bot_connected\",\"payload\":{{\"a\":{}{}}}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let res = app
        .client
        .post(app.url("/api/events"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res: Value = res.json().await.unwrap();
    assert_eq!(res["field"], "body", "{res}");
    assert!(
        res["error"].as_str().unwrap().contains("128 levels"),
        "{res}"
    );
    // Nothing was created by the refused bodies.
    let (_, list) = app.rest(Method::GET, "/api/templates", admin, None).await;
    assert_eq!(list["count"], 4, "{list}");
    // The media upload's body too.
    for (body, field) in [
        (json!({ "file_data": 5 }), "file_data"),
        (json!({ "fileData": "aGk=", "fileName": ["a"] }), "fileName"),
    ] {
        let (status, res) = app
            .rest(Method::POST, "/api/media/upload", admin, Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {res}");
        assert_eq!(res["field"], field, "{body}: {res}");
    }
    // Messages in JSON's words, not Rust's (`struct EmitBody with 3 elements`, `u64`).
    for (path, body) in [
        ("/api/events", json!([1, 2, 3])),
        (
            "/api/templates",
            json!({ "name": "n", "type": "text", "body": 5 }),
        ),
    ] {
        let (status, res) = app.rest(Method::POST, path, admin, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{res}");
        let error = res["error"].as_str().unwrap();
        assert!(
            !error.contains("struct") && !error.contains("u64"),
            "{error}"
        );
    }

    // snake_case on PUT, and a path error there too.
    let (status, res) = app
        .rest(
            Method::POST,
            "/api/templates",
            admin,
            Some(json!({ "name": "snake", "type": "list", "body": "x", "button_text": "Open",
                         "merchant_id": "m_snake",
                         "sections": [{ "title": "S", "rows": [{ "id": "r1", "title": "One" }] }] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert_eq!(res["template"]["button_text"], "Open");
    assert_eq!(res["template"]["merchant_id"], "m_snake");
    let id = res["template"]["id"].as_str().unwrap().to_owned();
    let (status, res) = app
        .rest(
            Method::PUT,
            &format!("/api/templates/{id}"),
            admin,
            Some(json!({ "button_text": "Browse" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["template"]["button_text"], "Browse");
    let (status, res) = app
        .rest(
            Method::PUT,
            &format!("/api/templates/{id}"),
            admin,
            Some(json!({ "sections": [{ "title": "S", "rows": [{ "id": 1, "title": "One" }] }] })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{res}");
    assert_eq!(res["field"], "sections[0].rows[0].id", "{res}");
    let (status, res) = app
        .rest(
            Method::POST,
            "/api/templates/preview",
            None,
            Some(json!({ "template_name": "welcome", "variables": { "customer_name": "T", "store_name": "S" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(
        res["preview"]["variables"],
        json!(["customer_name", "store_name"])
    );
}

/// Creates a text template as `token` over REST; returns its `/api/templates/{id}` path.
async fn created_text_template(app: &TestApp, token: &str, name: &str, body: &str) -> String {
    let (status, res) = app
        .rest(
            Method::POST,
            "/api/templates",
            Some(token),
            Some(json!({ "name": name, "type": "text", "body": body })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    format!("/api/templates/{}", res["template"]["id"].as_str().unwrap())
}

/// PUT refuses what it cannot apply, instead of answering 200 with nothing changed: `null` for a
/// field every template has, a body with no field it knows, and another merchant's id.
async fn put_refuses_what_it_cannot_apply(db: Db) {
    let app = TestApp::spawn(db).await;
    let m1 = app.merchant("m1");
    let path = created_text_template(&app, &m1, "put_rules", "Hi {{ who }}").await;
    for field in ["name", "type", "body", "buttons", "sections", "status"] {
        let (status, res) = app
            .rest(Method::PUT, &path, Some(&m1), Some(json!({ field: null })))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {res}");
        assert_eq!(res["code"], "VALIDATION", "{field}: {res}");
        assert_eq!(res["field"], field, "{res}");
    }
    for (token, payload, code) in [
        (&m1, json!({ "id": "x", "version": 99 }), "VALIDATION"),
        (&m1, json!({}), "VALIDATION"),
        (&m1, json!({ "merchantId": "m2", "body": "y" }), "FORBIDDEN"),
        (
            &m1,
            json!({ "merchant_id": "m2", "body": "y" }),
            "FORBIDDEN",
        ),
        (
            &app.admin,
            json!({ "merchant_id": "m2", "body": "y" }),
            "VALIDATION",
        ),
    ] {
        let (_, res) = app
            .rest(Method::PUT, &path, Some(token), Some(payload.clone()))
            .await;
        assert_eq!(res["code"], code, "{payload}: {res}");
    }
    // Its own merchant may be named; unknown fields beside known ones are ignored (a client
    // may send back the whole object it read).
    let (status, res) = app
        .rest(
            Method::PUT,
            &path,
            Some(&m1),
            Some(json!({ "merchantId": "m1", "body": "Bye {{ who }}", "version": 99 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["template"]["version"], 2, "{res}");
    assert_eq!(res["template"]["merchant_id"], "m1", "{res}");
    // GraphQL says the same about null.
    let id = res["template"]["id"].as_str().unwrap().to_owned();
    for field in ["name", "type", "body", "buttons", "sections"] {
        let q = format!(
            "mutation($id: ID!) {{ updateTemplate(id: $id, input: {{ {field}: null }}) {{ id }} }}"
        );
        let (code, err) = app.gql_err(Some(&m1), &q, json!({ "id": id })).await;
        assert_eq!(code, "VALIDATION", "{field}: {err}");
    }
    // A template may be called `preview`, and read by that name like any other.
    let (status, res) = app
        .rest(
            Method::POST,
            "/api/templates",
            Some(&m1),
            Some(json!({ "name": "preview", "type": "text", "body": "Hi" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let (status, got) = app
        .rest(Method::GET, "/api/templates/preview", Some(&m1), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["template"]["id"], res["template"]["id"], "{got}");
    // Nothing above changed the template.
    let (_, res) = app.rest(Method::GET, &path, Some(&m1), None).await;
    assert_eq!(res["template"]["version"], 2, "{res}");
    assert_eq!(res["template"]["body"], "Bye {{ who }}", "{res}");
}

/// An array where an object belongs is VALIDATION, at the top of a body and inside it, and
/// nothing changes. (serde reads a struct from an array of its fields in order: a PUT of
/// `["renamed", "text", "new body"]` renamed the template.)
async fn arrays_are_not_objects(db: Db) {
    let app = TestApp::spawn(db).await;
    let m1 = app.merchant("m1");
    let path = created_text_template(&app, &m1, "arrays", "Hi").await;
    let png = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        crate::media::png_bytes(4, 4),
    );
    for (method, at, token, payload, field) in [
        (
            Method::PUT,
            path.as_str(),
            &m1,
            json!(["renamed", "text", "new body"]),
            "body",
        ),
        (
            Method::POST,
            "/api/templates",
            &m1,
            json!(["from_array", "text", "b"]),
            "body",
        ),
        (
            Method::POST,
            "/api/templates",
            &m1,
            json!({ "name": "nested", "type": "buttons", "body": "b", "buttons": [["yes", "Yes"]] }),
            "buttons[0]",
        ),
        (
            Method::POST,
            "/api/templates",
            &m1,
            json!({ "name": "nested", "type": "list", "body": "b", "button_text": "Menu",
                    "sections": [["Drinks", [["tea", "Tea"]]]] }),
            "sections[0]",
        ),
        (
            Method::POST,
            "/api/media/upload",
            &m1,
            json!([png, "a.png"]),
            "body",
        ),
        (
            Method::POST,
            "/api/events",
            &app.admin,
            json!(["bot_connected", {}, "m1"]),
            "body",
        ),
    ] {
        let (status, res) = app
            .rest(method.clone(), at, Some(token), Some(payload.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{payload}: {res}");
        assert_eq!(res["code"], "VALIDATION", "{payload}: {res}");
        assert_eq!(res["field"], field, "{payload}: {res}");
        assert!(
            res["error"].as_str().unwrap().contains("an object"),
            "{payload}: {res}"
        );
    }
    // Enum values in any case, as the query string takes them; stored and answered in lower case.
    let (status, res) = app
        .rest(
            Method::POST,
            "/api/templates",
            Some(&m1),
            Some(json!({ "name": "upper_enums", "type": "TEXT", "body": "b", "status": "Active" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    assert_eq!(res["template"]["type"], "text", "{res}");
    assert_eq!(res["template"]["status"], "active", "{res}");
    let (_, got) = app.rest(Method::GET, &path, Some(&m1), None).await;
    assert_eq!(got["template"]["name"], "arrays", "{got}");
    assert_eq!(got["template"]["version"], 1, "{got}");
    let (status, _) = app
        .rest(Method::GET, "/api/templates/from_array", Some(&m1), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // GraphQL's JSON arguments read the same way: job options, and an event's payload.
    let (code, err) = app
        .gql_err(
            Some(&app.admin),
            r#"mutation { enqueueJob(queue: ORDER_PROCESSING, name: "x", data: {}, options: [7, 1000]) { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{err}");
    assert_eq!(err["errors"][0]["extensions"]["field"], "options", "{err}");
    let (code, err) = app
        .gql_err(
            Some(&app.admin),
            r#"mutation { emitEvent(type: ORDER_STATUS_CHANGED, merchantId: "m1", payload: ["o1", "+15550001", "PENDING", "CONFIRMED"]) { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{err}");
}

both_dbs!(
    put_refuses_what_it_cannot_apply,
    arrays_are_not_objects,
    list_shape_and_filters,
    create_read_update_delete,
    preview_over_rest,
    rest_and_graphql_agree,
    body_errors_name_the_field_path,
);

/// Buttons given as bare titles (the seed's shape) get ids made from their titles, kept unique
/// when two titles make the same one: on create and on update.
#[tokio::test]
async fn ids_made_from_titles_are_unique() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let admin = Some(app.admin.as_str());
    let (status, created) = app
        .rest(
            Method::POST,
            "/api/templates",
            admin,
            Some(
                json!({ "name": "choices", "type": "buttons", "body": "Pick",
                         "buttons": ["Yes-please", "Yes please"] }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["template"]["buttons"],
        json!([{ "id": "yes_please", "title": "Yes-please" }, { "id": "yes_please_2", "title": "Yes please" }])
    );
    let id = created["template"]["id"].as_str().unwrap();
    let (status, updated) = app
        .rest(
            Method::PUT,
            &format!("/api/templates/{id}"),
            admin,
            Some(json!({ "buttons": ["Go!", "Go?", { "title": "🙂" }] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        updated["template"]["buttons"],
        json!([{ "id": "go_", "title": "Go!" }, { "id": "go__2", "title": "Go?" }, { "id": "button", "title": "🙂" }])
    );
}
