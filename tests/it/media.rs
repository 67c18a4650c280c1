//! Media: uploads over REST (base64) and GraphQL (multipart), validation by content, dedupe,
//! shared files on delete, the `/uploads` file server, product media rules and the
//! media_processing job. Test images are made in code.

use std::{path::Path, time::Duration};

use base64::Engine;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use smartbot::media::process::{self, Format, Limits};
use smartbot::queue::QueueName;

use crate::{
    both_dbs,
    common::{Db, TestApp},
};

fn pixels(w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x ^ y) & 0xff) as u8,
            ]);
        }
    }
    v
}

pub(crate) fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    png_of(w, h, &pixels(w, h))
}

fn png_of(w: u32, h: u32, px: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(px).unwrap();
    wr.finish().unwrap();
    out
}

fn jpeg_bytes(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85)
        .encode(
            &pixels(w, h),
            w as u16,
            h as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
    out
}

fn webp_bytes(w: u32, h: u32) -> Vec<u8> {
    let px = pixels(w, h);
    // SAFETY: libwebp reads w*h*3 bytes and returns a buffer we copy and free.
    unsafe {
        let mut out: *mut u8 = std::ptr::null_mut();
        let n = libwebp_sys::WebPEncodeRGB(
            px.as_ptr(),
            w as i32,
            h as i32,
            (w * 3) as i32,
            80.0,
            &mut out,
        );
        assert!(n > 0);
        let v = std::slice::from_raw_parts(out, n).to_vec();
        libwebp_sys::WebPFree(out as *mut std::ffi::c_void);
        v
    }
}

