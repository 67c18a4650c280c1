//! The decode-budget benchmark (issue 7 §7): a burst of uploads of a 160 KB all-zero 8192x4882
//! RGBA PNG, which decodes to 160 MB of pixels, against an in-process server on 127.0.0.1, with
//! the media_processing workers on. Prints the process's peak RSS (VmHWM), which covers the
//! server, its workers and this client.
//!
//!     cargo run --release --example bench_media_burst -- distinct 100
//!     cargo run --release --example bench_media_burst -- same 100
//!
//! `distinct`: every upload has different bytes (a different tEXt chunk), spread over 10
//! merchants, so every upload decodes. `same`: one merchant uploads identical bytes, which decode
//! once. `MEDIA_DECODE_BUDGET_MB` (default 512) sets the budget.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use smartbot::{Config, auth::Role};

const W: u32 = 8192;
const H: u32 = 4882;

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// The all-zero RGBA PNG, written row by row so the client never holds the pixels.
fn zero_png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, W, H);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::High);
    let mut w = enc.write_header().unwrap();
    let mut sw = w.stream_writer().unwrap();
    let row = vec![0u8; W as usize * 4];
    for _ in 0..H {
        std::io::Write::write_all(&mut sw, &row).unwrap();
    }
    sw.finish().unwrap();
    drop(w);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The same image with a tEXt chunk after IHDR, so its bytes (and sha256) differ.
fn tagged(png: &[u8], i: usize) -> Vec<u8> {
    let ihdr_end = 8 + 4 + 4 + 13 + 4;
    let text = format!("Comment\0burst-{i}");
    let mut chunk = Vec::new();
    chunk.extend_from_slice(&(text.len() as u32).to_be_bytes());
    let mut typed = b"tEXt".to_vec();
    typed.extend_from_slice(text.as_bytes());
    chunk.extend_from_slice(&typed);
    chunk.extend_from_slice(&crc32(&typed).to_be_bytes());
    let mut out = png[..ihdr_end].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "distinct".into());
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(100);
    assert!(
        mode == "same" || mode == "distinct",
        "mode is same|distinct"
    );

    let png = zero_png();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.bind_addr = [127, 0, 0, 1].into();
    config.port = 0;
    config.rate_limit = None;
    config.jwt_secret = Some("bench-secret-bench-secret-bench-secret".into());
    config.seed_templates = false;
    if let Ok(mb) = std::env::var("MEDIA_DECODE_BUDGET_MB") {
        config.media_decode_budget = mb.parse::<u64>().expect("MEDIA_DECODE_BUDGET_MB") << 20;
    }
    let budget_mb = config.media_decode_budget >> 20;
    let server = smartbot::spawn(config).await.unwrap();
    let issue = |merchant: &str| {
        server
            .state
            .keys
            .issue(
                &format!("bench-{merchant}"),
                Role::Merchant,
                Some(merchant),
                Duration::from_secs(3600),
            )
            .unwrap()
    };
    let admin = server
        .state
        .keys
        .issue("bench-admin", Role::Admin, None, Duration::from_secs(3600))
        .unwrap();
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let requests: Vec<(String, String)> = (0..n)
        .map(|i| {
            if mode == "same" {
                (issue("m1"), b64(&png))
            } else {
                (issue(&format!("m{}", i % 10)), b64(&tagged(&png, i)))
            }
        })
        .collect();
    let rss_before = status_kb("VmRSS:");
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(token, data)| {
            let (client, url) = (client.clone(), server.url("/api/media/upload"));
            tokio::spawn(async move {
                let res = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({ "file_data": data, "file_name": "zero.png", "mime_type": "image/png" }))
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                let body: Value = res.json().await.unwrap();
                (status, body)
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        if status.is_success() {
            ok += 1;
        } else {
            eprintln!("{status}: {body}");
        }
    }
    let uploads_s = t0.elapsed().as_secs_f64();
    // Then wait for the media_processing workers to make every `medium` variant.
    let deadline = Instant::now() + Duration::from_secs(1800);
    let rows = loop {
        let res: Value = client
            .post(server.url("/graphql"))
            .bearer_auth(&admin)
            .json(&json!({ "query": "{ mediaList(first: 100) { totalCount nodes { status variants } } }" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nodes = res["data"]["mediaList"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let done = nodes.iter().all(|m| {
            m["variants"].as_array().is_some_and(|v| !v.is_empty()) || m["status"] == "FAILED"
        });
        if done || Instant::now() > deadline {
            break res["data"]["mediaList"]["totalCount"].clone();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let stats = server.state.media.budget.stats();
    println!(
        "{}",
        json!({
            "mode": mode, "uploads": n, "ok": ok, "rows": rows,
            "png_bytes": png.len(), "decode_budget_mb": budget_mb,
            "decodes": stats.decodes,
            "uploads_s": (uploads_s * 10.0).round() / 10.0,
            "total_s": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "rss_before_burst_mb": rss_before / 1024,
            "peak_rss_mb": status_kb("VmHWM:") / 1024,
        })
    );
    server.stop().await.unwrap();
}
