//! GraphiQL and Playground work offline: their HTML references no external URL, and every local
//! asset it references is served.

use reqwest::StatusCode;

use crate::common::{Db, TestApp};

/// Every value following one of `markers` up to its closing quote or parenthesis.
fn references(html: &str) -> Vec<String> {
    let markers = [
        "src=\"",
        "src='",
        "href=\"",
        "href='",
        "url(",
        "url: \"",
        "url: '",
        "fetch(\"",
        "fetch('",
        "endpoint: \"",
        "Endpoint: \"",
        "Url: \"",
    ];
    let mut out = Vec::new();
    for marker in markers {
        let mut rest = html;
        while let Some(at) = rest.find(marker) {
            let value = &rest[at + marker.len()..];
            let end = value.find(['"', '\'', ')']).unwrap_or(value.len());
            out.push(value[..end].trim().to_owned());
            rest = &value[end..];
        }
    }
    out
}

fn is_external(reference: &str) -> bool {
    let r = reference
        .trim_start_matches(['"', '\''])
        .to_ascii_lowercase();
    r.starts_with("http://") || r.starts_with("https://") || r.starts_with("//")
}

fn local_assets(html: &str) -> Vec<String> {
    let mut out: Vec<String> = references(html)
        .into_iter()
        .filter(|r| r.starts_with("/explorer/assets/"))
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn get_html(app: &TestApp, path: &str) -> String {
    let res = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "{path}: {ct}");
    res.text().await.unwrap()
}

#[test]
fn the_reference_scanner_finds_external_urls() {
    let html = r#"<script src="https://cdn.example/x.js"></script><link href='//fonts.example/f.css'>
        <style>a { background: url(http://img.example/a.png) }</style><script src="/explorer/assets/a.js"></script>"#;
    let refs = references(html);
    assert_eq!(
        refs.iter().filter(|r| is_external(r)).count(),
        3,
        "{refs:?}"
    );
    assert_eq!(local_assets(html), vec!["/explorer/assets/a.js"]);
}

#[tokio::test]
async fn explorers_are_self_contained() {
    let app = TestApp::spawn(Db::Sqlite).await;
    for (path, expected_assets, marker) in [
        ("/graphql", 5, "GraphiQL"),
        ("/playground", 2, "GraphQLPlayground"),
    ] {
        let html = get_html(&app, path).await;
        assert!(html.contains(marker), "{path} is not the expected page");
        let refs = references(&html);
        let external: Vec<&String> = refs.iter().filter(|r| is_external(r)).collect();
        assert!(external.is_empty(), "{path} references {external:?}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{path} mentions an absolute URL"
        );
        // The endpoints it talks to are this server's.
        assert!(refs.contains(&"/graphql".to_owned()), "{path}: {refs:?}");

        let assets = local_assets(&html);
        assert_eq!(assets.len(), expected_assets, "{path}: {assets:?}");
        for asset in assets {
            let res = app.client.get(app.url(&asset)).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{asset}");
            let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
            let expected = if asset.ends_with(".css") {
                "text/css"
            } else {
                "text/javascript"
            };
            assert!(ct.starts_with(expected), "{asset}: {ct}");
            let body = res.text().await.unwrap();
            assert!(body.len() > 100, "{asset} is empty");
            if asset.ends_with(".css") {
                let external: Vec<String> = references(&body)
                    .into_iter()
                    .filter(|r| is_external(r))
                    .collect();
                assert!(external.is_empty(), "{asset} loads {external:?}");
                assert!(!body.contains("@import"), "{asset} imports a stylesheet");
            }
        }
    }

    for missing in [
        "/explorer/assets/nope.js",
        "/explorer/assets/graphiql.min.js.map",
        "/explorer/assets/LICENSES.md",
    ] {
        let res = app.client.get(app.url(missing)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{missing}");
    }
    // Hostile paths: traversal.rs, over a raw socket.
}
