//! Every WhatsApp Cloud API limit is refused with VALIDATION naming the offending field, over
//! GraphQL (`extensions.field`) and REST (`field`), and nothing is written.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    both_dbs,
    common::{Db, TestApp, docs},
};

const CREATE: &str = docs::CREATE_TEMPLATE;

fn buttons(titles: &[&str]) -> Value {
    Value::Array(
        titles
            .iter()
            .enumerate()
            .map(|(i, t)| json!({ "id": format!("b{i}"), "title": t }))
            .collect(),
    )
}

fn rows(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({ "id": format!("r{i}"), "title": format!("Row {i}") }))
            .collect(),
    )
}

fn list(sections: Value) -> Value {
    json!({ "type": "LIST", "body": "Pick", "buttonText": "Open", "sections": sections })
}

/// (what, the template content without a name, the expected field of every violation in order).
fn cases() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    let x = |n: usize| "x".repeat(n);
    let mut out = vec![];
    out.push((
        "4 buttons",
        json!({ "type": "BUTTONS", "body": "Pick", "buttons": buttons(&["A", "B", "C", "D"]) }),
        vec!["buttons"],
    ));
    out.push((
        "button title 21",
        json!({ "type": "BUTTONS", "body": "Pick", "buttons": buttons(&[&x(21), "B"]) }),
        vec!["buttons[0].title"],
    ));
    out.push((
        "duplicate titles",
        json!({ "type": "BUTTONS", "body": "Pick", "buttons": buttons(&["Yes", "yes"]) }),
        vec!["buttons[1].title"],
    ));
    out.push((
        "button id 257",
        json!({ "type": "BUTTONS", "body": "Pick", "buttons": [{ "id": x(257), "title": "Ok" }] }),
        vec!["buttons[0].id"],
    ));
    let eleven_sections: Vec<Value> = (0..11)
        .map(|i| json!({ "title": format!("S{i}"), "rows": [{ "id": format!("r{i}"), "title": "Row" }] }))
        .collect();
    out.push((
        "11 sections",
        list(json!(eleven_sections)),
        // 11 sections of one row each are also 11 rows.
        vec!["sections", "sections"],
    ));
    out.push((
        "11 rows",
        list(json!([{ "title": "All", "rows": rows(11) }])),
        vec!["sections"],
    ));
    out.push((
        "list buttonText 21",
        json!({ "type": "LIST", "body": "Pick", "buttonText": x(21), "sections": [{ "title": "S", "rows": rows(1) }] }),
        vec!["buttonText"],
    ));
    out.push((
        "row title 25",
        list(json!([{ "title": "S", "rows": [{ "id": "r", "title": x(25) }] }])),
        vec!["sections[0].rows[0].title"],
    ));
    out.push((
        "row description 73",
        list(
            json!([{ "title": "S", "rows": [{ "id": "r", "title": "Row", "description": x(73) }] }]),
        ),
        vec!["sections[0].rows[0].description"],
    ));
    out.push((
        "section title 25",
        list(json!([{ "title": x(25), "rows": rows(1) }])),
        vec!["sections[0].title"],
    ));
    out.push((
        "body 1025",
        json!({ "type": "TEXT", "body": x(1025) }),
        vec!["body"],
    ));
    out.push((
        "header 61",
        json!({ "type": "TEXT", "body": "b", "header": x(61) }),
        vec!["header"],
    ));
    out.push((
        "footer 61",
        json!({ "type": "TEXT", "body": "b", "footer": x(61) }),
        vec!["footer"],
    ));
    out.push((
        "media without media",
        json!({ "type": "MEDIA", "body": "caption" }),
        vec!["media"],
    ));
    out
}

/// The GraphQL input as the seed's REST body: lowercase type.
fn rest_body(name: &str, content: &Value) -> Value {
    let mut b = content.clone();
    b["name"] = json!(name);
    b["type"] = json!(content["type"].as_str().unwrap().to_lowercase());
    b
}

async fn count(app: &TestApp) -> u64 {
    let data = app.as_admin().gql_ok(docs::TEMPLATE_COUNT, json!({})).await;
    data["templates"]["totalCount"].as_u64().unwrap()
}

