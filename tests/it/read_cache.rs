//! The template read cache (`src/templates/cache.rs`): reads after a committed write, through the
//! API, another instance or plain SQL, never see the cached past; callers of different visibility
//! never share a cached response.

use reqwest::Method;
use sea_orm::{ConnectionTrait, Database};
use serde_json::json;

use crate::{
    both_dbs,
    common::{Caller, Db, TestApp},
};

const GQL_LIST: &str = "{ templates(first: 100) { nodes { name body status merchantId } } }";

/// `name=body` of every template `caller` lists over REST (`path`) and over GraphQL, which must
/// agree.
async fn listed(caller: &Caller<'_>, path: &str) -> Vec<String> {
    let (status, body) = caller.rest(Method::GET, path, None).await;
    assert!(status.is_success(), "{status}: {body}");
    let rest: Vec<String> = body["templates"]
        .as_array()
        .unwrap_or_else(|| panic!("no templates: {body}"))
        .iter()
        .map(|t| {
            format!(
                "{}={}",
                t["name"].as_str().unwrap(),
                t["body"].as_str().unwrap()
            )
        })
        .collect();
    if path == "/api/templates" {
        let data = caller.gql_ok(GQL_LIST, json!({})).await;
        let gql: Vec<String> = data["templates"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}={}",
                    t["name"].as_str().unwrap(),
                    t["body"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(rest, gql, "REST and GraphQL disagree");
    }
    rest
}

fn names(list: &[String]) -> Vec<&str> {
    list.iter().map(|l| l.split('=').next().unwrap()).collect()
}

/// Reads twice and checks that the second read was answered from the cache: over REST, and
/// over GraphQL too for the full list.
async fn listed_twice(app: &TestApp, caller: &Caller<'_>, path: &str) -> Vec<String> {
    let cache = &app.server.state.template_cache;
    let first = listed(caller, path).await;
    let hits = cache.hits();
    let second = listed(caller, path).await;
    assert_eq!(first, second);
    let reads = if path == "/api/templates" { 2 } else { 1 };
    assert_eq!(
        cache.hits() - hits,
        reads,
        "the second read of {path} was not answered from the cache"
    );
    second
}

async fn api_writes_invalidate(db: Db) {
    let app = TestApp::spawn(db).await;
    let anon = app.anonymous();
    let admin = app.as_admin();
    let active = "/api/templates?status=active";
    let before = listed_twice(&app, &anon, "/api/templates").await;
    assert!(!names(&before).contains(&"zz_cached"), "{before:?}");
    listed_twice(&app, &anon, active).await;

    // Create.
    let (status, body) = admin
        .rest(
            Method::POST,
            "/api/templates",
            Some(json!({ "name": "zz_cached", "type": "text", "body": "one" })),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let id = body["template"]["id"].as_str().unwrap().to_owned();
    assert!(
        listed(&anon, "/api/templates")
            .await
            .contains(&"zz_cached=one".to_owned())
    );
    assert!(
        listed_twice(&app, &anon, active)
            .await
            .contains(&"zz_cached=one".to_owned())
    );

    // Update the content (REST) and then the status (GraphQL).
    let path = format!("/api/templates/{id}");
    let (status, body) = admin
        .rest(Method::PUT, &path, Some(json!({ "body": "two" })))
        .await;
    assert!(status.is_success(), "{body}");
    assert!(
        listed_twice(&app, &anon, active)
            .await
            .contains(&"zz_cached=two".to_owned())
    );
    admin
        .gql_ok(
            crate::common::docs::SET_TEMPLATE_STATUS,
            json!({ "id": id, "status": "DRAFT" }),
        )
        .await;
    assert!(!names(&listed_twice(&app, &anon, "/api/templates").await).contains(&"zz_cached"));
    assert!(!names(&listed(&anon, active).await).contains(&"zz_cached"));
    // The admin still sees the draft; then it is deleted.
    assert!(names(&listed_twice(&app, &admin, "/api/templates").await).contains(&"zz_cached"));
    let (status, body) = admin.rest(Method::DELETE, &path, None).await;
    assert!(status.is_success(), "{body}");
    assert!(!names(&listed(&admin, "/api/templates").await).contains(&"zz_cached"));
    assert_eq!(listed(&anon, "/api/templates").await, before);

    // One template by id over GraphQL is cached too, and a failed read is not.
    let cache = &app.server.state.template_cache;
    let single = admin.text_template("zz_single", "ACTIVE").await;
    assert_eq!(
        anon.template(&single).await.unwrap()["body"],
        "zz_single body"
    );
    let hits = cache.hits();
    assert_eq!(
        anon.template(&single).await.unwrap()["body"],
        "zz_single body"
    );
    assert_eq!(cache.hits() - hits, 1, "a read by id was not cached");
    admin
        .gql_ok(
            crate::common::docs::UPDATE_TEMPLATE_BODY,
            json!({ "id": single, "body": "changed" }),
        )
        .await;
    assert_eq!(anon.template(&single).await.unwrap()["body"], "changed");
    admin
        .gql_ok(
            crate::common::docs::SET_TEMPLATE_STATUS,
            json!({ "id": single, "status": "DRAFT" }),
        )
        .await;
    assert_eq!(anon.template(&single).await, Err("NOT_FOUND".to_owned()));
    let hits = cache.hits();
    assert_eq!(anon.template(&single).await, Err("NOT_FOUND".to_owned()));
    assert_eq!(
        cache.hits(),
        hits,
        "a failed read was answered from the cache"
    );
    admin
        .gql_ok(
            crate::common::docs::SET_TEMPLATE_STATUS,
            json!({ "id": single, "status": "ACTIVE" }),
        )
        .await;
    assert_eq!(anon.template(&single).await.unwrap()["body"], "changed");
}

async fn reader_classes_never_share(db: Db) {
    let app = TestApp::spawn(db).await;
    let (a, b) = (app.as_merchant("m-a"), app.as_merchant("m-b"));
    a.text_template("a_draft", "DRAFT").await;
    b.text_template("b_draft", "DRAFT").await;
    let drafts = |list: &[String]| {
        let mut d: Vec<String> = names(list)
            .into_iter()
            .filter(|n| n.ends_with("_draft"))
            .map(str::to_owned)
            .collect();
        d.sort();
        d
    };
    // Each order fills the cache with one class first; the others must not get its response.
    for order in [
        ["admin", "m-a", "m-b", "anon", "service"],
        ["anon", "m-b", "service", "m-a", "admin"],
    ] {
        for who in order {
            let caller = match who {
                "admin" => app.as_admin(),
                "service" => app.as_service(),
                "anon" => app.anonymous(),
                m => app.as_merchant(m),
            };
            let want: &[&str] = match who {
                "admin" | "service" => &["a_draft", "b_draft"],
                "m-a" => &["a_draft"],
                "m-b" => &["b_draft"],
                _ => &[],
            };
            let got = listed_twice(&app, &caller, "/api/templates").await;
            assert_eq!(drafts(&got), want, "{who} in {order:?}");
            // The merchant's own name namespace decides `template(name)`.
            let (_, body) = caller
                .gql(
                    crate::common::docs::TEMPLATE_BY_NAME,
                    json!({ "name": "a_draft" }),
                )
                .await;
            // (admin and service look names up among platform templates).
            let found = body["data"]["template"]["name"] == "a_draft";
            assert_eq!(found, who == "m-a", "{who}: {body}");
        }
    }
}

/// A second connection to the same database: another instance, or a person in a SQL shell.
async fn outside(app: &TestApp) -> sea_orm::DatabaseConnection {
    Database::connect(app.server.state.config.database_url.as_str())
        .await
        .expect("a second connection")
}

async fn sql_writes_are_seen(db: Db) {
    let app = TestApp::spawn(db).await;
    let anon = app.anonymous();
    let sql = outside(&app).await;
    let before = listed_twice(&app, &anon, "/api/templates").await;
    assert!(
        before.iter().any(|l| l.starts_with("welcome=")),
        "{before:?}"
    );

    sql.execute_unprepared(
        "UPDATE message_templates SET body = 'edited in SQL' WHERE name = 'welcome'",
    )
    .await
    .unwrap();
    let after = listed_twice(&app, &anon, "/api/templates").await;
    assert!(
        after.contains(&"welcome=edited in SQL".to_owned()),
        "{after:?}"
    );

    sql.execute_unprepared("DELETE FROM message_templates WHERE name = 'catalog'")
        .await
        .unwrap();
    assert!(!names(&listed_twice(&app, &anon, "/api/templates").await).contains(&"catalog"));

    // Another instance on the same database writes through its API; this one reads.
    let mut config = (*app.server.state.config).clone();
    config.run_workers = false;
    config.port = 0;
    let other = smartbot::spawn(config).await.expect("a second instance");
    let res = app
        .client
        .post(other.url("/api/templates"))
        .bearer_auth(&app.admin)
        .json(&json!({ "name": "from_b", "type": "text", "body": "b" }))
        .send()
        .await
        .expect("request");
    assert!(res.status().is_success(), "{:?}", res.text().await);
    assert!(
        listed(&anon, "/api/templates")
            .await
            .contains(&"from_b=b".to_owned())
    );
    other.stop().await.unwrap();

    // The cache really answers: a change that bypasses the counter is not seen until the
    // counter moves. (This is what the triggers prevent.)
    sql.execute_unprepared(bypass_counter(db)).await.unwrap();
    let cached = listed_twice(&app, &anon, "/api/templates").await;
    sql.execute_unprepared("UPDATE message_templates SET body = 'unseen' WHERE name = 'welcome'")
        .await
        .unwrap();
    assert_eq!(listed(&anon, "/api/templates").await, cached);
    sql.execute_unprepared(
        "UPDATE cache_generations SET generation = generation + 1 WHERE name = 'templates'",
    )
    .await
    .unwrap();
    assert!(
        listed(&anon, "/api/templates")
            .await
            .contains(&"welcome=unseen".to_owned())
    );
}

/// Turns the counter's UPDATE trigger off, so that a plain UPDATE bypasses it.
fn bypass_counter(db: Db) -> &'static str {
    match db {
        Db::Sqlite => "DROP TRIGGER message_templates_generation_update",
        Db::Postgres => {
            "ALTER TABLE message_templates DISABLE TRIGGER message_templates_generation"
        }
    }
}

/// TEMPLATE_CACHE_MB=0: nothing is stored, every read is the database's.
async fn off_means_off(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.template_cache_bytes = 0).await;
    let anon = app.anonymous();
    listed(&anon, "/api/templates").await;
    listed(&anon, "/api/templates").await;
    assert_eq!(app.server.state.template_cache.stats(), (0, 0));
    let sql = outside(&app).await;
    sql.execute_unprepared(bypass_counter(db)).await.unwrap();
    sql.execute_unprepared("UPDATE message_templates SET body = 'plain' WHERE name = 'welcome'")
        .await
        .unwrap();
    assert!(
        listed(&anon, "/api/templates")
            .await
            .contains(&"welcome=plain".to_owned())
    );
}

both_dbs!(
    api_writes_invalidate,
    reader_classes_never_share,
    sql_writes_are_seen,
    off_means_off
);
