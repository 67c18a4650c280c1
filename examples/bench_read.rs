//! Read-path benchmark: `GET /api/templates?status=active&type=buttons` (the seed dashboard's
//! list of live button templates) and the GraphQL `templates(first: 50)` query, under wrk with 2
//! threads and 64 connections, optionally beside the Express + pg peer in the same run.
//!
//!     cargo build --release --example bench_read
//!     target/release/examples/bench_read sqlite
//!     target/release/examples/bench_read postgres --peer http://127.0.0.1:4101 --rounds 3
//!
//! The data set is the same as `benches/peers/express/seed.js`: 200 templates, 50 of each type;
//! 40 of the 50 BUTTONS templates are ACTIVE (the rest draft or archived), so the REST call
//! answers 40 rows (about 25 KB of JSON). On PostgreSQL the database `smartbot_bench_read` on the
//! server of `TEST_POSTGRES_URL` (or `DATABASE_URL`) is created if missing and its
//! `message_templates` replaced; the peer reads that same database.
//!
//! Options: `--duration 10s`, `--rounds N`, `--peer URL` (the peer's base URL), `--port P`
//! (serve on P), `--seed-only` (seed and exit), `--serve` (seed, serve, and wait for Ctrl-C).
//! Needs `wrk` on PATH. Prints one JSON line per measurement.
//!
//! Every request after the first is a hit of the template read cache (`src/templates/cache.rs`):
//! one shared generation read, then the stored bytes. Nothing writes templates during a run.

use std::{process::Command, time::Duration};

use mimalloc::MiMalloc;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait};
use serde_json::json;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

use entity::{TemplateStatus, TemplateType, message_template};

pub const REST_PATH: &str = "/api/templates?status=active&type=buttons";
const GQL: &str =
    "{ templates(first: 50) { nodes { id name type body buttons { id title } version } } }";

/// The same rows as `benches/peers/express/seed.js` (keep the two in step).
fn rows() -> Vec<message_template::ActiveModel> {
    let kinds = [
        TemplateType::Buttons,
        TemplateType::Text,
        TemplateType::List,
        TemplateType::Media,
    ];
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    (0..200u32)
        .map(|i| {
            let kind = kinds[(i % 4) as usize];
            let nth = i / 4; // 0..50 within its type
            let status = match nth {
                0..40 => TemplateStatus::Active,
                40..45 => TemplateStatus::Draft,
                _ => TemplateStatus::Archived,
            };
            let name = format!("{}_{:03}", kind.as_str(), i);
            let body = format!(
                "Hi {{{{ customer_name }}}}, your order {{{{ order_id }}}} from store {i} is ready. \
                 Total {{{{ total }}}}. Reply with one of the buttons below, or type HELP to talk to \
                 a person. We deliver every day between 8 and 18."
            );
            let (buttons, sections, media, button_text) = match kind {
                TemplateType::Buttons => (
                    json!([
                        { "id": "confirm", "title": "Confirm" },
                        { "id": "change", "title": "Change order" },
                        { "id": "cancel", "title": "Cancel" }
                    ]),
                    json!([]),
                    None,
                    None,
                ),
                TemplateType::List => (
                    json!([]),
                    json!([{ "title": "Menu", "rows": [
                        { "id": "a", "title": "Groceries" },
                        { "id": "b", "title": "Drinks", "description": "Cold and hot" }
                    ] }]),
                    None,
                    Some("View menu".to_owned()),
                ),
                TemplateType::Media => (
                    json!([]),
                    json!([]),
                    Some(json!({ "type": "image", "link": format!("https://cdn.example.com/p/{i}.jpg") })),
                    None,
                ),
                TemplateType::Text => (json!([]), json!([]), None, None),
            };
            let at = base + chrono::Duration::minutes(i as i64);
            message_template::ActiveModel {
                id: Set(uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + i as u128)),
                name: Set(name),
                kind: Set(kind),
                body: Set(body),
                header: Set(Some(format!("Order update {i}"))),
                footer: Set(Some("Reply STOP to opt out".to_owned())),
                button_text: Set(button_text),
                buttons: Set(buttons),
                sections: Set(sections),
                media: Set(media),
                variables: Set(json!(["customer_name", "order_id", "total"])),
                version: Set(1),
                status: Set(status),
                merchant_id: Set((i % 2 == 0).then(|| format!("merchant_{}", i % 5))),
                created_by: Set(Some("seed".to_owned())),
                created_at: Set(at),
                updated_at: Set(at),
            }
        })
        .collect()
}

async fn seed(db: &DatabaseConnection) {
    db.execute_unprepared("DELETE FROM template_versions")
        .await
        .unwrap();
    db.execute_unprepared("DELETE FROM message_templates")
        .await
        .unwrap();
    message_template::Entity::insert_many(rows())
        .exec(db)
        .await
        .expect("seed templates");
}

/// Creates `smartbot_bench_read` beside the database named by the URL; returns its URL.
async fn bench_pg_url() -> String {
    let url = std::env::var("TEST_POSTGRES_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = sea_orm::Database::connect(&url).await.expect("postgres");
    let exists = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = 'smartbot_bench_read'",
        ))
        .await
        .unwrap()
        .is_some();
    if !exists {
        admin
            .execute_unprepared("CREATE DATABASE smartbot_bench_read")
            .await
            .unwrap();
    }
    let (server, _) = url.rsplit_once('/').expect("a database URL");
    format!("{server}/smartbot_bench_read")
}

