//! The `smartbot` binary's start-up refusals: a setting that is wrong stops it with an error on
//! stderr that names the setting (and never shows a password), before anything is served.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Runs `smartbot args…` in an empty directory with `env` (and none of the caller's settings);
/// returns its exit code and stderr. A run that does not end within 30 s is killed and fails
/// the test: it started serving instead of refusing.
fn run(args: &[&str], env: &[(&str, &str)], dotenv: Option<&str>) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(text) = dotenv {
        std::fs::write(dir.path().join(".env"), text).unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smartbot"));
    cmd.args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BIND_ADDR", "127.0.0.1")
        .env("PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn smartbot");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("smartbot {args:?} with {env:?} did not stop: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}

/// Arguments, environment, `.env`, and what stderr must say.
type Case<'a> = (
    &'a [&'a str],
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
    &'a str,
);

#[test]
fn bad_settings_stop_start_up_naming_them() {
    let cases: [Case; 6] = [
        // A line dotenvy cannot read used to drop it and every line after it, silently.
        (
            &["serve"],
            &[],
            Some("this is not valid\nPORT=1\n"),
            "invalid .env",
        ),
        (&["serve"], &[("RUST_LOG", "[[")], None, "invalid RUST_LOG"),
        (
            &["serve"],
            &[("RUST_LOG", "foo=notalevel")],
            None,
            "invalid RUST_LOG",
        ),
        (
            &["serve"],
            &[("DATABASE_URL", "postgres://u:S3CRETPW@127.0.0.1:99999/x")],
            None,
            "invalid DATABASE_URL",
        ),
        (
            &["serve"],
            &[("REDIS_URL", "http://:S3CRETPW@127.0.0.1:6379")],
            None,
            "invalid REDIS_URL",
        ),
        (
            &["worker", "--concurrency", "media_processing=0"],
            &[],
            None,
            "invalid --concurrency",
        ),
    ];
    for (args, env, dotenv, want) in cases {
        let (code, err) = run(args, env, dotenv);
        assert_eq!(code, 1, "{args:?} {env:?}: {err}");
        assert!(err.contains(want), "{args:?} {env:?}: {err}");
        assert!(!err.contains("S3CRETPW"), "a password in the error: {err}");
    }
}