async fn every_limit_names_its_field(db: Db) {
    let app = TestApp::spawn(db).await;
    let before = count(&app).await;
    assert_eq!(before, 4);

    for (i, (what, content, fields)) in cases().into_iter().enumerate() {
        let name = format!("bad_{i}");

        // GraphQL.
        let mut input = content.clone();
        input["name"] = json!(name);
        let (code, body) = app
            .gql_err(Some(&app.admin), CREATE, json!({ "input": input }))
            .await;
        assert_eq!(code, "VALIDATION", "{what}: {body:#}");
        let ext = &body["errors"][0]["extensions"];
        assert_eq!(ext["field"], fields[0], "{what}: {body:#}");
        let got: Vec<&str> = ext["violations"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no violations in {body:#}"))
            .iter()
            .map(|v| v["field"].as_str().unwrap())
            .collect();
        assert_eq!(got, fields, "{what}: {body:#}");
        assert!(
            ext["violations"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body:#}"
        );
        assert!(body["data"].is_null(), "{what}: {body:#}");

        // REST.
        let (status, body) = app
            .rest(
                Method::POST,
                "/api/templates",
                Some(&app.admin),
                Some(rest_body(&name, &content)),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["success"], false, "{what}: {body}");
        assert_eq!(body["code"], "VALIDATION", "{what}: {body}");
        assert_eq!(body["field"], fields[0], "{what}: {body}");
        let got: Vec<&str> = body["details"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no details in {body}"))
            .iter()
            .map(|v| v["field"].as_str().unwrap())
            .collect();
        assert_eq!(got, fields, "{what}: {body}");
    }

    assert_eq!(count(&app).await, before, "a refused create wrote a row");

    // An update to an invalid shape is refused too and leaves the template as it was.
    let data = app
        .gql_ok(
            Some(&app.admin),
            r#"{ template(name: "order_confirmation") { id version } }"#,
            json!({}),
        )
        .await;
    let id = data["template"]["id"].as_str().unwrap().to_owned();
    let (code, body) = app
        .gql_err(
            Some(&app.admin),
            r#"mutation($id: ID!, $footer: String) { updateTemplate(id: $id, input: { footer: $footer }) { id } }"#,
            json!({ "id": id, "footer": "f".repeat(61) }),
        )
        .await;
    assert_eq!(code, "VALIDATION");
    assert_eq!(body["errors"][0]["extensions"]["field"], "footer");
    let data = app
        .gql_ok(
            Some(&app.admin),
            r#"query($id: ID!) { template(id: $id) { version footer } templateVersions(templateId: $id) { id } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(data["template"]["version"], 1);
    assert_eq!(data["template"]["footer"], "Reply within 24 hours");
    assert_eq!(data["templateVersions"], json!([]));
}

async fn several_violations_are_all_listed(db: Db) {
    let app = TestApp::spawn(db).await;
    let (code, body) = app
        .gql_err(
            Some(&app.admin),
            CREATE,
            json!({ "input": {
                "name": "many", "type": "BUTTONS", "body": "x".repeat(1025), "header": "h".repeat(61),
                "buttons": [
                    { "id": "a", "title": "t".repeat(21) },
                    { "id": "a", "title": "Same" },
                    { "id": "c", "title": "same" },
                    { "id": "d", "title": "Four" }
                ]
            }}),
        )
        .await;
    assert_eq!(code, "VALIDATION");
    let ext = &body["errors"][0]["extensions"];
    assert_eq!(ext["field"], "body");
    let fields: Vec<&str> = ext["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec![
            "body",
            "header",
            "buttons",
            "buttons[0].title",
            "buttons[1].id",
            "buttons[2].title",
        ],
        "{body:#}"
    );
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("(and 5 more)"), "{message}");
    assert_eq!(count(&app).await, 4);
}

async fn bad_ids_and_page_sizes(db: Db) {
    let app = TestApp::spawn(db).await;
    let admin = Some(app.admin.as_str());
    for query in [
        r#"{ template(id: "nope") { id } }"#,
        r#"mutation { updateTemplate(id: "nope", input: { body: "x" }) { id } }"#,
        r#"mutation { deleteTemplate(id: "nope") { id } }"#,
        r#"mutation { setTemplateStatus(id: "nope", status: DRAFT) { id } }"#,
    ] {
        let (code, body) = app.gql_err(admin, query, json!({})).await;
        assert_eq!(code, "VALIDATION", "{query}: {body:#}");
        assert_eq!(
            body["errors"][0]["extensions"]["field"], "id",
            "{query}: {body:#}"
        );
    }
    let (code, body) = app
        .gql_err(
            admin,
            r#"{ templateVersions(templateId: "nope") { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "VALIDATION");
    assert_eq!(body["errors"][0]["extensions"]["field"], "templateId");

    for method in [Method::PUT, Method::DELETE] {
        let (status, body) = app
            .rest(
                method,
                "/api/templates/nope",
                admin,
                Some(json!({ "body": "x" })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["code"], "VALIDATION", "{body}");
        assert_eq!(body["field"], "id", "{body}");
    }

    // Page sizes run from 1 to 100 inclusive, for every connection.
    for (field, doc) in [
        (
            "templates",
            "query($first: Int) { templates(first: $first) { totalCount edges { cursor } } }",
        ),
        (
            "auditLogs",
            "query($first: Int) { auditLogs(first: $first) { totalCount edges { cursor } } }",
        ),
    ] {
        for first in [0, -1, 101] {
            let (code, body) = app.gql_err(admin, doc, json!({ "first": first })).await;
            assert_eq!(code, "VALIDATION", "{field}(first: {first}): {body:#}");
            assert_eq!(
                body["errors"][0]["extensions"]["field"], "first",
                "{body:#}"
            );
        }
        // Four seeded rows of each.
        for (first, edges) in [(1, 1), (100, 4)] {
            let data = app.gql_ok(admin, doc, json!({ "first": first })).await;
            assert_eq!(
                data[field]["totalCount"], 4,
                "{field}(first: {first}): {data}"
            );
            let got = data[field]["edges"].as_array().unwrap().len();
            assert_eq!(got, edges, "{field}(first: {first}): {data}");
        }
    }
}

/// NUL is refused alike on SQLite (which would store it) and PostgreSQL (which cannot), in every
/// way text comes in, naming the field; a backslash followed by `u0000` is ordinary text.
async fn nul_is_refused_alike_on_every_backend(db: Db) {
    let app = TestApp::spawn(db).await;
    let before = count(&app).await;
    let admin = Some(app.admin.as_str());
    let text = json!({ "name": "nul", "type": "text", "body": "a\u{0}b" });
    let (status, body) = app
        .rest(Method::POST, "/api/templates", admin, Some(text))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["code"], "VALIDATION", "{body:#}");
    assert_eq!(body["field"], "body", "{body:#}");
    let nested = json!({ "name": "nul", "type": "buttons", "body": "b",
        "buttons": [{ "id": "a", "title": "ok" }, { "id": "b", "title": "x\u{0}" }] });
    let (status, body) = app
        .rest(Method::POST, "/api/templates", admin, Some(nested))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["field"], "buttons[1].title", "{body:#}");
    // GraphQL: in a variable, and inline in the document.
    let (code, body) = app
        .gql_err(
            admin,
            CREATE,
            json!({ "input": { "name": "nul", "type": "TEXT", "body": "a\u{0}" } }),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{body:#}");
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "variables.input.body",
        "{body:#}"
    );
    let (code, body) = app
        .gql_err(
            admin,
            r#"mutation { createTemplate(input: { name: "nul", type: TEXT, body: "a\u0000" }) { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{body:#}");
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "query",
        "{body:#}"
    );
    // A URL's query string and path.
    let (status, body) = app
        .rest(Method::GET, "/api/templates?search=a%00", admin, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["field"], "query", "{body:#}");
    let (status, body) = app
        .rest(Method::GET, "/api/templates/a%00b", admin, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["field"], "path", "{body:#}");
    assert_eq!(count(&app).await, before);
    // The six characters `\u0000` are text, stored and read back as sent.
    let literal = json!({ "name": "literal", "type": "text", "body": "a\\u0000b" });
    let (status, body) = app
        .rest(Method::POST, "/api/templates", admin, Some(literal))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body:#}");
    assert_eq!(body["template"]["body"], "a\\u0000b", "{body:#}");
    assert_eq!(count(&app).await, before + 1);
}

/// A name is what a person picks from a list: characters that hide or reorder it are refused,
/// so two names that look alike are one name.
async fn names_that_hide_are_refused(db: Db) {
    let app = TestApp::spawn(db).await;
    let before = count(&app).await;
    let admin = Some(app.admin.as_str());
    for name in [
        "dup\u{200b}",
        "\u{feff}dup",
        "\u{202e}evil",
        "a\nb",
        "a\u{7}b",
        "d\u{00ad}up",
        "dup\u{2066}",
    ] {
        let (code, body) = app
            .gql_err(
                admin,
                CREATE,
                json!({ "input": { "name": name, "type": "TEXT", "body": "b" } }),
            )
            .await;
        assert_eq!(code, "VALIDATION", "{name:?}: {body:#}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "name", "{body:#}");
        let (status, body) = app
            .rest(
                Method::POST,
                "/api/templates",
                admin,
                Some(json!({ "name": name, "type": "text", "body": "b" })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body:#}");
        assert_eq!(body["field"], "name", "{body:#}");
    }
    assert_eq!(count(&app).await, before);
    // Letters of any script are names; a renamed template is held to the same rule.
    let t = app
        .as_admin()
        .create_template(json!({ "name": "Café 漢字 ✓", "type": "TEXT", "body": "b" }))
        .await;
    let (code, _) = app
        .gql_err(
            admin,
            "mutation($id: ID!) { updateTemplate(id: $id, input: { name: \"x\\u200by\" }) { id } }",
            json!({ "id": t["id"] }),
        )
        .await;
    assert_eq!(code, "VALIDATION");
    // Spellings that look alike are one name: a composed and a decomposed accent, a no-break
    // and an ordinary space, a double and a single space. Stored in the composed form, and
    // found under any of the spellings.
    for (first, second, stored) in [
        ("caf\u{e9}_x", "cafe\u{301}_x", "caf\u{e9}_x"),
        ("my promo", "my\u{a0}promo", "my promo"),
        ("two  spaces", "two\u{2009}spaces", "two spaces"),
    ] {
        let t = app
            .as_admin()
            .create_template(json!({ "name": first, "type": "TEXT", "body": "b" }))
            .await;
        assert_eq!(t["name"], stored, "{first:?}");
        let (code, body) = app
            .gql_err(
                admin,
                CREATE,
                json!({ "input": { "name": second, "type": "TEXT", "body": "b" } }),
            )
            .await;
        assert_eq!(code, "CONFLICT", "{second:?}: {body:#}");
        let found = app
            .gql_ok(
                admin,
                "query($n: String) { template(name: $n) { id } }",
                json!({ "n": second }),
            )
            .await;
        assert_eq!(found["template"]["id"], t["id"], "{second:?}");
    }
}

/// A `search` longer than 200 characters is VALIDATION on `search`, alike on both databases
/// (SQLite refused a LIKE pattern past 50,000 bytes with an internal error); 200 still runs.
async fn long_searches_are_refused_alike_on_every_backend(db: Db) {
    let app = TestApp::spawn(db).await;
    for len in [201, 60_000] {
        let long = "a".repeat(len);
        let (status, body) = app
            .rest(
                Method::GET,
                &format!("/api/templates?search={long}"),
                None,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{len}: {body}");
        assert_eq!(body["code"], "VALIDATION", "{body}");
        assert_eq!(body["field"], "search", "{body}");
        let (code, _) = app
            .gql_err(
                None,
                "query($s: String) { templates(search: $s) { totalCount } }",
                json!({ "s": long }),
            )
            .await;
        assert_eq!(code, "VALIDATION", "{len}");
    }
    let (status, body) = app
        .rest(
            Method::GET,
            &format!("/api/templates?search={}", "a".repeat(200)),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A query string that does not decode to UTF-8 is refused, not read with U+FFFD in it.
    for bad in ["search=%ff", "search=caf%e9", "type=text&search=%c3"] {
        let (status, body) = app
            .rest(Method::GET, &format!("/api/templates?{bad}"), None, None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["field"], "query", "{body}");
    }
    let (status, body) = app
        .rest(Method::GET, "/api/templates?search=caf%C3%A9", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A search typed in decomposed form (`e` and a combining accent, as macOS may send it) finds
/// what the composed form finds: names are stored composed. And a name that looks like an id is
/// read by name over REST when no template has that id, as GraphQL's `template(name:)` reads it.
async fn searches_compose_and_id_like_names_are_found(db: Db) {
    let app = TestApp::spawn(db).await;
    let m = app.merchant("m-nfc");
    for name in ["caf\u{e9}_menu", "11111111-2222-3333-4444-555555555555"] {
        let (status, body) = app
            .rest(
                Method::POST,
                "/api/templates",
                Some(&m),
                Some(json!({ "name": name, "type": "text", "body": "b" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for search in ["caf%C3%A9", "cafe%CC%81"] {
        let (status, body) = app
            .rest(
                Method::GET,
                &format!("/api/templates?search={search}"),
                Some(&m),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["count"], 1, "{search}: {body}");
    }
    let (status, body) = app
        .rest(
            Method::GET,
            "/api/templates/11111111-2222-3333-4444-555555555555",
            Some(&m),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["template"]["name"],
        "11111111-2222-3333-4444-555555555555"
    );
    let (status, _) = app
        .rest(
            Method::GET,
            "/api/templates/11111111-2222-3333-4444-666666666666",
            Some(&m),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Timestamps read back alike on both databases: to the microsecond (SQLite kept the
/// nanoseconds it was given, PostgreSQL keeps microseconds).
async fn timestamps_have_one_precision_on_every_backend(db: Db) {
    let app = TestApp::spawn(db).await;
    let m = app.merchant("m-ts");
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/templates",
            Some(&m),
            Some(json!({ "name": "ts", "type": "text", "body": "b" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for field in ["created_at", "updated_at"] {
        let at = body["template"][field].as_str().unwrap();
        let fraction = at
            .split('.')
            .nth(1)
            .map(|f| f.trim_end_matches(|c: char| !c.is_ascii_digit()).len())
            .unwrap_or(0);
        assert!(fraction <= 6, "{field}: {at}");
    }
}

both_dbs!(
    long_searches_are_refused_alike_on_every_backend,
    timestamps_have_one_precision_on_every_backend,
    searches_compose_and_id_like_names_are_found,
    every_limit_names_its_field,
    names_that_hide_are_refused,
    nul_is_refused_alike_on_every_backend,
    several_violations_are_all_listed,
    bad_ids_and_page_sizes,
);
