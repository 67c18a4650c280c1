//! Template CRUD, versions and audit rows, on both databases.

use serde_json::json;

use crate::{
    both_dbs,
    common::{Db, TestApp},
};

const CREATE: &str = r#"mutation($input: CreateTemplateInput!) {
  createTemplate(input: $input) { id name type body version status variables merchantId buttons { id title } }
}"#;

async fn crud_versions_and_audit(db: Db) {
    let app = TestApp::spawn(db).await;
    let admin = Some(app.admin.as_str());

    // Seeded defaults are there.
    let data = app
        .gql_ok(
            None,
            "{ templates { totalCount edges { node { name } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["templates"]["totalCount"], 4, "{data}");

    let created = app
        .gql_ok(
            admin,
            CREATE,
            json!({ "input": {
                "name": "promo", "type": "BUTTONS", "body": "Hi {{ name }}, {{ deal }} today",
                "buttons": [{ "id": "buy", "title": "Buy" }, { "id": "later", "title": "Later" }]
            }}),
        )
        .await;
    let t = &created["createTemplate"];
    assert_eq!(t["version"], 1);
    assert_eq!(t["status"], "ACTIVE");
    assert_eq!(t["variables"], json!(["name", "deal"]));
    let id = t["id"].as_str().unwrap().to_owned();

    let updated = app
        .gql_ok(
            admin,
            r#"mutation($id: ID!) { updateTemplate(id: $id, input: { body: "Hello {{ name }}" }) { version body variables } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(updated["updateTemplate"]["version"], 2);
    assert_eq!(updated["updateTemplate"]["variables"], json!(["name"]));

    let versions = app
        .gql_ok(
            admin,
            r#"query($id: ID!) { templateVersions(templateId: $id) { version content } }"#,
            json!({ "id": id }),
        )
        .await;
    let v = &versions["templateVersions"];
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["version"], 1);
    assert_eq!(
        v[0]["content"]["content"]["body"],
        "Hi {{ name }}, {{ deal }} today"
    );

    let status = app
        .gql_ok(
            admin,
            r#"mutation($id: ID!) { setTemplateStatus(id: $id, status: ARCHIVED) { status version } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        status["setTemplateStatus"],
        json!({ "status": "ARCHIVED", "version": 2 })
    );

    let (code, _) = app
        .gql_err(
            admin,
            CREATE,
            json!({ "input": { "name": "promo", "type": "TEXT", "body": "dup" } }),
        )
        .await;
    assert_eq!(code, "CONFLICT");

    app.gql_ok(
        admin,
        r#"mutation($id: ID!) { deleteTemplate(id: $id) { id } }"#,
        json!({ "id": id }),
    )
    .await;
    let (code, _) = app
        .gql_err(
            admin,
            r#"query($id: ID!) { template(id: $id) { id } }"#,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");

    let audit = app
        .gql_ok(
            admin,
            r#"query($id: String) { auditLogs(filter: { targetId: $id }) { totalCount edges { node { action actorId actorRole ip beforeState afterState } } } }"#,
            json!({ "id": id }),
        )
        .await;
    let actions: Vec<&str> = audit["auditLogs"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        vec![
            "template.delete",
            "template.set_status",
            "template.update",
            "template.create"
        ]
    );
    let newest = &audit["auditLogs"]["edges"][0]["node"];
    assert_eq!(newest["actorId"], "admin-1");
    assert_eq!(newest["actorRole"], "admin");
    assert_eq!(newest["ip"], "127.0.0.1");
    assert_eq!(newest["beforeState"]["name"], "promo");
    assert!(newest["afterState"].is_null());
}

both_dbs!(crud_versions_and_audit);
