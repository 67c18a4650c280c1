//! Cursor pagination and filters for `templates` and `auditLogs`, on both databases.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{
    both_dbs,
    common::{Db, TestApp, docs},
};

const PAGE: &str = r#"query($search: String, $type: TemplateType, $status: TemplateStatus, $first: Int, $after: String) {
  templates(search: $search, type: $type, status: $status, first: $first, after: $after) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage endCursor }
    edges { cursor node { id name type status } }
  }
}"#;

fn page_ids(data: &Value) -> Vec<String> {
    data["templates"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn page_names(data: &Value) -> Vec<String> {
    data["templates"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn templates_pages_and_filters(db: Db) {
    let app = TestApp::spawn(db).await;
    let admin = Some(app.admin.as_str());

    // Created out of order; each body mentions "Zebra" in some case, names do not.
    let specs = [
        ("pg_delta", "TEXT", "ACTIVE", "zebra crossing"),
        ("pg_alpha", "TEXT", "ACTIVE", "A ZEBRA"),
        ("pg_echo", "BUTTONS", "DRAFT", "Zebra time"),
        ("pg_charlie", "TEXT", "ARCHIVED", "zeBra"),
        ("pg_bravo", "BUTTONS", "ACTIVE", "my zebra_100%"),
    ];
    for (name, kind, status, body) in specs {
        let mut input = json!({ "name": name, "type": kind, "body": body, "status": status });
        if kind == "BUTTONS" {
            input["buttons"] = json!([{ "id": "ok", "title": "OK" }]);
        }
        app.as_admin().create_template(input).await;
    }

    // Walk the pages of two.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let data = app
            .gql_ok(
                admin,
                PAGE,
                json!({ "search": "ZEBRA", "first": 2, "after": after }),
            )
            .await;
        pages += 1;
        let conn = &data["templates"];
        assert_eq!(
            conn["totalCount"], 5,
            "totalCount counts every match: {data}"
        );
        assert_eq!(conn["pageInfo"]["hasPreviousPage"], after.is_some());
        let names = page_names(&data);
        let last_cursor = conn["edges"]
            .as_array()
            .unwrap()
            .last()
            .map(|e| e["cursor"].clone());
        assert_eq!(
            conn["pageInfo"]["endCursor"],
            last_cursor.unwrap_or(Value::Null)
        );
        seen.extend(names.clone());
        let has_next = conn["pageInfo"]["hasNextPage"].as_bool().unwrap();
        match pages {
            1 | 2 => {
                assert_eq!(names.len(), 2, "page {pages}: {data}");
                assert!(has_next, "page {pages}: {data}");
            }
            3 => {
                assert_eq!(names.len(), 1, "{data}");
                assert!(!has_next, "{data}");
            }
            _ => panic!("too many pages: {seen:?}"),
        }
        if !has_next {
            break;
        }
        after = Some(conn["pageInfo"]["endCursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen,
        vec!["pg_alpha", "pg_bravo", "pg_charlie", "pg_delta", "pg_echo"]
    );

    // Search is case-insensitive, matches the body, and treats % and _ literally.
    let data = app
        .gql_ok(admin, PAGE, json!({ "search": "zebra_100%" }))
        .await;
    assert_eq!(page_names(&data), vec!["pg_bravo"]);
    let data = app
        .gql_ok(admin, PAGE, json!({ "search": "PG_ECHO" }))
        .await;
    assert_eq!(page_names(&data), vec!["pg_echo"]);
    let data = app.gql_ok(admin, PAGE, json!({ "search": "%" })).await;
    assert_eq!(page_names(&data), vec!["pg_bravo"]);
    let data = app
        .gql_ok(admin, PAGE, json!({ "search": "giraffe" }))
        .await;
    assert_eq!(data["templates"]["totalCount"], 0);
    assert_eq!(data["templates"]["pageInfo"]["hasNextPage"], false);

    // Type and status filters, alone and combined with search.
    let data = app
        .gql_ok(admin, PAGE, json!({ "search": "zebra", "type": "BUTTONS" }))
        .await;
    assert_eq!(page_names(&data), vec!["pg_bravo", "pg_echo"]);
    let data = app
        .gql_ok(
            admin,
            PAGE,
            json!({ "search": "zebra", "status": "ACTIVE" }),
        )
        .await;
    assert_eq!(page_names(&data), vec!["pg_alpha", "pg_bravo", "pg_delta"]);
    let data = app
        .gql_ok(
            admin,
            PAGE,
            json!({ "type": "BUTTONS", "status": "ACTIVE" }),
        )
        .await;
    assert_eq!(page_names(&data), vec!["order_confirmation", "pg_bravo"]);
    assert_eq!(data["templates"]["totalCount"], 2);
    let data = app
        .gql_ok(admin, PAGE, json!({ "status": "ARCHIVED" }))
        .await;
    assert_eq!(page_names(&data), vec!["pg_charlie"]);

    // Anonymous callers page through the ACTIVE ones only.
    let data = app
        .gql_ok(None, PAGE, json!({ "search": "zebra", "first": 2 }))
        .await;
    assert_eq!(data["templates"]["totalCount"], 3);
    assert_eq!(page_names(&data), vec!["pg_alpha", "pg_bravo"]);
    assert_eq!(data["templates"]["pageInfo"]["hasNextPage"], true);

    // Garbage cursors are refused.
    for bad in ["not a cursor", "%%%", ""] {
        let (code, body) = app.gql_err(admin, PAGE, json!({ "after": bad })).await;
        assert_eq!(code, "VALIDATION", "{bad:?}: {body:#}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "after");
    }
}

const AUDIT: &str = r#"query($first: Int, $after: String) {
  auditLogs(first: $first, after: $after) {
    totalCount
    pageInfo { hasNextPage endCursor }
    edges { cursor node { id action targetId createdAt } }
  }
}"#;

async fn audit_log_pages(db: Db) {
    let app = TestApp::spawn(db).await;
    let admin = Some(app.admin.as_str());

    // 4 seeded creates + 3 creates + 2 updates = 9 rows.
    let mut ids = Vec::new();
    for name in ["a1", "a2", "a3"] {
        ids.push(app.as_admin().text_template(name, "ACTIVE").await);
    }
    for id in &ids[..2] {
        let vars = json!({ "id": id, "body": "y" });
        app.gql_ok(admin, docs::UPDATE_TEMPLATE_BODY, vars).await;
    }

    let all = app.gql_ok(admin, AUDIT, json!({ "first": 100 })).await;
    assert_eq!(all["auditLogs"]["totalCount"], 9);
    let all_ids: Vec<String> = all["auditLogs"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(all_ids.len(), 9);
    // Newest first.
    let newest = &all["auditLogs"]["edges"][0]["node"];
    assert_eq!(newest["action"], "template.update");
    assert_eq!(newest["targetId"], ids[1].as_str());
    let last = &all["auditLogs"]["edges"][8]["node"];
    assert_eq!(last["action"], "template.create");
    let times: Vec<&str> = all["auditLogs"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["createdAt"].as_str().unwrap())
        .collect();
    let parsed: Vec<chrono::DateTime<chrono::Utc>> =
        times.iter().map(|t| t.parse().unwrap()).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {times:?}"
    );

    // Pages of four: 4 + 4 + 1, the same rows in the same order, no duplicates.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let data = app
            .gql_ok(admin, AUDIT, json!({ "first": 4, "after": after }))
            .await;
        let conn = &data["auditLogs"];
        assert_eq!(conn["totalCount"], 9);
        let edges = conn["edges"].as_array().unwrap();
        sizes.push(edges.len());
        paged.extend(
            edges
                .iter()
                .map(|e| e["node"]["id"].as_str().unwrap().to_owned()),
        );
        if !conn["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        assert!(sizes.len() < 5, "runaway paging");
        after = Some(conn["pageInfo"]["endCursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(sizes, vec![4, 4, 1]);
    assert_eq!(paged, all_ids);
    assert_eq!(paged.iter().collect::<BTreeSet<_>>().len(), 9);

    // Cursors are typed: an audit cursor means nothing to `templates`, and vice versa.
    let audit_cursor = all["auditLogs"]["edges"][0]["cursor"].as_str().unwrap();
    let (code, body) = app
        .gql_err(
            admin,
            "query($after: String) { templates(after: $after) { totalCount } }",
            json!({ "after": audit_cursor }),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{body:#}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "after");
    let tpl = app
        .gql_ok(
            admin,
            "{ templates(first: 1) { edges { cursor } } }",
            json!({}),
        )
        .await;
    let (code, body) = app
        .gql_err(
            admin,
            AUDIT,
            json!({ "after": tpl["templates"]["edges"][0]["cursor"] }),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{body:#}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "after");
}

/// Names repeat across merchants and the platform: paging one at a time reaches every template
/// that one large page holds, each once.
async fn templates_sharing_a_name_are_all_paged(db: Db) {
    let app = TestApp::spawn(db).await;
    let dup = |merchant: Option<&str>| {
        let mut input = json!({ "name": "dup", "type": "TEXT", "body": "b", "status": "ACTIVE" });
        if let Some(m) = merchant {
            input["merchantId"] = json!(m);
        }
        input
    };
    app.as_merchant("ma").create_template(dup(None)).await;
    app.as_merchant("mb").create_template(dup(None)).await;
    app.as_admin().create_template(dup(None)).await;
    app.as_admin().create_template(dup(Some("mc"))).await;
    for caller in [Some(app.admin.clone()), Some(app.merchant("ma")), None] {
        let all = app
            .gql_ok(caller.as_deref(), PAGE, json!({ "first": 100 }))
            .await;
        let total = all["templates"]["totalCount"].as_u64().unwrap();
        assert_eq!(
            page_names(&all).iter().filter(|n| *n == "dup").count(),
            4,
            "{all}"
        );
        // By id: the four share a name, so names could not tell one repeated and one skipped.
        let mut want = page_ids(&all);
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let data = app
                .gql_ok(
                    caller.as_deref(),
                    PAGE,
                    json!({ "first": 1, "after": after }),
                )
                .await;
            got.extend(page_ids(&data));
            let info = &data["templates"]["pageInfo"];
            if info["hasNextPage"] != true {
                break;
            }
            after = info["endCursor"].as_str().map(str::to_owned);
            assert!(got.len() <= total as usize, "paging never ends: {got:?}");
        }
        want.sort();
        got.sort();
        let distinct: BTreeSet<_> = got.iter().collect();
        assert_eq!(distinct.len(), got.len(), "a template was paged twice");
        assert_eq!(got, want);
        assert_eq!(got.len() as u64, total);
    }
}

/// Search folds case by Unicode on both databases (SQLite's own lower() and LIKE fold ASCII
/// only: `Ωmega` found `ωmega` but not itself), in names and bodies, and takes every
/// character literally.
async fn search_folds_case_by_unicode(db: Db) {
    let app = TestApp::spawn(db).await;
    let admin = Some(app.admin.as_str());
    for (name, body) in [
        ("Ωmega", "first"),
        ("ωmega", "second"),
        ("CAFÉ", "third"),
        ("Café", "fourth"),
        ("café", "fifth"),
        ("school", "ÉCOLE ouverte"),
        ("dotted", "a.b (x)"),
        ("plain", "axb x"),
        // Folding rules differ between Rust and PostgreSQL (final sigma, dotted capital I):
        // a name's own text must still find it.
        ("ΟΔΟΣ", "greek"),
        ("İstanbul", "turkish"),
    ] {
        app.as_admin()
            .create_template(json!({ "name": name, "type": "TEXT", "body": body }))
            .await;
    }
    let found = |search: &str| {
        let app = &app;
        let search = search.to_owned();
        async move {
            let data = app
                .gql_ok(admin, PAGE, json!({ "search": search, "first": 100 }))
                .await;
            let mut names = page_names(&data);
            names.sort();
            assert_eq!(
                data["templates"]["totalCount"],
                names.len(),
                "{search}: count and page agree"
            );
            names
        }
    };
    assert_eq!(found("Ωmega").await, ["Ωmega", "ωmega"]);
    assert_eq!(found("ΩMEGA").await, ["Ωmega", "ωmega"]);
    assert_eq!(found("CAFÉ").await, ["CAFÉ", "Café", "café"]);
    assert_eq!(found("cAfÉ").await, ["CAFÉ", "Café", "café"]);
    assert_eq!(found("école").await, ["school"]);
    assert_eq!(found("a.b").await, ["dotted"], "a dot is a dot");
    assert_eq!(found("(x)").await, ["dotted"], "parentheses are text");
    assert!(found("(?").await.is_empty());
    for own in ["ΟΔΟΣ", "ΔΟΣ", "İstanbul"] {
        assert!(
            found(own).await.iter().any(|n| n.contains(own)),
            "{own} finds itself"
        );
    }
}

both_dbs!(
    templates_pages_and_filters,
    audit_log_pages,
    templates_sharing_a_name_are_all_paged,
    search_folds_case_by_unicode,
);
