//! A fuzz pass over the whole GraphQL schema and the REST endpoints: every query and mutation
//! field, called by each kind of caller with hostile arguments of the right types, must answer
//! with a typed error or data, never a 5xx and never INTERNAL. Runs on both databases, since
//! PostgreSQL enforces column widths that SQLite ignores.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    both_dbs,
    common::{Db, TestApp},
};

const INTROSPECT: &str = r#"{ __schema {
  queryType { name } mutationType { name }
  types { name kind
    fields { name args { name type { ...T } } type { ...T } }
    inputFields { name type { ...T } }
    enumValues { name } } } }
fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name } } } }"#;

/// A tiny deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn type_name(t: &Value) -> String {
    match t["kind"].as_str().unwrap() {
        "NON_NULL" => format!("{}!", type_name(&t["ofType"])),
        "LIST" => format!("[{}]", type_name(&t["ofType"])),
        _ => t["name"].as_str().unwrap().to_owned(),
    }
}

fn strings(rng: &mut Rng) -> Value {
    let long = "x".repeat(5000);
    let choices = [
        json!(""),
        json!(long),
        json!("../../etc/passwd"),
        json!("'; DROP TABLE message_templates; --"),
        json!("\u{0}\u{202e}é漢字🙂"),
        json!("{{!{{a}}"),
        json!("0195f0e1-7f00-7000-8000-000000000000"),
        json!("m".repeat(300)),
    ];
    rng.pick(&choices).clone()
}

/// A hostile value of type `t` (`types` is the introspected type list).
fn value(t: &Value, types: &[Value], rng: &mut Rng, depth: usize) -> Value {
    match t["kind"].as_str().unwrap() {
        "NON_NULL" => value(&t["ofType"], types, rng, depth),
        "LIST" => {
            let n = *rng.pick(&[0usize, 1, 3, 60]);
            Value::Array(
                (0..n)
                    .map(|_| value(&t["ofType"], types, rng, depth + 1))
                    .collect(),
            )
        }
        "ENUM" => {
            let def = types.iter().find(|d| d["name"] == t["name"]).unwrap();
            let vals = def["enumValues"].as_array().unwrap();
            rng.pick(vals)["name"].clone()
        }
        "INPUT_OBJECT" => {
            let def = types.iter().find(|d| d["name"] == t["name"]).unwrap();
            let mut obj = serde_json::Map::new();
            for f in def["inputFields"].as_array().unwrap() {
                if depth < 4 && (f["type"]["kind"] == "NON_NULL" || rng.next().is_multiple_of(2)) {
                    obj.insert(
                        f["name"].as_str().unwrap().into(),
                        value(&f["type"], types, rng, depth + 1),
                    );
                }
            }
            Value::Object(obj)
        }
        _ => match t["name"].as_str().unwrap() {
            "Int" => rng
                .pick(&[json!(-1), json!(0), json!(2147483647), json!(7)])
                .clone(),
            "Float" => rng.pick(&[json!(-1.5), json!(1e300)]).clone(),
            "Boolean" => json!(rng.next().is_multiple_of(2)),
            "DateTime" => rng
                .pick(&[json!("1970-01-01T00:00:00Z"), json!("9999-12-31T23:59:59Z")])
                .clone(),
            "JSON" => rng
                .pick(&[
                    json!({}),
                    json!({ "a": "x".repeat(40_000) }),
                    json!([1, "2", null]),
                    json!({ "link": "http://127.0.0.1/x", "a": { "b": { "c": [] } } }),
                ])
                .clone(),
            _ => strings(rng),
        },
    }
}