fn image(f: Format, w: u32, h: u32) -> Vec<u8> {
    match f {
        Format::Jpeg => jpeg_bytes(w, h),
        Format::Png => png_bytes(w, h),
        Format::Webp => webp_bytes(w, h),
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

pub(crate) fn uploads(app: &TestApp) -> usize {
    count_files(&app.server.state.config.media_dir())
}

fn no_workers(c: &mut smartbot::Config) {
    c.run_workers = false;
}

async fn rest_upload(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    app.rest(Method::POST, "/api/media/upload", Some(token), Some(body))
        .await
}

async fn upload_ok(app: &TestApp, token: &str, bytes: &[u8], merchant: Option<&str>) -> Value {
    let (s, b) = rest_upload(
        app,
        token,
        json!({ "fileData": b64(bytes), "fileName": "a.img", "merchantId": merchant }),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["media"].clone()
}

pub(crate) async fn media_rows(app: &TestApp) -> u64 {
    let d = app
        .gql_ok(Some(&app.admin), "{ mediaList { totalCount } }", json!({}))
        .await;
    d["mediaList"]["totalCount"].as_u64().unwrap()
}

/// The status a GET of a `/uploads` URL (a JSON string) answers.
async fn served(app: &TestApp, url: &Value) -> StatusCode {
    app.client
        .get(app.url(url.as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .status()
}

/// Fetches a `/uploads` URL and probes it.
async fn fetch_image(app: &TestApp, url: &str) -> (process::Probe, reqwest::header::HeaderMap) {
    let res = app.client.get(app.url(url)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{url}");
    let headers = res.headers().clone();
    let bytes = res.bytes().await.unwrap();
    (process::probe(&bytes, &Limits::default()).unwrap(), headers)
}

const FORMATS: [Format; 3] = [Format::Jpeg, Format::Png, Format::Webp];

async fn rest_round_trip(db: Db) {
    let app = TestApp::spawn(db).await;
    let m1 = app.merchant("m1");
    for f in FORMATS {
        let bytes = image(f, 640, 480);
        let data = if f == Format::Png {
            format!("data:image/png;base64,{}", b64(&bytes))
        } else {
            b64(&bytes)
        };
        let (s, b) = rest_upload(
            &app,
            &m1,
            json!({ "fileData": data, "fileName": "../../evil name", "mimeType": f.mime() }),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        assert_eq!(b["success"], true);
        let m = &b["media"];
        assert_eq!(m["mime_type"], f.mime());
        assert_eq!(m["merchant_id"], "m1");
        assert_eq!(m["width"], 640);
        assert_eq!(m["height"], 480);
        assert_eq!(m["status"], "ready");
        assert_eq!(m["size"], bytes.len());
        assert_eq!(m["original_name"], "../../evil name");
        let url = m["url"].as_str().unwrap();
        assert!(
            url.starts_with("/uploads/") && !url.contains("evil"),
            "{url}"
        );
        let (p, _) = fetch_image(&app, url).await;
        assert_eq!((p.format, p.width, p.height), (f, 640, 480));
        let thumb = m["thumbnail_url"].as_str().unwrap();
        let (p, h) = fetch_image(&app, thumb).await;
        assert_eq!((p.format, p.width, p.height), (f, 200, 200));
        assert_eq!(h[header::CONTENT_TYPE], f.mime());
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(
            h[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        let etag = h[header::ETAG].to_str().unwrap().to_owned();
        assert_eq!(etag, format!("\"{}\"", m["sha256"].as_str().unwrap()));
        // Weak comparison, as RFC 9110 asks of If-None-Match; another tag is a full answer.
        for (tag, status) in [
            (etag.clone(), StatusCode::NOT_MODIFIED),
            (format!("W/{etag}"), StatusCode::NOT_MODIFIED),
            (format!("\"x\", W/{etag}"), StatusCode::NOT_MODIFIED),
            ("\"other\"".to_owned(), StatusCode::OK),
        ] {
            let res = app
                .client
                .get(app.url(thumb))
                .header(header::IF_NONE_MATCH, &tag)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), status, "{tag}");
        }

        let id = m["id"].as_str().unwrap();
        let (s, got) = app
            .rest(Method::GET, &format!("/api/media/{id}"), None, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{got}");
        assert_eq!(got["media"]["id"], id);
    }
    // Anonymous uploads and another merchant's id are refused.
    let png = png_bytes(10, 10);
    let (s, b) = app
        .rest(
            Method::POST,
            "/api/media/upload",
            None,
            Some(json!({ "fileData": b64(&png) })),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, b) = rest_upload(
        &app,
        &m1,
        json!({ "fileData": b64(&png), "merchantId": "m2" }),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN")),
        "{b}"
    );
}

/// A GraphQL multipart request (operations / map / 0) with `files` parts.
async fn gql_multipart(
    app: &TestApp,
    token: &str,
    files: Vec<(Vec<u8>, &str)>,
) -> (StatusCode, Value) {
    let (query, variables, map) = if files.len() == 1 {
        (
            "mutation($file: Upload!) { uploadMedia(file: $file) { id mimeType width height thumbnailUrl merchantId } }",
            json!({ "file": null }),
            json!({ "0": ["variables.file"] }),
        )
    } else {
        (
            "mutation($a: Upload!, $b: Upload!) { a: uploadMedia(file: $a) { id } b: uploadMedia(file: $b) { id } }",
            json!({ "a": null, "b": null }),
            json!({ "0": ["variables.a"], "1": ["variables.b"] }),
        )
    };
    let mut form = reqwest::multipart::Form::new()
        .text(
            "operations",
            json!({ "query": query, "variables": variables }).to_string(),
        )
        .text("map", map.to_string());
    for (i, (bytes, mime)) in files.into_iter().enumerate() {
        form = form.part(
            i.to_string(),
            reqwest::multipart::Part::bytes(bytes)
                .file_name(format!("f{i}"))
                .mime_str(mime)
                .unwrap(),
        );
    }
    let res = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn graphql_multipart_round_trip() {
    let app = TestApp::spawn_with(Db::Sqlite, no_workers).await;
    let m1 = app.merchant("m1");
    for f in FORMATS {
        let (s, b) = gql_multipart(&app, &m1, vec![(image(f, 320, 240), f.mime())]).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let m = &b["data"]["uploadMedia"];
        assert_eq!(m["mimeType"], f.mime(), "{b}");
        assert_eq!(
            (m["width"].as_i64(), m["height"].as_i64()),
            (Some(320), Some(240))
        );
        assert_eq!(m["merchantId"], "m1");
        let (p, _) = fetch_image(&app, m["thumbnailUrl"].as_str().unwrap()).await;
        assert_eq!((p.format, p.width, p.height), (f, 200, 200));
    }
    // Base64 over GraphQL too.
    let d = app
        .gql_ok(
            Some(&m1),
            "mutation($i: UploadMediaBase64Input!) { uploadMediaBase64(input: $i) { mimeType width } }",
            json!({ "i": { "fileData": b64(&png_bytes(30, 20)), "fileName": "x.png" } }),
        )
        .await;
    assert_eq!(d["uploadMediaBase64"]["width"], 30);
}

#[tokio::test]
async fn multipart_limits() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.run_workers = false;
        c.media_max_bytes = 10_000;
    })
    .await;
    let m1 = app.merchant("m1");
    let big = noise_png(200, 200);
    assert!(big.len() > 10_000);
    let (_, b) = gql_multipart(&app, &m1, vec![(big, "image/png")]).await;
    assert_eq!(
        b["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE",
        "{b}"
    );
    let small = png_bytes(8, 8);
    let (s, b) = gql_multipart(
        &app,
        &m1,
        vec![(small.clone(), "image/png"), (small, "image/png")],
    )
    .await;
    // The server's own refusal, not any 4xx.
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["errors"][0]["extensions"]["code"], "VALIDATION", "{b}");
    let message = b["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("at most one file"), "{b}");
    assert!(b["data"].is_null(), "{b}");
    // No `operations` part: named as the multipart spec names it.
    let form = reqwest::multipart::Form::new().part(
        "map",
        reqwest::multipart::Part::text(r#"{"0": ["variables.file"]}"#),
    );
    let res = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&m1)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let b: Value = res.json().await.unwrap();
    let message = b["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`operations` part"), "{b}");
    assert_eq!(media_rows(&app).await, 0);
    assert_eq!(uploads(&app), 0);
}

fn noise_png(w: u32, h: u32) -> Vec<u8> {
    let mut x: u32 = 12345;
    let px: Vec<u8> = (0..w * h * 3)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    png_of(w, h, &px)
}

#[tokio::test]
async fn bad_inputs_leave_nothing() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.run_workers = false;
        c.media_max_bytes = 50_000;
    })
    .await;
    let m1 = app.merchant("m1");
    let jpeg = jpeg_bytes(64, 64);
    let mut truncated = jpeg.clone();
    truncated.truncate(jpeg.len() / 2);
    let mut polyglot = jpeg.clone();
    polyglot.extend_from_slice(b"<html><script>alert(1)</script></html>");
    let svg =
        br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>"#
            .to_vec();
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec();
    let big = noise_png(200, 200);
    assert!(big.len() > 50_000);
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "bad base64",
            json!({ "fileData": "!!!not base64***" }),
            StatusCode::BAD_REQUEST,
            "VALIDATION",
        ),
        (
            "claimed png",
            json!({ "fileData": b64(&jpeg), "mimeType": "image/png" }),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA",
        ),
        (
            "truncated",
            json!({ "fileData": b64(&truncated) }),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA",
        ),
        (
            "polyglot",
            json!({ "fileData": b64(&polyglot) }),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA",
        ),
        (
            "svg",
            json!({ "fileData": b64(&svg), "mimeType": "image/svg+xml" }),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA",
        ),
        (
            "gif",
            json!({ "fileData": b64(&gif) }),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA",
        ),
        (
            "oversized",
            json!({ "fileData": b64(&big) }),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
        ),
    ];
    for (name, body, status, code) in cases {
        let (s, b) = rest_upload(&app, &m1, body).await;
        assert_eq!(s, status, "{name}: {b}");
        assert_eq!(b["code"], code, "{name}: {b}");
        if name == "bad base64" {
            assert_eq!(b["field"], "fileData");
        }
        if name == "claimed png" {
            assert!(
                b["error"]
                    .as_str()
                    .unwrap()
                    .contains("claimed image/png but the content is JPEG"),
                "{b}"
            );
        }
    }
    assert_eq!(media_rows(&app).await, 0);
    assert_eq!(uploads(&app), 0);
}

async fn dedupe_and_shared_delete(db: Db) {
    let app = TestApp::spawn_with(db, no_workers).await;
    let (m1, m2) = (app.merchant("m1"), app.merchant("m2"));
    let png = png_bytes(300, 200);
    let a = upload_ok(&app, &m1, &png, None).await;
    assert_eq!(uploads(&app), 2);
    let again = upload_ok(&app, &m1, &png, None).await;
    assert_eq!(again["id"], a["id"]);
    assert_eq!(uploads(&app), 2);
    let b = upload_ok(&app, &m2, &png, None).await;
    assert_ne!(b["id"], a["id"]);
    assert_eq!(b["url"], a["url"]);
    assert_eq!(uploads(&app), 2);
    assert_eq!(media_rows(&app).await, 2);

    let (aid, bid) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let (s, body) = app
        .rest(
            Method::DELETE,
            &format!("/api/media/{aid}"),
            Some(&m2),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (code, _) = app
        .gql_err(
            Some(&m2),
            "mutation($id: ID!) { deleteMedia(id: $id) }",
            json!({ "id": aid }),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");

    let (s, body) = app
        .rest(
            Method::DELETE,
            &format!("/api/media/{aid}"),
            Some(&m1),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(uploads(&app), 2);
    fetch_image(&app, b["url"].as_str().unwrap()).await;
    let (s, _) = app
        .rest(Method::GET, &format!("/api/media/{aid}"), None, None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let d = app
        .gql_ok(
            Some(&m2),
            "mutation($id: ID!) { deleteMedia(id: $id) }",
            json!({ "id": bid }),
        )
        .await;
    assert_eq!(d["deleteMedia"], true);
    assert_eq!(uploads(&app), 0);
    assert_eq!(media_rows(&app).await, 0);
    // One audit row per real upload (not for the duplicate) and per delete.
    for (action, n) in [("media.upload", 2), ("media.delete", 2)] {
        let d = app
            .gql_ok(
                Some(&app.admin),
                "query($a: String) { auditLogs(filter: { action: $a }) { totalCount } }",
                json!({ "a": action }),
            )
            .await;
        assert_eq!(d["auditLogs"]["totalCount"], n, "{action}: {d}");
    }
    let res = app
        .client
        .get(app.url(b["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

async fn product_media_rules(db: Db) {
    let app = TestApp::spawn_with(db, no_workers).await;
    let (m1, m2) = (app.merchant("m1"), app.merchant("m2"));
    let a = upload_ok(&app, &m1, &png_bytes(20, 20), None).await;
    let b = upload_ok(&app, &m1, &png_bytes(21, 20), None).await;
    let (aid, bid) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let attach = "mutation($p: String!, $m: ID!, $primary: Boolean) { attachMediaToProduct(productId: $p, mediaId: $m, isPrimary: $primary) { mediaId position isPrimary media { id } } }";
    let (code, _) = app
        .gql_err(Some(&m2), attach, json!({ "p": "prod-1", "m": aid }))
        .await;
    assert_eq!(code, "FORBIDDEN");
    let d = app
        .gql_ok(
            Some(&m1),
            attach,
            json!({ "p": "prod-1", "m": aid, "primary": true }),
        )
        .await;
    assert_eq!(d["attachMediaToProduct"]["isPrimary"], true);
    assert_eq!(d["attachMediaToProduct"]["position"], 0);
    let d = app
        .gql_ok(
            Some(&m1),
            attach,
            json!({ "p": "prod-1", "m": bid, "primary": true }),
        )
        .await;
    assert_eq!(d["attachMediaToProduct"]["position"], 1);
    let list = "query($p: String!, $mid: String) { productMedia(productId: $p, merchantId: $mid) { mediaId position isPrimary } }";
    let d = app
        .gql_ok(None, list, json!({ "p": "prod-1", "mid": "m1" }))
        .await;
    let rows = d["productMedia"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["mediaId"], aid);
    assert_eq!(rows[0]["isPrimary"], false);
    assert_eq!(rows[1]["isPrimary"], true);

    let reorder = "mutation($p: String!, $ids: [ID!]!) { reorderProductMedia(productId: $p, mediaIds: $ids) { mediaId position } }";
    // m2's prod-1 is another product, without media.
    let (code, _) = app
        .gql_err(
            Some(&m2),
            reorder,
            json!({ "p": "prod-1", "ids": [bid, aid] }),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = app
        .gql_err(Some(&m1), reorder, json!({ "p": "prod-1", "ids": [bid] }))
        .await;
    assert_eq!(code, "VALIDATION");
    let d = app
        .gql_ok(
            Some(&m1),
            reorder,
            json!({ "p": "prod-1", "ids": [bid, aid] }),
        )
        .await;
    assert_eq!(d["reorderProductMedia"][0]["mediaId"], bid);
    assert_eq!(d["reorderProductMedia"][1]["position"], 1);

    let detach =
        "mutation($p: String!, $m: ID!) { detachMediaFromProduct(productId: $p, mediaId: $m) }";
    let (code, _) = app
        .gql_err(Some(&m2), detach, json!({ "p": "prod-1", "m": aid }))
        .await;
    assert_eq!(code, "NOT_FOUND");
    let d = app
        .gql_ok(Some(&m1), detach, json!({ "p": "prod-1", "m": aid }))
        .await;
    assert_eq!(d["detachMediaFromProduct"], true);
    // Deleting media detaches it.
    app.gql_ok(
        Some(&m1),
        "mutation($id: ID!) { deleteMedia(id: $id) }",
        json!({ "id": bid }),
    )
    .await;
    let d = app
        .gql_ok(None, list, json!({ "p": "prod-1", "mid": "m1" }))
        .await;
    assert_eq!(d["productMedia"].as_array().unwrap().len(), 0);

    // A product with media always has one primary: the first attachment becomes it, and when
    // the primary leaves (detached or its media deleted), the first of the rest takes over.
    let mut ids = Vec::new();
    for seed in 30..33 {
        let m = upload_ok(&app, &m1, &png_bytes(seed, 20), None).await;
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    let d = app
        .gql_ok(Some(&m1), attach, json!({ "p": "prod-2", "m": ids[0] }))
        .await;
    assert_eq!(d["attachMediaToProduct"]["isPrimary"], true, "{d}");
    for id in &ids[1..] {
        let d = app
            .gql_ok(Some(&m1), attach, json!({ "p": "prod-2", "m": id }))
            .await;
        assert_eq!(d["attachMediaToProduct"]["isPrimary"], false, "{d}");
    }
    let rows = |d: &Value| -> Vec<(String, i64, bool)> {
        d["productMedia"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["mediaId"].as_str().unwrap().to_owned(),
                    r["position"].as_i64().unwrap(),
                    r["isPrimary"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    app.gql_ok(Some(&m1), detach, json!({ "p": "prod-2", "m": ids[0] }))
        .await;
    let d = app
        .gql_ok(None, list, json!({ "p": "prod-2", "mid": "m1" }))
        .await;
    assert_eq!(
        rows(&d),
        [(ids[1].clone(), 0, true), (ids[2].clone(), 1, false)]
    );
    let before = app
        .gql_ok(
            Some(&app.admin),
            "{ recentEvents(types: [PRODUCT_UPDATED], merchantId: \"m1\") { totalCount } }",
            json!({}),
        )
        .await["recentEvents"]["totalCount"]
        .as_i64()
        .unwrap();
    app.gql_ok(
        Some(&m1),
        "mutation($id: ID!) { deleteMedia(id: $id) }",
        json!({ "id": ids[1] }),
    )
    .await;
    let d = app
        .gql_ok(None, list, json!({ "p": "prod-2", "mid": "m1" }))
        .await;
    assert_eq!(rows(&d), [(ids[2].clone(), 0, true)]);
    // The product it left changed, so it says so.
    let d = app
        .gql_ok(
            Some(&app.admin),
            "{ recentEvents(types: [PRODUCT_UPDATED], merchantId: \"m1\", first: 1) { totalCount edges { node { payload } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["recentEvents"]["totalCount"].as_i64(),
        Some(before + 1),
        "{d}"
    );
    assert_eq!(
        d["recentEvents"]["edges"][0]["node"]["payload"],
        json!({ "productId": "prod-2", "change": "media_detached" }),
        "{d}"
    );
    app.gql_ok(Some(&m1), detach, json!({ "p": "prod-2", "m": ids[2] }))
        .await;
    // Every change is audited.
    let d = app
        .gql_ok(
            Some(&app.admin),
            "{ auditLogs(filter: { targetType: \"product_media\" }) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(d["auditLogs"]["totalCount"], 8, "{d}");
}

#[tokio::test]
async fn processing_job_makes_medium_variant() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let m1 = app.merchant("m1");
    let m = upload_ok(&app, &m1, &jpeg_bytes(1200, 900), None).await;
    let id = m["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let variant = loop {
        let d = app
            .gql_ok(
                None,
                "query($id: ID!) { media(id: $id) { status variants } }",
                json!({ "id": id }),
            )
            .await;
        let v = &d["media"]["variants"];
        if d["media"]["status"] == "READY" && v.as_array().is_some_and(|a| !a.is_empty()) {
            break v[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no variant after 20s: {d}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(variant["name"], "medium");
    assert_eq!(
        (variant["width"].as_i64(), variant["height"].as_i64()),
        (Some(600), Some(450))
    );
    let (p, _) = fetch_image(&app, variant["url"].as_str().unwrap()).await;
    assert_eq!((p.format, p.width, p.height), (Format::Jpeg, 600, 450));
}

both_dbs!(
    rest_round_trip,
    dedupe_and_shared_delete,
    product_media_rules
);

const ATTACH: &str = "mutation($p: String!, $m: ID!, $primary: Boolean, $mid: String) { attachMediaToProduct(productId: $p, mediaId: $m, isPrimary: $primary, merchantId: $mid) { mediaId merchantId isPrimary position } }";
const DETACH: &str = "mutation($p: String!, $m: ID!, $mid: String) { detachMediaFromProduct(productId: $p, mediaId: $m, merchantId: $mid) }";
const REORDER: &str = "mutation($p: String!, $ids: [ID!]!, $mid: String) { reorderProductMedia(productId: $p, mediaIds: $ids, merchantId: $mid) { mediaId position } }";
const PRODUCT_MEDIA: &str = "query($p: String!, $mid: String) { productMedia(productId: $p, merchantId: $mid) { mediaId merchantId isPrimary position media { id } } }";

fn id_of(m: &Value) -> String {
    m["id"].as_str().unwrap().to_owned()
}

/// A product's positions are always 0..n in order: an explicit position inserts there (the end
/// at most) and shifts the rest, a repeated or huge one cannot tie, and a detach closes the gap.
async fn product_media_positions_stay_dense(db: Db) {
    let app = TestApp::spawn_with(db, no_workers).await;
    let m = app.merchant("m1");
    let mut ids = Vec::new();
    for w in 20..25 {
        ids.push(id_of(&upload_ok(&app, &m, &png_bytes(w, 20), None).await));
    }
    let want = |idx: &[usize]| idx.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>();
    let attach = "mutation($p: String!, $m: ID!, $pos: Int) { attachMediaToProduct(productId: $p, mediaId: $m, position: $pos) { position } }";
    let order = || async {
        let d = app
            .gql_ok(Some(&m), PRODUCT_MEDIA, json!({ "p": "pp" }))
            .await;
        let rows = d["productMedia"].as_array().unwrap().clone();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r["position"], i, "{d}");
        }
        rows.iter()
            .map(|r| r["mediaId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    // 5, 5, i32::MAX and none: each goes to the end, no ties.
    for (id, pos) in [
        (&ids[0], json!(5)),
        (&ids[1], json!(5)),
        (&ids[2], json!(2147483647)),
        (&ids[3], Value::Null),
    ] {
        app.gql_ok(Some(&m), attach, json!({ "p": "pp", "m": id, "pos": pos }))
            .await;
    }
    assert_eq!(order().await, want(&[0, 1, 2, 3]));
    // Inserting at 1 shifts the rest; moving an attached one to 0 moves it.
    let d = app
        .gql_ok(
            Some(&m),
            attach,
            json!({ "p": "pp", "m": ids[4], "pos": 1 }),
        )
        .await;
    assert_eq!(d["attachMediaToProduct"]["position"], 1);
    assert_eq!(order().await, want(&[0, 4, 1, 2, 3]));
    app.gql_ok(
        Some(&m),
        attach,
        json!({ "p": "pp", "m": ids[3], "pos": 0 }),
    )
    .await;
    assert_eq!(order().await, want(&[3, 0, 4, 1, 2]));
    // Attaching again without a position keeps its place.
    app.gql_ok(Some(&m), attach, json!({ "p": "pp", "m": ids[4] }))
        .await;
    assert_eq!(order().await, want(&[3, 0, 4, 1, 2]));
    app.gql_ok(Some(&m), DETACH, json!({ "p": "pp", "m": ids[0] }))
        .await;
    assert_eq!(order().await, want(&[3, 4, 1, 2]));
    let (code, _) = app
        .gql_err(
            Some(&m),
            attach,
            json!({ "p": "pp", "m": ids[0], "pos": -1 }),
        )
        .await;
    assert_eq!(code, "VALIDATION");
}

/// Issue 7 §3: two merchants' `sku-1` are two products.
async fn products_belong_to_merchants(db: Db) {
    let app = TestApp::spawn_with(db, no_workers).await;
    let (a, b) = (app.merchant("mA"), app.merchant("mB"));
    let b1 = id_of(&upload_ok(&app, &b, &png_bytes(20, 20), None).await);
    let b2 = id_of(&upload_ok(&app, &b, &png_bytes(21, 20), None).await);
    let a1 = id_of(&upload_ok(&app, &a, &png_bytes(22, 20), None).await);
    for id in [&b1, &b2] {
        app.gql_ok(
            Some(&b),
            ATTACH,
            json!({ "p": "sku-1", "m": id, "primary": true }),
        )
        .await;
    }
    let d = app
        .gql_ok(
            Some(&a),
            ATTACH,
            json!({ "p": "sku-1", "m": a1, "primary": true }),
        )
        .await;
    assert_eq!(d["attachMediaToProduct"]["position"], 0, "{d}");
    assert_eq!(d["attachMediaToProduct"]["merchantId"], "mA");
    // B's product is untouched: its primary is still b2.
    let d = app
        .gql_ok(None, PRODUCT_MEDIA, json!({ "p": "sku-1", "mid": "mB" }))
        .await;
    let rows = d["productMedia"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{d}");
    assert_eq!(
        (rows[0]["mediaId"].as_str(), rows[0]["isPrimary"].as_bool()),
        (Some(b1.as_str()), Some(false))
    );
    assert_eq!(
        (rows[1]["mediaId"].as_str(), rows[1]["isPrimary"].as_bool()),
        (Some(b2.as_str()), Some(true))
    );
    assert!(rows.iter().all(|r| r["merchantId"] == "mB"));
    // A merchant's own product is the default; A sees only its own row.
    let d = app
        .gql_ok(Some(&a), PRODUCT_MEDIA, json!({ "p": "sku-1" }))
        .await;
    assert_eq!(d["productMedia"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["productMedia"][0]["isPrimary"], true);
    assert_eq!(d["productMedia"][0]["media"]["id"], a1.as_str());
    // B's reorder and detach still work, and touch only B's rows.
    let d = app
        .gql_ok(Some(&b), REORDER, json!({ "p": "sku-1", "ids": [b2, b1] }))
        .await;
    assert_eq!(d["reorderProductMedia"][0]["mediaId"], b2.as_str());
    let d = app
        .gql_ok(Some(&b), DETACH, json!({ "p": "sku-1", "m": b1 }))
        .await;
    assert_eq!(d["detachMediaFromProduct"], true);
    // A cannot reach B's product, nor name B as the merchant.
    let (code, _) = app
        .gql_err(Some(&a), DETACH, json!({ "p": "sku-1", "m": b2 }))
        .await;
    assert_eq!(code, "NOT_FOUND");
    let (code, _) = app
        .gql_err(
            Some(&a),
            DETACH,
            json!({ "p": "sku-1", "m": b2, "mid": "mB" }),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");
    let d = app
        .gql_ok(Some(&a), PRODUCT_MEDIA, json!({ "p": "sku-1" }))
        .await;
    assert_eq!(d["productMedia"][0]["isPrimary"], true, "{d}");
    // Admin and service name the merchant; without it, VALIDATION and nothing changes.
    let service = app.token(smartbot::auth::Role::Service, None);
    for t in [&app.admin, &service] {
        for (q, vars) in [
            (ATTACH, json!({ "p": "sku-1", "m": b1, "primary": true })),
            (DETACH, json!({ "p": "sku-1", "m": b2 })),
            (REORDER, json!({ "p": "sku-1", "ids": [b2] })),
        ] {
            let (code, body) = app.gql_err(Some(t), q, vars).await;
            assert_eq!(code, "VALIDATION", "{body}");
            assert_eq!(body["errors"][0]["extensions"]["field"], "merchantId");
        }
    }
    let (code, _) = app
        .gql_err(None, PRODUCT_MEDIA, json!({ "p": "sku-1" }))
        .await;
    assert_eq!(code, "VALIDATION");
    let d = app
        .gql_ok(
            Some(&app.admin),
            ATTACH,
            json!({ "p": "sku-1", "m": b1, "primary": true, "mid": "mB" }),
        )
        .await;
    assert_eq!(d["attachMediaToProduct"]["isPrimary"], true);
    // Media goes only on its own merchant's products.
    let (code, _) = app
        .gql_err(
            Some(&app.admin),
            ATTACH,
            json!({ "p": "sku-1", "m": a1, "mid": "mB" }),
        )
        .await;
    assert_eq!(code, "VALIDATION");
    let d = app
        .gql_ok(None, PRODUCT_MEDIA, json!({ "p": "sku-1", "mid": "mB" }))
        .await;
    let primaries: Vec<&Value> = d["productMedia"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["isPrimary"] == true)
        .collect();
    assert_eq!(primaries.len(), 1, "{d}");
    assert_eq!(primaries[0]["mediaId"], b1.as_str());
    let d = app
        .gql_ok(None, PRODUCT_MEDIA, json!({ "p": "sku-1", "mid": "mA" }))
        .await;
    assert_eq!(d["productMedia"][0]["isPrimary"], true, "{d}");
}

/// Issue 7 §4: listing is per merchant; one row is public but its private fields are not.
async fn media_visibility(db: Db) {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
    let app = TestApp::spawn_with(db, no_workers).await;
    let (m1, m2) = (app.merchant("m1"), app.merchant("m2"));
    let service = app.token(smartbot::auth::Role::Service, None);
    let x = upload_ok(&app, &m1, &png_bytes(20, 20), None).await;
    let y = upload_ok(&app, &m2, &png_bytes(21, 20), None).await;
    let list = "query($mid: String) { mediaList(first: 5, merchantId: $mid) { totalCount nodes { merchantId ownerId originalName } } }";
    let (code, _) = app.gql_err(None, list, json!({})).await;
    assert_eq!(code, "UNAUTHENTICATED");
    let d = app.gql_ok(Some(&m1), list, json!({})).await;
    assert_eq!(d["mediaList"]["totalCount"], 1, "{d}");
    assert_eq!(d["mediaList"]["nodes"][0]["merchantId"], "m1");
    assert_eq!(d["mediaList"]["nodes"][0]["originalName"], "a.img");
    let (code, _) = app.gql_err(Some(&m1), list, json!({ "mid": "m2" })).await;
    assert_eq!(code, "FORBIDDEN");
    for t in [&app.admin, &service] {
        let d = app.gql_ok(Some(t), list, json!({})).await;
        assert_eq!(d["mediaList"]["totalCount"], 2, "{d}");
        let d = app.gql_ok(Some(t), list, json!({ "mid": "m2" })).await;
        assert_eq!(d["mediaList"]["totalCount"], 1, "{d}");
        assert_eq!(d["mediaList"]["nodes"][0]["ownerId"], "merchant-m2");
    }
    // One READY row is public, without its private fields.
    let one =
        "query($id: ID!) { media(id: $id) { id merchantId ownerId originalName error status } }";
    let xid = id_of(&x);
    for (who, token, private) in [
        ("anonymous", None, false),
        ("other merchant", Some(&m2), false),
        ("owner", Some(&m1), true),
        ("admin", Some(&app.admin), true),
    ] {
        let d = app
            .gql_ok(token.map(String::as_str), one, json!({ "id": xid }))
            .await;
        let m = &d["media"];
        assert_eq!(m["merchantId"], "m1", "{who}");
        assert_eq!(m["originalName"].is_string(), private, "{who}: {d}");
        assert_eq!(m["ownerId"].is_string(), private, "{who}: {d}");
        let (s, b) = app
            .rest(
                Method::GET,
                &format!("/api/media/{xid}"),
                token.map(String::as_str),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{who}: {b}");
        assert_eq!(
            b["media"]["original_name"].is_string(),
            private,
            "{who}: {b}"
        );
        assert_eq!(b["media"]["owner_id"].is_string(), private, "{who}: {b}");
        assert_eq!(b["media"]["merchant_id"], "m1");
    }
    assert_eq!(y["original_name"], "a.img");
    // A failed row: only its owner and admins see it, and its error is a public reason.
    let yid = uuid::Uuid::parse_str(y["id"].as_str().unwrap()).unwrap();
    let row = entity::media_file::Entity::find_by_id(yid)
        .one(&app.server.state.db)
        .await
        .unwrap()
        .unwrap();
    let mut am: entity::media_file::ActiveModel = row.into();
    am.status = Set(entity::MediaStatus::Failed);
    am.error = Set(Some(
        "internal error: database: connection to 10.0.0.5 refused".into(),
    ));
    am.update(&app.server.state.db).await.unwrap();
    let yid = yid.to_string();
    for token in [None, Some(&m1)] {
        let (code, _) = app
            .gql_err(token.map(String::as_str), one, json!({ "id": yid }))
            .await;
        assert_eq!(code, "NOT_FOUND");
        let (s, _) = app
            .rest(
                Method::GET,
                &format!("/api/media/{yid}"),
                token.map(String::as_str),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
    for token in [&m2, &app.admin] {
        let d = app.gql_ok(Some(token), one, json!({ "id": yid })).await;
        assert_eq!(d["media"]["status"], "FAILED");
        let err = d["media"]["error"].as_str().unwrap();
        assert!(
            !err.contains("10.0.0.5") && !err.contains("database"),
            "{err}"
        );
    }
    // A token subject is unique only within its merchant: another merchant's token with the
    // uploader's very `sub` is still another merchant. It sees neither the failed row nor the
    // private fields of the usable one.
    let same_sub = app
        .server
        .state
        .keys
        .issue(
            "merchant-m2",
            smartbot::auth::Role::Merchant,
            Some("m3"),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    let (code, _) = app
        .gql_err(Some(&same_sub), one, json!({ "id": yid }))
        .await;
    assert_eq!(code, "NOT_FOUND");
    let (s, _) = app
        .rest(
            Method::GET,
            &format!("/api/media/{yid}"),
            Some(&same_sub),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let same_sub = app
        .server
        .state
        .keys
        .issue(
            "merchant-m1",
            smartbot::auth::Role::Merchant,
            Some("m3"),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    let d = app.gql_ok(Some(&same_sub), one, json!({ "id": xid })).await;
    assert_eq!(d["media"]["merchantId"], "m1", "{d}");
    assert!(d["media"]["ownerId"].is_null(), "{d}");
    assert!(d["media"]["originalName"].is_null(), "{d}");
}

/// Issue 7 §10: the seed's snake_case upload body, and camelCase; responses stay snake_case.
async fn rest_upload_both_spellings(db: Db) {
    let app = TestApp::spawn_with(db, no_workers).await;
    let m1 = app.merchant("m1");
    let admin = app.admin.clone();
    let jpeg = jpeg_bytes(40, 30);
    let (s, b) = rest_upload(
        &app,
        &admin,
        json!({ "file_data": b64(&jpeg), "file_name": "test.jpg", "mime_type": "image/jpeg", "merchant_id": "m7" }),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let m = &b["media"];
    assert_eq!(
        (
            m["original_name"].as_str(),
            m["mime_type"].as_str(),
            m["merchant_id"].as_str()
        ),
        (Some("test.jpg"), Some("image/jpeg"), Some("m7")),
        "{b}"
    );
    for key in ["thumbnail_url", "created_at", "owner_id", "file_name"] {
        assert!(m.get(key).is_some(), "{key} missing: {b}");
    }
    assert!(m.get("mimeType").is_none(), "{b}");
    // The snake_case claim is checked like the camelCase one.
    let (s, b) = rest_upload(
        &app,
        &m1,
        json!({ "file_data": b64(&png_bytes(9, 9)), "mime_type": "image/jpeg" }),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    let (s, b) = rest_upload(
        &app,
        &m1,
        json!({ "fileData": b64(&png_bytes(9, 9)), "fileName": "c.png", "mimeType": "image/png", "merchantId": "m1" }),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["media"]["original_name"], "c.png");
    let (s, b) = rest_upload(&app, &m1, json!({ "file_name": "x.png" })).await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("fileData")),
        "{b}"
    );
}

/// Issue 7 §9: column limits are VALIDATION before the database (a 500 on PostgreSQL before).
async fn column_limits_are_validation(db: Db) {
    let app = TestApp::spawn_with(db, no_workers).await;
    let m1 = app.merchant("m1");
    let media = id_of(&upload_ok(&app, &m1, &png_bytes(20, 20), None).await);
    let long_product = "p".repeat(129);
    for (q, vars) in [
        (ATTACH, json!({ "p": long_product, "m": media })),
        (DETACH, json!({ "p": long_product, "m": media })),
        (REORDER, json!({ "p": long_product, "ids": [media] })),
        (PRODUCT_MEDIA, json!({ "p": long_product })),
        (ATTACH, json!({ "p": "   ", "m": media })),
    ] {
        let (code, body) = app.gql_err(Some(&m1), q, vars).await;
        assert_eq!(code, "VALIDATION", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "productId");
    }
    // 128 characters (multi-byte ones too) is the limit, not more.
    let max = "é".repeat(128);
    let d = app
        .gql_ok(Some(&m1), ATTACH, json!({ "p": max, "m": media }))
        .await;
    assert_eq!(d["attachMediaToProduct"]["position"], 0);
    let long_merchant = "m".repeat(65);
    let (code, body) = app
        .gql_err(
            Some(&app.admin),
            ATTACH,
            json!({ "p": "sku", "m": media, "mid": long_merchant }),
        )
        .await;
    assert_eq!(
        (code.as_str(), &body["errors"][0]["extensions"]["field"]),
        ("VALIDATION", &json!("merchantId"))
    );
    let png = png_bytes(11, 11);
    for (body, field) in [
        (
            json!({ "fileData": b64(&png), "fileName": "n".repeat(256) }),
            "fileName",
        ),
        (
            json!({ "fileData": b64(&png), "merchantId": long_merchant }),
            "merchantId",
        ),
    ] {
        let (s, b) = rest_upload(&app, &app.admin, body).await;
        assert_eq!(
            (s, b["code"].as_str(), b["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("VALIDATION"), Some(field)),
            "{b}"
        );
    }
    let d = app
        .gql_ok(Some(&m1), "query { mediaList { totalCount } }", json!({}))
        .await;
    assert_eq!(d["mediaList"]["totalCount"], 1);
    let name = "n".repeat(255);
    let (s, b) = rest_upload(
        &app,
        &m1,
        json!({ "fileData": b64(&png), "fileName": name }),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

/// Issue 7 §7: identical bytes uploaded concurrently by one merchant decode once; decodes wait
/// for the budget, and an image larger than the whole budget still runs (alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_uploads_decode_once() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.run_workers = false;
        // Smaller than one decode of the 900x900 image below.
        c.media_decode_budget = 4 << 20;
    })
    .await;
    let (m1, m2) = (app.merchant("m1"), app.merchant("m2"));
    let png = png_bytes(900, 900);
    let media = app.server.state.media.clone();
    let before = media.budget.stats().decodes;
    // Hold the whole budget so every upload has arrived before any decode starts.
    let hold = media.budget.hold(u64::MAX).await.unwrap();
    let mut tasks = Vec::new();
    for token in [&m1, &m1, &m1, &m1, &m1, &m1, &m2, &m2] {
        let (client, url, token, body) = (
            app.client.clone(),
            app.url("/api/media/upload"),
            token.clone(),
            json!({ "fileData": b64(&png), "fileName": "same.png" }),
        );
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while media.budget.stats().waiting + media.uploads.joined() < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "uploads never arrived: {:?}, joined {}",
            media.budget.stats(),
            media.uploads.joined()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(hold);
    let mut ids = Vec::new();
    for t in tasks {
        let (s, b) = t.await.unwrap();
        assert_eq!(s, StatusCode::CREATED, "{b}");
        ids.push((b["media"]["merchant_id"].clone(), id_of(&b["media"])));
    }
    assert_eq!(
        media.budget.stats().decodes - before,
        2,
        "one decode per merchant"
    );
    assert!(ids[..6].iter().all(|i| i == &ids[0]), "{ids:?}");
    assert!(ids[6..].iter().all(|i| i == &ids[6]), "{ids:?}");
    assert_ne!(ids[0], ids[6]);
    assert_eq!(media_rows(&app).await, 2);
    assert_eq!(media.budget.stats().in_use_mib, 0);
}

both_dbs!(
    product_media_positions_stay_dense,
    products_belong_to_merchants,
    media_visibility,
    rest_upload_both_spellings,
    column_limits_are_validation
);

/// Two merchants' rows share the files of the same bytes. One merchant's delete racing the
/// other's upload of those bytes never leaves the upload's row without its files (the delete
/// counted the rows before the upload's went in, and removed the files after the upload found
/// them there).
async fn a_delete_never_takes_the_files_of_another_merchants_upload(db: Db) {
    let app = TestApp::spawn_with(db, no_workers).await;
    let (m1, m2) = (app.merchant("m1"), app.merchant("m2"));
    for round in 0..30 {
        // New bytes every round.
        let png = noise_png(40 + round, 30);
        let first = upload_ok(&app, &m1, &png, None).await;
        let path = format!("/api/media/{}", id_of(&first));
        // The delete starts a little later each round, to land in every part of the upload.
        let delete = async {
            tokio::time::sleep(Duration::from_micros(u64::from(round) * 250)).await;
            app.rest(Method::DELETE, &path, Some(&m1), None).await
        };
        let upload = rest_upload(
            &app,
            &m2,
            json!({ "fileData": b64(&png), "fileName": "same.png" }),
        );
        let ((deleted, d), (uploaded, u)) = tokio::join!(delete, upload);
        assert_eq!(deleted, StatusCode::OK, "{d}");
        assert_eq!(uploaded, StatusCode::CREATED, "{u}");
        for url in [&u["media"]["url"], &u["media"]["thumbnail_url"]] {
            assert_eq!(
                served(&app, url).await,
                StatusCode::OK,
                "round {round}: {url} is gone"
            );
        }
    }
}

/// An image deleted while the media_processing job renders its sizes leaves no file behind: the
/// size the job writes after the delete goes too (it was served at a URL anyone could guess).
///
/// Each round pins the delete inside the render: the queue is paused while the image uploads,
/// the whole decode budget is held, and the queue resumed; the job then waits for the budget
/// mid-render, the delete lands, and only then does the render go on.
async fn a_deleted_images_sizes_do_not_outlive_it(db: Db) {
    use smartbot::queue::QueueName;
    const ROUNDS: u32 = 2;
    let app = TestApp::spawn(db).await;
    let m1 = app.merchant("m1");
    let (queue, media) = (
        app.server.state.queue.clone(),
        app.server.state.media.clone(),
    );
    for round in 0..ROUNDS {
        queue
            .backend()
            .set_paused(QueueName::MediaProcessing, true)
            .await
            .unwrap();
        let m = upload_ok(&app, &m1, &jpeg_bytes(1600 + round, 1200), None).await;
        let hold = media.budget.hold(u64::MAX).await.unwrap();
        queue
            .backend()
            .set_paused(QueueName::MediaProcessing, false)
            .await
            .unwrap();
        crate::common::eventually("the job waits for the budget mid-render", || async {
            match media.budget.stats() {
                s if s.waiting >= 1 => Ok(()),
                s => Err(format!("{s:?}")),
            }
        })
        .await;
        let (s, b) = app
            .rest(
                Method::DELETE,
                &format!("/api/media/{}", id_of(&m)),
                Some(&m1),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        drop(hold);
        crate::common::eventually("the round's job has ended", || async {
            let c = queue.queue_stats(QueueName::MediaProcessing).await.unwrap();
            match c.waiting + c.active + c.delayed {
                0 if c.completed + c.failed > u64::from(round) => Ok(()),
                _ => Err(format!("{c:?}")),
            }
        })
        .await;
        assert_eq!(
            uploads(&app),
            0,
            "round {round}: files outlived their deleted row"
        );
    }
    let c = queue.queue_stats(QueueName::MediaProcessing).await.unwrap();
    assert_eq!(c.failed, 0, "a job for a deleted row failed: {c:?}");
}

both_dbs!(
    a_delete_never_takes_the_files_of_another_merchants_upload,
    a_deleted_images_sizes_do_not_outlive_it
);

/// Uploading again the bytes of a row that FAILED (its files lost, its sizes never made) stores
/// them again in that row, READY, instead of answering the failed row as a duplicate.
#[tokio::test]
async fn uploading_a_failed_images_bytes_again_repairs_it() {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
    let app = TestApp::spawn_with(Db::Sqlite, no_workers).await;
    let m1 = app.merchant("m1");
    let png = noise_png(50, 20);
    let first = upload_ok(&app, &m1, &png, None).await;
    let id: uuid::Uuid = id_of(&first).parse().unwrap();
    let row = entity::media_file::Entity::find_by_id(id)
        .one(&app.server.state.db)
        .await
        .unwrap()
        .unwrap();
    let mut failed: entity::media_file::ActiveModel = row.into();
    failed.status = Set(entity::MediaStatus::Failed);
    failed.error = Set(Some("the original file is missing".into()));
    failed.update(&app.server.state.db).await.unwrap();
    std::fs::remove_dir_all(app.server.state.config.media_dir()).unwrap();
    let again = upload_ok(&app, &m1, &png, None).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["status"], "ready", "{again}");
    for url in [&again["url"], &again["thumbnail_url"]] {
        assert_eq!(served(&app, url).await, StatusCode::OK, "{url}");
    }
    assert_eq!(media_rows(&app).await, 1);
}

/// Changes to one product's media at once take turns: after attaches, detaches, moves and
/// primaries that overlap, positions are still 0..n with exactly one primary, and every call
/// answers as in some serial order (no INTERNAL, no unique-key CONFLICT).
async fn concurrent_changes_keep_a_products_media_dense(db: Db) {
    let app = TestApp::spawn_with(db, no_workers).await;
    let m = app.merchant("m1");
    let mut ids = Vec::new();
    for w in 30..38 {
        ids.push(id_of(&upload_ok(&app, &m, &noise_png(w, 20), None).await));
    }
    let attach = |id: &str, pos: Value, primary: Value| {
        let (app, m, id) = (&app, m.clone(), id.to_owned());
        async move {
            app.gql(
                Some(&m),
                "mutation($p: String!, $m: ID!, $pos: Int, $primary: Boolean) { attachMediaToProduct(productId: $p, mediaId: $m, position: $pos, isPrimary: $primary) { position } }",
                json!({ "p": "busy", "m": id, "pos": pos, "primary": primary }),
            )
            .await
            .1
        }
    };
    let detach = |id: &str| {
        let (app, m, id) = (&app, m.clone(), id.to_owned());
        async move {
            app.gql(Some(&m), DETACH, json!({ "p": "busy", "m": id }))
                .await
                .1
        }
    };
    let check = |round: usize, answers: Vec<Value>| {
        let (app, m) = (&app, m.clone());
        async move {
            for a in &answers {
                let code = &a["errors"][0]["extensions"]["code"];
                assert!(code.is_null() || code == "NOT_FOUND", "round {round}: {a}");
            }
            let d = app
                .gql_ok(Some(&m), PRODUCT_MEDIA, json!({ "p": "busy" }))
                .await;
            let rows = d["productMedia"].as_array().unwrap();
            let positions: Vec<i64> = rows
                .iter()
                .map(|r| r["position"].as_i64().unwrap())
                .collect();
            assert_eq!(
                positions,
                (0..rows.len() as i64).collect::<Vec<_>>(),
                "round {round}: {d}"
            );
            let primaries = rows.iter().filter(|r| r["isPrimary"] == true).count();
            assert_eq!(
                primaries,
                usize::from(!rows.is_empty()),
                "round {round}: {d}"
            );
        }
    };
    for round in 0..4 {
        // Two first attaches on an empty product.
        let (a, b) = tokio::join!(
            attach(&ids[0], Value::Null, Value::Null),
            attach(&ids[1], Value::Null, Value::Null)
        );
        check(round, vec![a, b]).await;
        let (a, b) = tokio::join!(
            attach(&ids[2], Value::Null, Value::Null),
            attach(&ids[3], json!(0), Value::Null)
        );
        check(round, vec![a, b]).await;
        // Two primaries at once, and a move racing a detach of the same media.
        let (a, b) = tokio::join!(
            attach(&ids[1], Value::Null, json!(true)),
            attach(&ids[2], Value::Null, json!(true))
        );
        check(round, vec![a, b]).await;
        let (a, b) = tokio::join!(attach(&ids[3], json!(0), Value::Null), detach(&ids[3]));
        check(round, vec![a, b]).await;
        // Detaches at once, the primary among them, down to nothing.
        let (a, b, c, d) = tokio::join!(
            detach(&ids[0]),
            detach(&ids[1]),
            detach(&ids[2]),
            detach(&ids[3])
        );
        check(round, vec![a, b, c, d]).await;
    }
}

both_dbs!(concurrent_changes_keep_a_products_media_dense);

/// One file variable feeding two fields uploads the same file for each: the second field finds
/// the first's row (the same bytes), where it read an empty file ("the file is empty").
#[tokio::test]
async fn one_file_variable_feeds_two_fields() {
    let app = TestApp::spawn_with(Db::Sqlite, no_workers).await;
    let f = FORMATS[0];
    let form = reqwest::multipart::Form::new()
        .text(
            "operations",
            json!({
                "query": "mutation($f: Upload!) { a: uploadMedia(file: $f) { id size } b: uploadMedia(file: $f) { id size } }",
                "variables": { "f": null },
            })
            .to_string(),
        )
        .text("map", json!({ "0": ["variables.f"] }).to_string())
        .part(
            "0",
            reqwest::multipart::Part::bytes(image(f, 64, 48))
                .file_name("f0")
                .mime_str(f.mime())
                .unwrap(),
        );
    let res = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(app.merchant("m1"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(body["errors"].is_null(), "{body:#}");
    let (a, b) = (&body["data"]["a"], &body["data"]["b"]);
    assert!(a["size"].as_u64().unwrap() > 0, "{body:#}");
    assert_eq!(a, b, "the same bytes are the same row");
}

/// Rendering runs that end without recording anything (their worker killed, the lease
/// reclaimed) still end the row: the job's last attempt only records, so the row is FAILED with
/// a reason, not PROCESSING for good. Here a "worker" takes the job three times and dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_lost_with_their_worker_still_end_the_row() {
    let app = TestApp::spawn_with(Db::Sqlite, no_workers).await;
    let m1 = app.merchant("m1");
    let row = app.upload(&m1, &image(Format::Png, 640, 480), None).await;
    let id = row["id"].as_str().unwrap().to_owned();
    let status = || async {
        app.gql_ok(
            Some(&m1),
            "query($id: ID!) { media(id: $id) { status error } }",
            json!({ "id": id }),
        )
        .await["media"]
            .clone()
    };
    let state = &app.server.state;
    let backend = state.queue.backend().clone();
    for lost in 1..=3 {
        let taken = backend
            .fetch(QueueName::MediaProcessing, 1, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(taken.len(), 1, "run {lost} takes the job");
        // As the handler does first: the row is PROCESSING while it renders.
        {
            use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
            entity::media_file::Entity::update_many()
                .col_expr(
                    entity::media_file::Column::Status,
                    Expr::value(entity::MediaStatus::Processing),
                )
                .filter(entity::media_file::Column::Id.eq(uuid::Uuid::parse_str(&id).unwrap()))
                .exec(&state.db)
                .await
                .unwrap();
        }
        assert_eq!(status().await["status"], "PROCESSING");
        // The worker dies: no renewal, no outcome. Its lease runs out and is reclaimed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            backend
                .recover_stalled(QueueName::MediaProcessing)
                .await
                .unwrap(),
            1
        );
    }
    let workers = smartbot::start_workers(state, vec![QueueName::MediaProcessing]);
    let failed = crate::common::eventually("the row ends", || async {
        let media = status().await;
        match media["status"].as_str() {
            Some("FAILED") => Ok(media),
            _ => Err(media.to_string()),
        }
    })
    .await;
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not finish in 3 attempts")),
        "{failed}"
    );
    workers.stop().await;
}
