//! `previewTemplate` renders exactly the WhatsApp Cloud API message bodies.

use serde_json::{Value, json};

use crate::{
    both_dbs,
    common::{Db, TestApp},
};

const PREVIEW: &str = r#"mutation($t: TemplateInput!, $vars: JSON, $to: String) {
  previewTemplate(template: $t, variables: $vars, to: $to) {
    text payload variables violations { field message }
  }
}"#;

const TO: &str = "263781564004";

/// `base` with `to` inserted when given, as the Cloud API expects it.
fn with_to(mut expected: Value, to: Option<&str>) -> Value {
    if let Some(to) = to {
        expected["to"] = json!(to);
    }
    expected
}

async fn preview(app: &TestApp, template: Value, vars: Value, to: Option<&str>) -> Value {
    let data = app
        .gql_ok(
            None,
            PREVIEW,
            json!({ "t": template, "vars": vars, "to": to }),
        )
        .await;
    data["previewTemplate"].clone()
}

async fn inline_payloads_match_the_cloud_api(db: Db) {
    let app = TestApp::spawn(db).await;
    for to in [Some(TO), None] {
        text_payload(&app, to).await;
        buttons_payload(&app, to).await;
        list_payload(&app, to).await;
        image_link_payload(&app, to).await;
        image_id_payload(&app, to).await;
    }
}

/// Text, with its variables listed.
async fn text_payload(app: &TestApp, to: Option<&str>) {
    let p = preview(
        app,
        json!({ "type": "TEXT", "body": "Hi {{ name }}, your code is {{ code }}." }),
        json!({ "name": "Ann", "code": 4711 }),
        to,
    )
    .await;
    assert_eq!(
        p["payload"],
        with_to(
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "type": "text",
                "text": { "preview_url": false, "body": "Hi Ann, your code is 4711." }
            }),
            to
        )
    );
    assert_eq!(p["text"], "Hi Ann, your code is 4711.");
    assert_eq!(p["variables"], json!(["name", "code"]));
    assert_eq!(p["violations"], json!([]));
    assert_eq!(p["payload"].get("to").is_some(), to.is_some(), "{p}");
}

/// Interactive reply buttons with header and footer.
async fn buttons_payload(app: &TestApp, to: Option<&str>) {
    let p = preview(
        app,
        json!({
            "type": "BUTTONS",
            "header": "Order {{ order }}",
            "body": "Confirm order {{ order }}?",
            "footer": "Shop {{ shop }}",
            "buttons": [
                { "id": "yes", "title": "Yes {{ order }}" },
                { "id": "no", "title": "No" }
            ]
        }),
        json!({ "order": "A7", "shop": "Kiosk" }),
        to,
    )
    .await;
    assert_eq!(
        p["payload"],
        with_to(
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "header": { "type": "text", "text": "Order A7" },
                    "body": { "text": "Confirm order A7?" },
                    "footer": { "text": "Shop Kiosk" },
                    "action": { "buttons": [
                        { "type": "reply", "reply": { "id": "yes", "title": "Yes A7" } },
                        { "type": "reply", "reply": { "id": "no", "title": "No" } }
                    ]}
                }
            }),
            to
        )
    );
    assert_eq!(p["text"], "Order A7\n\nConfirm order A7?\n\nShop Kiosk");
    assert_eq!(p["variables"], json!(["order", "shop"]));
}

/// Interactive list with sections and rows.
async fn list_payload(app: &TestApp, to: Option<&str>) {
    let p = preview(
        app,
        json!({
            "type": "LIST",
            "header": "Menu",
            "body": "Hello {{ name }}, pick one",
            "footer": "Thanks",
            "buttonText": "See options",
            "sections": [
                { "title": "Food", "rows": [
                    { "id": "pizza", "title": "Pizza", "description": "With {{ topping }}" },
                    { "id": "salad", "title": "Salad" }
                ]},
                { "title": "Drinks", "rows": [ { "id": "tea", "title": "Tea" } ] }
            ]
        }),
        json!({ "name": "Bo", "topping": "olives" }),
        to,
    )
    .await;
    assert_eq!(
        p["payload"],
        with_to(
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "type": "interactive",
                "interactive": {
                    "type": "list",
                    "header": { "type": "text", "text": "Menu" },
                    "body": { "text": "Hello Bo, pick one" },
                    "footer": { "text": "Thanks" },
                    "action": {
                        "button": "See options",
                        "sections": [
                            { "title": "Food", "rows": [
                                { "id": "pizza", "title": "Pizza", "description": "With olives" },
                                { "id": "salad", "title": "Salad" }
                            ]},
                            { "title": "Drinks", "rows": [ { "id": "tea", "title": "Tea" } ] }
                        ]
                    }
                }
            }),
            to
        )
    );
    assert_eq!(p["violations"], json!([]));
}