/// Arguments as text, long strings shortened, for failure messages.
fn short(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 40 => format!(
            "{:?}…({} bytes)",
            s.chars().take(20).collect::<String>(),
            s.len()
        ),
        Value::Array(a) => format!("[{}]", a.iter().map(short).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{k}: {}", short(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

async fn fuzz_graphql(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.run_workers = false).await;
    let schema = app.gql_ok(Some(&app.admin), INTROSPECT, json!({})).await;
    let types = schema["__schema"]["types"].as_array().unwrap().clone();
    let callers = [
        None,
        Some(app.admin.clone()),
        Some(app.merchant("m-fuzz")),
        Some(app.token(smartbot::auth::Role::Service, None)),
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut calls = 0;
    for (op, root) in [("query", "queryType"), ("mutation", "mutationType")] {
        let root = schema["__schema"][root]["name"].as_str().unwrap();
        let def = types.iter().find(|t| t["name"] == root).unwrap();
        for field in def["fields"].as_array().unwrap() {
            let args = field["args"].as_array().unwrap();
            if args
                .iter()
                .any(|a| type_name(&a["type"]).contains("Upload"))
            {
                continue; // multipart only; covered by the media tests
            }
            let ret = &field["type"];
            let leaf = |t: &Value| -> bool {
                let mut t = t;
                while t["ofType"].is_object() {
                    t = &t["ofType"];
                }
                matches!(t["kind"].as_str(), Some("SCALAR" | "ENUM"))
            };
            let selection = if leaf(ret) { "" } else { "{ __typename }" };
            for round in 0..6 {
                let mut decl = vec![];
                let mut pass = vec![];
                let mut vars = serde_json::Map::new();
                for (i, a) in args.iter().enumerate() {
                    let required = a["type"]["kind"] == "NON_NULL";
                    if !required && rng.next().is_multiple_of(3) {
                        continue;
                    }
                    decl.push(format!("$a{i}: {}", type_name(&a["type"])));
                    pass.push(format!("{}: $a{i}", a["name"].as_str().unwrap()));
                    vars.insert(format!("a{i}"), value(&a["type"], &types, &mut rng, 0));
                }
                let decl = if decl.is_empty() {
                    String::new()
                } else {
                    format!("({})", decl.join(", "))
                };
                let pass = if pass.is_empty() {
                    String::new()
                } else {
                    format!("({})", pass.join(", "))
                };
                let name = field["name"].as_str().unwrap();
                let doc = format!("{op}{decl} {{ {name}{pass} {selection} }}");
                let caller = &callers[round % callers.len()];
                let (status, body) = app
                    .gql(caller.as_deref(), &doc, Value::Object(vars.clone()))
                    .await;
                calls += 1;
                let shown = short(&Value::Object(vars));
                assert!(
                    status.as_u16() < 500,
                    "{status} for {doc} with {shown}: {body:#}"
                );
                for e in body["errors"].as_array().into_iter().flatten() {
                    assert_ne!(
                        e["extensions"]["code"], "INTERNAL",
                        "{doc} with {shown}: {body:#}"
                    );
                }
            }
        }
    }
    assert!(
        calls > 100,
        "only {calls} calls: the schema walk found too little"
    );
}

async fn fuzz_rest(db: Db) {
    let app = TestApp::spawn_with(db, |c| c.run_workers = false).await;
    let mut rng = Rng(0x5eed_0000_0000_0002);
    let long = "y".repeat(300);
    let paths = [
        "/api/templates".to_owned(),
        "/api/templates/preview".to_owned(),
        format!("/api/templates/{long}"),
        "/api/templates/0195f0e1-7f00-7000-8000-000000000000".to_owned(),
        "/api/media/upload".to_owned(),
        "/api/media/not-a-uuid".to_owned(),
        format!("/api/templates?type={long}&status=%00&search=%25%25"),
    ];
    let bodies = [
        json!(null),
        json!([]),
        json!({ "name": long, "type": "text", "body": "x", "merchant_id": long }),
        json!({ "name": "n", "type": "list", "body": "b", "sections": [{ "rows": "nope" }] }),
        json!({ "template": { "type": "text", "body": "{{a}}" }, "variables": [1] }),
        json!({ "file_data": "@@@", "file_name": long, "mime_type": long }),
        json!({ "fileData": "aGVsbG8=", "fileName": "a.jpg", "mimeType": "image/jpeg" }),
    ];
    let callers = [None, Some(app.admin.clone()), Some(app.merchant("m-fuzz"))];
    for path in &paths {
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            for _ in 0..4 {
                let body = rng.pick(&bodies).clone();
                let caller = rng.pick(&callers).clone();
                let (status, res) = app
                    .rest(method.clone(), path, caller.as_deref(), Some(body.clone()))
                    .await;
                let shown = short(&body);
                assert!(
                    status.as_u16() < 500,
                    "{status} for {method} {path} with {shown}: {res:#}"
                );
                assert_ne!(res["code"], "INTERNAL", "{method} {path}: {res:#}");
            }
        }
    }
}

both_dbs!(fuzz_graphql, fuzz_rest);
