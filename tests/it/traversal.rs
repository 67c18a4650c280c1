//! Hostile paths reach the file-serving handlers as written and leak nothing.
//!
//! The requests go over a raw socket (`common::raw`): reqwest would resolve `..` and `%2e%2e`
//! first, and most cases would then probe an ordinary unknown route instead of the handler.

use crate::common::{Db, TestApp, raw::RawResponse, tiny_png};

/// What each planted file holds; none of it may ever appear in a response.
const CANARY: &[u8] = b"CANARY-7f3a-do-not-serve";

/// Bytes that would show a file outside the served tree: planted canaries, the SQLite database,
/// /etc/passwd, the repository's Cargo.toml and sources.
const LEAKS: &[&[u8]] = &[
    CANARY,
    b"SQLite format 3",
    b"root:",
    b"[package]",
    b"[workspace]",
    b"pub fn ",
];

fn refused_by_upload_handler(path: &str, res: &RawResponse) {
    if let Some(leak) = res.contains_any(LEAKS) {
        panic!("{path} leaked {leak:?}: {}", res.text());
    }
    // The handler's own refusal: the router's fallback would say NOT_FOUND "no such route".
    let body = res.json();
    assert_eq!(res.status, 400, "{path}: {} {}", res.status, res.text());
    assert_eq!(body["code"], "VALIDATION", "{path}: {body}");
    assert_eq!(body["field"], "path", "{path}: {body}");
}

#[tokio::test]
async fn uploads_refuse_traversal() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| c.run_workers = false).await;
    let png = tiny_png(1);
    let media = app.as_merchant("m1").upload(&png, None).await;
    let data = app.data_dir();
    assert!(
        data.join("smartbot.db").is_file(),
        "the SQLite file is a target"
    );
    for name in ["canary.txt", "jwt_secret"] {
        std::fs::write(data.join(name), CANARY).unwrap();
    }

    // The raw client reaches a real file, so refusals below are the server's doing.
    let url = media["url"].as_str().unwrap();
    let ok = app.raw_get(url).await;
    assert_eq!(ok.status, 200, "{url}: {}", ok.text());
    assert_eq!(ok.body, png, "{url} serves the upload");
    assert_eq!(ok.header("x-content-type-options"), Some("nosniff"));
    let key = url.strip_prefix("/uploads/").unwrap();
    let (shard, _) = key.split_at(6); // "ab/cd/"

    for path in [
        "/uploads/../smartbot.db".to_owned(),
        "/uploads/../canary.txt".to_owned(),
        "/uploads/%2e%2e/smartbot.db".to_owned(),
        "/uploads/%2e%2e%2fsmartbot.db".to_owned(),
        "/uploads/%2E%2E%2Fjwt_secret".to_owned(),
        "/uploads/..%2fsmartbot.db".to_owned(),
        "/uploads/.%2e/canary.txt".to_owned(),
        "/uploads/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/uploads/%2Fetc%2Fpasswd".to_owned(),
        "/uploads//etc/passwd".to_owned(),
        "/uploads/ab/..%5c..%5csmartbot.db".to_owned(),
        "/uploads/%252e%252e/canary.txt".to_owned(),
        "/uploads/./canary.txt".to_owned(),
        "/uploads/canary.txt%00.png".to_owned(),
        format!("/uploads/{shard}../../canary.txt"),
        format!("/uploads/{shard}../../../jwt_secret"),
        format!("/uploads/{shard}%2e%2e/%2e%2e/%2e%2e/canary.txt"),
        format!("/uploads/{key}/../../../../canary.txt"),
    ] {
        refused_by_upload_handler(&path, &app.raw_get(&path).await);
    }
    // A well-formed key that names no upload: the handler's NOT_FOUND. So does a key naming one
    // of the store's directories, or a path through a stored file: the same answer as a missing
    // key, so the store's layout is not an oracle either.
    for path in [
        format!("/uploads/{shard}canary.txt"),
        format!("/uploads/{}", &shard[..2]),
        format!("/uploads/{}", &shard[..5]),
        format!("/uploads/{key}/x"),
    ] {
        let res = app.raw_get(&path).await;
        assert_eq!(res.status, 404, "{path}: {}", res.text());
        assert_eq!(res.json()["code"], "NOT_FOUND", "{path}: {}", res.text());
        assert!(res.contains_any(LEAKS).is_none(), "{path}: {}", res.text());
    }
}

#[tokio::test]
async fn explorer_assets_refuse_traversal() {
    let app = TestApp::spawn(Db::Sqlite).await;
    // The raw client gets a real asset.
    let ok = app.raw_get("/explorer/assets/middleware.css").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.header("content-type").unwrap().starts_with("text/css"));

    // One path segment: these reach the asset handler, which serves only its fixed list.
    for path in [
        "/explorer/assets/..%2f..%2fCargo.toml",
        "/explorer/assets/%2e%2e%2f%2e%2e%2fCargo.toml",
        "/explorer/assets/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/explorer/assets/..%5c..%5cCargo.toml",
        "/explorer/assets/%2fetc%2fpasswd",
        "/explorer/assets/LICENSES.md",
        "/explorer/assets/..",
        "/explorer/assets/%2e%2e",
    ] {
        let res = app.raw_get(path).await;
        assert!(res.contains_any(LEAKS).is_none(), "{path}: {}", res.text());
        assert_eq!(res.status, 404, "{path}: {}", res.text());
        assert_eq!(res.text(), "no such asset", "{path} reached the handler");
    }
    // An encoded NUL is refused before any handler reads the path.
    let res = app.raw_get("/explorer/assets/graphiql.min.js%00.map").await;
    assert!(res.contains_any(LEAKS).is_none(), "{}", res.text());
    assert_eq!(res.status, 400, "{}", res.text());
    assert!(res.text().contains(r#""field":"path""#), "{}", res.text());
    // Several segments: no route takes them, and the router does not resolve the dots.
    for path in [
        "/explorer/assets/../../Cargo.toml",
        "/explorer/assets/../../src/lib.rs",
        "/explorer/assets/./../../../../etc/passwd",
        "/explorer/assets/%2e%2e/%2e%2e/Cargo.toml",
    ] {
        let res = app.raw_get(path).await;
        assert!(res.contains_any(LEAKS).is_none(), "{path}: {}", res.text());
        assert_eq!(res.status, 404, "{path}: {}", res.text());
        assert_eq!(res.json()["code"], "NOT_FOUND", "{path}: {}", res.text());
    }
}