/// Image by link (the link may itself be a variable).
async fn image_link_payload(app: &TestApp, to: Option<&str>) {
    let p = preview(
        app,
        json!({ "type": "MEDIA", "body": "{{ product }} for {{ price }}",
                "media": { "link": "{{ url }}" } }),
        json!({ "product": "Mug", "price": "$5", "url": "https://cdn.example.com/mug.jpg" }),
        to,
    )
    .await;
    assert_eq!(
        p["payload"],
        with_to(
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "type": "image",
                "image": { "link": "https://cdn.example.com/mug.jpg", "caption": "Mug for $5" }
            }),
            to
        )
    );
    assert_eq!(p["variables"], json!(["product", "price", "url"]));
}

/// Image by uploaded media id, no caption variables.
async fn image_id_payload(app: &TestApp, to: Option<&str>) {
    let p = preview(
        app,
        json!({ "type": "MEDIA", "body": "Our new mug",
                "media": { "type": "image", "id": "1234567890" } }),
        json!({}),
        to,
    )
    .await;
    assert_eq!(
        p["payload"],
        with_to(
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "type": "image",
                "image": { "id": "1234567890", "caption": "Our new mug" }
            }),
            to
        )
    );
    assert_eq!(p["variables"], json!([]));
}

async fn missing_variables_are_all_named(db: Db) {
    let app = TestApp::spawn(db).await;
    let (code, body) = app
        .gql_err(
            None,
            PREVIEW,
            json!({
                "t": { "type": "BUTTONS", "header": "{{ h }}", "body": "{{ a }} and {{ b }} and {{ c }}",
                       "buttons": [{ "id": "x", "title": "{{ d }}" }] },
                "vars": { "b": "given", "c": null }
            }),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{body:#}");
    let err = &body["errors"][0];
    assert_eq!(err["extensions"]["field"], "variables");
    assert_eq!(
        err["message"], "missing template variables: h, a, c, d",
        "{body:#}"
    );
    let fields: Vec<&str> = err["extensions"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["variables"; 4]);
    let messages: Vec<&str> = err["extensions"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["message"].as_str().unwrap())
        .collect();
    for name in ["h", "a", "c", "d"] {
        assert!(
            messages.iter().any(|m| m.contains(&format!("\"{name}\""))),
            "{name} missing from {messages:?}"
        );
    }

    // Variables must be an object.
    let (code, body) = app
        .gql_err(
            None,
            PREVIEW,
            json!({ "t": { "type": "TEXT", "body": "x" }, "vars": [1, 2] }),
        )
        .await;
    assert_eq!(code, "VALIDATION");
    assert_eq!(body["errors"][0]["extensions"]["field"], "variables");
}

async fn stored_template_preview(db: Db) {
    let app = TestApp::spawn(db).await;
    let data = app
        .gql_ok(
            None,
            r#"{ template(name: "order_confirmation") { id } }"#,
            json!({}),
        )
        .await;
    let id = data["template"]["id"].as_str().unwrap().to_owned();
    let data = app
        .gql_ok(
            None,
            r#"mutation($id: ID!, $vars: JSON) {
                 previewTemplate(templateId: $id, variables: $vars, to: "15551234567") { text payload variables violations { field } }
               }"#,
            json!({ "id": id, "vars": { "customer_name": "Ann", "order_id": "A-17", "total": "$42.00" } }),
        )
        .await;
    let p = &data["previewTemplate"];
    assert_eq!(
        p["payload"],
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "15551234567",
            "type": "interactive",
            "interactive": {
                "type": "button",
                "header": { "type": "text", "text": "Order A-17" },
                "body": { "text": "Thanks Ann! Your order A-17 comes to $42.00. Shall we confirm it?" },
                "footer": { "text": "Reply within 24 hours" },
                "action": { "buttons": [
                    { "type": "reply", "reply": { "id": "confirm_order", "title": "Confirm" } },
                    { "type": "reply", "reply": { "id": "change_order", "title": "Change order" } },
                    { "type": "reply", "reply": { "id": "cancel_order", "title": "Cancel" } }
                ]}
            }
        })
    );
    assert_eq!(
        p["text"],
        "Order A-17\n\nThanks Ann! Your order A-17 comes to $42.00. Shall we confirm it?\n\nReply within 24 hours"
    );
    assert_eq!(
        p["variables"],
        json!(["order_id", "customer_name", "total"])
    );
    assert_eq!(p["violations"], json!([]));

    // A stored template the caller cannot see is NOT_FOUND; giving both sources is refused.
    let draft = app
        .gql_ok(
            Some(&app.admin),
            r#"mutation { createTemplate(input: { name: "hidden", type: TEXT, body: "x", status: DRAFT }) { id } }"#,
            json!({}),
        )
        .await;
    let draft_id = draft["createTemplate"]["id"].as_str().unwrap();
    let (code, _) = app
        .gql_err(
            None,
            r#"mutation($id: ID!) { previewTemplate(templateId: $id) { text } }"#,
            json!({ "id": draft_id }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let data = app
        .gql_ok(
            Some(&app.admin),
            r#"mutation($id: ID!) { previewTemplate(templateId: $id) { text } }"#,
            json!({ "id": draft_id }),
        )
        .await;
    assert_eq!(data["previewTemplate"]["text"], "x");
    let (code, body) = app
        .gql_err(
            None,
            r#"mutation($id: ID!) { previewTemplate(templateId: $id, template: { type: TEXT, body: "x" }) { text } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code, "VALIDATION");
    assert_eq!(body["errors"][0]["extensions"]["field"], "templateId");
}

async fn rendered_limits_are_violations_not_errors(db: Db) {
    let app = TestApp::spawn(db).await;
    let long = "y".repeat(1100);
    let p = preview(
        &app,
        json!({ "type": "BUTTONS", "body": "Note: {{ note }}", "buttons": [{ "id": "ok", "title": "{{ label }}" }] }),
        json!({ "note": long, "label": "A label that is too long" }),
        None,
    )
    .await;
    let fields: Vec<&str> = p["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["body", "buttons[0].title"], "{p:#}");
    assert_eq!(
        p["violations"][0]["message"],
        "body must be at most 1024 characters"
    );
    // The payload is still rendered in full.
    assert_eq!(
        p["payload"]["interactive"]["body"]["text"],
        format!("Note: {long}")
    );
}

/// The payload's recipient is held to what sending holds it to: E.164, over GraphQL and REST;
/// `+` is accepted and the Cloud API's digits come out.
async fn preview_recipient_is_a_phone(db: Db) {
    let app = TestApp::spawn(db).await;
    let t = json!({ "type": "TEXT", "body": "Hi" });
    for bad in ["abc", "", "0781564004", "+1 555 1234", "1234567890123456"] {
        let (code, body) = app
            .gql_err(None, PREVIEW, json!({ "t": t, "vars": {}, "to": bad }))
            .await;
        assert_eq!(code, "VALIDATION", "{bad}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "to", "{body}");
        let (status, body) = app
            .rest(
                reqwest::Method::POST,
                "/api/templates/preview",
                None,
                Some(json!({ "template": { "type": "text", "body": "Hi" }, "to": bad })),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["field"], "to", "{body}");
    }
    let p = preview(&app, t, json!({}), Some("+263781564004")).await;
    assert_eq!(p["payload"]["to"], TO, "{p}");
}

both_dbs!(
    preview_recipient_is_a_phone,
    inline_payloads_match_the_cloud_api,
    missing_variables_are_all_named,
    stored_template_preview,
    rendered_limits_are_violations_not_errors,
);
