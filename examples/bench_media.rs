//! Media benchmark: the seed's pipeline on each image (validate, 200x200 cover thumbnail, 600x600
//! inside, quality 85, output in the input's format), median of ROUNDS, as
//! `benches/peers/bench-media.js` does for sharp.
//!
//!     cargo run --release --example bench_media -- 5 benches/images/*
//!
//! One JSON line per image, then the process's peak RSS. Run with a single image and one round
//! to see the peak memory of one upload of that image.

use std::time::Instant;

use smartbot::media::process::{Limits, SizeSpec, probe, render};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    let files: Vec<String> = args.collect();
    // The bench images are larger than the 5 MB upload default; the limits are not what is measured.
    let limits = Limits {
        max_bytes: 64 << 20,
        ..Limits::default()
    };
    let specs = [SizeSpec::thumbnail(), SizeSpec::medium()];
    for f in &files {
        let bytes = std::fs::read(f).expect("read image");
        let mut times = Vec::with_capacity(rounds);
        let mut sizes = Vec::new();
        for _ in 0..rounds {
            let t0 = Instant::now();
            let p = probe(&bytes, &limits).expect("valid image");
            let out = render(&bytes, &p, &specs, 85).expect("render");
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            sizes = out
                .iter()
                .map(|o| (o.width, o.height, o.bytes.len()))
                .collect();
        }
        times.sort_by(f64::total_cmp);
        let name = std::path::Path::new(f)
            .file_name()
            .unwrap()
            .to_string_lossy();
        println!(
            "{}",
            serde_json::json!({
                "rust": "smartbot", "file": name, "bytes": bytes.len(),
                "median_ms": (times[times.len() / 2] * 10.0).round() / 10.0,
                "outputs": sizes,
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({ "peak_rss_mb": (peak_rss_mb() * 10.0).round() / 10.0 })
    );
}