struct WrkResult {
    rps: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn parse_ms(s: &str) -> f64 {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "ms"));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

fn wrk(url: &str, duration: &str, lua: Option<&std::path::Path>) -> WrkResult {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", "-d", duration, "--latency"]);
    if let Some(script) = lua {
        cmd.arg("-s").arg(script);
    }
    let out = cmd.arg(url).output().expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = WrkResult {
        rps: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
    };
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(v) = l.strip_prefix("99%") {
            r.p99_ms = parse_ms(v.trim());
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    if r.rps.is_nan() {
        eprintln!("wrk said:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    }
    r
}

fn report(round: usize, target: &str, r: &WrkResult, peer_rps: Option<f64>, body_bytes: usize) {
    println!(
        "{}",
        json!({
            "round": round,
            "target": target,
            "req_per_s": (r.rps * 10.0).round() / 10.0,
            "p99_ms": r.p99_ms,
            "non_2xx": r.non_2xx,
            "body_bytes": body_bytes,
            "vs_peer": peer_rps.map(|p| ((r.rps / p) * 100.0).round() / 100.0),
        })
    );
}

async fn body_len(client: &reqwest::Client, url: &str) -> (usize, serde_json::Value) {
    let res = client.get(url).send().await.expect("GET");
    let bytes = res.bytes().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    (bytes.len(), v)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let flag = |name: &str| args.iter().any(|a| a == name);
    let kind = args.first().cloned().unwrap_or_else(|| "sqlite".into());
    let duration = opt("--duration").unwrap_or_else(|| "10s".into());
    let rounds: usize = opt("--rounds").and_then(|s| s.parse().ok()).unwrap_or(1);
    let peer = opt("--peer");
    let port: u16 = opt("--port").and_then(|s| s.parse().ok()).unwrap_or(0);

    let dir = tempfile::tempdir().unwrap();
    let mut config = smartbot::Config::embedded(dir.path());
    match kind.as_str() {
        "sqlite" => {}
        "postgres" => config.database_url = bench_pg_url().await,
        other => panic!("unknown database {other:?}; use sqlite or postgres"),
    }
    config.bind_addr = std::net::IpAddr::from([127, 0, 0, 1]);
    config.port = port;
    config.rate_limit = None;
    config.seed_templates = false;
    config.run_workers = false;
    config.database_max_connections = 16;

    let server = smartbot::spawn(config).await.expect("server");
    seed(&server.state.db).await;
    if flag("--seed-only") {
        server.stop().await.unwrap();
        return;
    }
    let rest_url = server.url(REST_PATH);
    let gql_url = server.url("/graphql");
    eprintln!("serving {rest_url} and {gql_url}");
    if flag("--serve") {
        smartbot::shutdown_signal().await;
        server.stop().await.unwrap();
        return;
    }

    let client = reqwest::Client::new();
    let (rest_bytes, rest_body) = body_len(&client, &rest_url).await;
    assert_eq!(rest_body["count"], 40, "expected 40 rows: {rest_body}");
    let peer_url = peer.map(|p| format!("{}{REST_PATH}", p.trim_end_matches('/')));
    let peer_bytes = match &peer_url {
        Some(u) => {
            let (n, v) = body_len(&client, u).await;
            assert_eq!(
                v["count"], 40,
                "the peer should answer the same 40 rows: {v}"
            );
            n
        }
        None => 0,
    };
    let gql_res = client
        .post(&gql_url)
        .json(&json!({ "query": GQL }))
        .send()
        .await
        .unwrap();
    let gql_body = gql_res.bytes().await.unwrap();
    let gql_json: serde_json::Value = serde_json::from_slice(&gql_body).unwrap();
    assert_eq!(
        gql_json["data"]["templates"]["nodes"]
            .as_array()
            .map(Vec::len),
        Some(50),
        "{gql_json}"
    );
    let lua = dir.path().join("gql.lua");
    std::fs::write(
        &lua,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = {}\n",
            serde_json::to_string(&json!({ "query": GQL }).to_string()).unwrap()
        ),
    )
    .unwrap();

    // wrk blocks: run it off the runtime that serves the requests.
    let run = |url: String, lua: Option<std::path::PathBuf>| {
        let duration = duration.clone();
        async move {
            tokio::task::spawn_blocking(move || wrk(&url, &duration, lua.as_deref()))
                .await
                .unwrap()
        }
    };
    for round in 1..=rounds {
        let peer_rps = match &peer_url {
            Some(u) => {
                let r = run(u.clone(), None).await;
                report(round, "express+pg", &r, None, peer_bytes);
                Some(r.rps)
            }
            None => None,
        };
        let r = run(rest_url.clone(), None).await;
        report(
            round,
            &format!("smartbot-{kind} rest"),
            &r,
            peer_rps,
            rest_bytes,
        );
        let rest_rps = r.rps;
        let g = run(gql_url.clone(), Some(lua.clone())).await;
        report(
            round,
            &format!("smartbot-{kind} graphql"),
            &g,
            peer_rps,
            gql_body.len(),
        );
        println!(
            "{}",
            json!({ "round": round, "graphql_vs_rest": ((g.rps / rest_rps) * 100.0).round() / 100.0 })
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await.unwrap();
}
