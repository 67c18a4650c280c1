//! The queue over GraphQL and /metrics, on the embedded backend and on Redis.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use smartbot::queue::{Outcome, QueueName};

use crate::common::{Db, TestApp, redis_url};

async fn spawn(redis: bool) -> TestApp {
    spawn_workers(redis, true).await
}

async fn spawn_workers(redis: bool, workers: bool) -> TestApp {
    TestApp::spawn_with(Db::Sqlite, |c| {
        c.run_workers = workers;
        if redis {
            c.redis_url = Some(redis_url());
            c.redis_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
        }
    })
    .await
}

const ENQUEUE: &str = r#"mutation($q: QueueName!, $data: JSON!, $opts: JSON) {
  enqueueJob(queue: $q, name: "send", data: $data, options: $opts) { id state attemptsMade maxAttempts priority data }
}"#;

async fn queue_api(redis: bool) {
    // This test plays the worker itself (message_sending has a handler now).
    let app = spawn_workers(redis, false).await;
    enqueue_dedupes_and_refuses_bad_input(&app).await;
    failures_are_recorded_per_attempt(&app).await;
    metrics_and_job_actions(&app).await;
    roles_metrics_and_readiness(&app, redis).await;
    pauses_and_resumes_at_once_each_answer_their_own(&app).await;
}

/// Pauses and resumes of one queue at once each answer with the state they set, as in a serial
/// run; the queue ends in one of the two states.
async fn pauses_and_resumes_at_once_each_answer_their_own(app: &TestApp) {
    let call = |verb: &'static str| async move {
        let d = app
            .gql_ok(
                Some(&app.admin),
                &format!("mutation {{ {verb}(queue: ORDER_PROCESSING) {{ paused }} }}"),
                json!({}),
            )
            .await;
        (verb, d[verb]["paused"].clone())
    };
    for _ in 0..10 {
        let got = tokio::join!(
            call("pauseQueue"),
            call("resumeQueue"),
            call("pauseQueue"),
            call("resumeQueue")
        );
        for (verb, paused) in [got.0, got.1, got.2, got.3] {
            assert_eq!(
                paused,
                verb == "pauseQueue",
                "{verb} answered paused: {paused}"
            );
        }
    }
    call("resumeQueue").await;
}

/// The four queues; a job id enqueues once; bad input enqueues nothing.
async fn enqueue_dedupes_and_refuses_bad_input(app: &TestApp) {
    let admin = Some(app.admin.as_str());
    let data = app
        .gql_ok(
            admin,
            "{ queues { name waiting active delayed completed failed paused } }",
            json!({}),
        )
        .await;
    let names: Vec<&str> = data["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "media_processing",
            "message_sending",
            "order_processing",
            "webhook_delivery"
        ]
    );

    let job = app
        .gql_ok(admin, ENQUEUE, json!({ "q": "MESSAGE_SENDING", "data": { "to": "263781564004" }, "opts": { "jobId": "m-1", "attempts": 2, "priority": "high" } }))
        .await;
    assert_eq!(
        job["enqueueJob"],
        json!({ "id": "m-1", "state": "WAITING", "attemptsMade": 0, "maxAttempts": 2, "priority": "HIGH", "data": { "to": "263781564004" } })
    );
    // Same id again: still one job.
    app.gql_ok(
        admin,
        ENQUEUE,
        json!({ "q": "MESSAGE_SENDING", "data": {}, "opts": { "jobId": "m-1" } }),
    )
    .await;
    let stats = app
        .gql_ok(
            admin,
            "{ queueStats(queue: MESSAGE_SENDING) { name waiting } }",
            json!({}),
        )
        .await;
    assert_eq!(
        stats["queueStats"],
        json!({ "name": "message_sending", "waiting": 1 })
    );

    // Bad input enqueues nothing.
    for (opts, field) in [
        (json!({ "attempts": 0 }), "attempts"),
        (json!({ "jobId": "has space" }), "jobId"),
        (json!({ "bogus": 1 }), "bogus"),
        (json!({ "priority": "urgent" }), "priority"),
        (json!({ "attempts": "three" }), "attempts"),
        (json!([1, 2]), "options"),
    ] {
        let (code, body) = app
            .gql_err(
                admin,
                ENQUEUE,
                json!({ "q": "MESSAGE_SENDING", "data": {}, "opts": opts }),
            )
            .await;
        assert_eq!(code, "VALIDATION", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
        // In JSON's words, not Rust's (`u32`, `struct JobOptions`).
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(
            !["u32", "u64", "struct"].iter().any(|r| message.contains(r)),
            "{message}"
        );
    }
    let big = "x".repeat(smartbot::queue::MAX_PAYLOAD_BYTES + 10);
    let (code, _) = app
        .gql_err(
            admin,
            ENQUEUE,
            json!({ "q": "ORDER_PROCESSING", "data": { "b": big } }),
        )
        .await;
    assert_eq!(code, "PAYLOAD_TOO_LARGE");
    let (_, body) = app
        .gql(admin, ENQUEUE, json!({ "q": "NOT_A_QUEUE", "data": {} }))
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("NOT_A_QUEUE"),
        "{body}"
    );
    // A delivery job's body is signed with a merchant's secret: no forged body gets signed.
    let (code, body) = app
        .gql_err(
            admin,
            ENQUEUE,
            json!({ "q": "WEBHOOK_DELIVERY", "data": { "webhook_id": uuid::Uuid::now_v7(), "body": "{\"forged\":true}" } }),
        )
        .await;
    assert_eq!(code, "VALIDATION", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], "queue", "{body}");
    let stats = app
        .gql_ok(admin, "{ queues { waiting delayed } }", json!({}))
        .await;
    let total: u64 = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["waiting"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1, "only m-1 was ever enqueued");
}

/// Two failed attempts of m-1, each recorded with its error and time.
async fn failures_are_recorded_per_attempt(app: &TestApp) {
    let admin = Some(app.admin.as_str());
    // Fail it twice through the backend, as a worker would.
    let backend = app.server.state.queue.backend().clone();
    for attempt in 1..=2 {
        let l = backend
            .fetch(QueueName::MessageSending, 1, Duration::from_secs(30))
            .await
            .unwrap()
            .remove(0);
        let retry_in = (attempt < 2).then_some(Duration::ZERO);
        backend
            .finish(
                QueueName::MessageSending,
                "m-1",
                &l.token,
                attempt,
                Outcome::Failed {
                    error: format!("503 from Cloud API ({attempt})"),
                    retry_in,
                },
            )
            .await
            .unwrap();
    }
    let failed = app
        .gql_ok(admin, "{ failedJobs(queue: MESSAGE_SENDING, first: 10) { totalCount edges { node { id state attemptsMade lastError errors { attempt error at } finishedAt } } } }", json!({}))
        .await;
    let node = &failed["failedJobs"]["edges"][0]["node"];
    assert_eq!(failed["failedJobs"]["totalCount"], 1);
    assert_eq!(node["state"], "FAILED");
    assert_eq!(node["lastError"], "503 from Cloud API (2)");
    let errors: Vec<(u64, &str)> = node["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["attempt"].as_u64().unwrap(), e["error"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        vec![(1, "503 from Cloud API (1)"), (2, "503 from Cloud API (2)")]
    );
    // `at` is a DateTime (an epoch-ms Int overflows GraphQL's 32-bit Int), and it is now-ish.
    for e in node["errors"].as_array().unwrap() {
        let at = e["at"]
            .as_str()
            .unwrap_or_else(|| panic!("at is not a DateTime: {e}"));
        let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
        let age = chrono::Utc::now().signed_duration_since(at);
        assert!(
            age >= chrono::Duration::zero() && age < chrono::Duration::minutes(10),
            "{at}"
        );
    }
    assert!(node["finishedAt"].is_string());
}

/// /metrics counts what the test did; retry, pause, resume and remove act on the queue.
async fn metrics_and_job_actions(app: &TestApp) {
    let admin = Some(app.admin.as_str());
    let backend = app.server.state.queue.backend().clone();
    // /metrics reports what this test did: one job enqueued and one duplicate on message_sending,
    // and (from the background-refreshed gauges) one failed job; two jobs waiting on
    // order_processing, which has no handler in this build.
    for i in 0..2 {
        app.gql_ok(
            admin,
            ENQUEUE,
            json!({ "q": "ORDER_PROCESSING", "data": { "i": i } }),
        )
        .await;
    }
    let expected = [
        r#"smartbot_jobs_enqueued_total{queue="message_sending"} 1"#,
        r#"smartbot_jobs_duplicate_total{queue="message_sending"} 1"#,
        r#"smartbot_jobs_enqueued_total{queue="order_processing"} 2"#,
        r#"smartbot_jobs_duplicate_total{queue="order_processing"} 0"#,
        r#"smartbot_queue_jobs{queue="message_sending",state="failed"} 1"#,
        r#"smartbot_queue_jobs{queue="message_sending",state="waiting"} 0"#,
        r#"smartbot_queue_jobs{queue="order_processing",state="waiting"} 2"#,
    ];
    let start = std::time::Instant::now();
    loop {
        let (status, body) = app.rest(Method::GET, "/metrics", None, None).await;
        assert_eq!(status, 200);
        let text = body.as_str().unwrap().to_owned();
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|e| !text.lines().any(|l| l == *e))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "missing {missing:?} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let retried = app
        .gql_ok(
            admin,
            r#"mutation { retryJob(queue: MESSAGE_SENDING, id: "m-1") { state attemptsMade } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        retried["retryJob"],
        json!({ "state": "WAITING", "attemptsMade": 0 })
    );
    let (code, _) = app
        .gql_err(
            admin,
            r#"mutation { retryJob(queue: MESSAGE_SENDING, id: "m-1") { state } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "CONFLICT");
    let (code, _) = app
        .gql_err(
            admin,
            r#"{ job(queue: MESSAGE_SENDING, id: "nope") { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");

    let paused = app
        .gql_ok(
            admin,
            "mutation { pauseQueue(queue: MESSAGE_SENDING) { paused } }",
            json!({}),
        )
        .await;
    assert_eq!(paused["pauseQueue"]["paused"], true);
    assert!(
        backend
            .fetch(QueueName::MessageSending, 1, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    let resumed = app
        .gql_ok(
            admin,
            "mutation { resumeQueue(queue: MESSAGE_SENDING) { paused } }",
            json!({}),
        )
        .await;
    assert_eq!(resumed["resumeQueue"]["paused"], false);
    let removed = app
        .gql_ok(
            admin,
            r#"mutation { removeJob(queue: MESSAGE_SENDING, id: "m-1") }"#,
            json!({}),
        )
        .await;
    assert_eq!(removed["removeJob"], true);
    // An id no job can have is VALIDATION, on every call that takes one; a well-formed id of no
    // job is `false` for removeJob (as BullMQ's remove), NOT_FOUND where a job is returned.
    for doc in [
        r#"mutation($id: String!) { removeJob(queue: MESSAGE_SENDING, id: $id) }"#,
        r#"mutation($id: String!) { retryJob(queue: MESSAGE_SENDING, id: $id) { state } }"#,
        r#"query($id: String!) { job(queue: MESSAGE_SENDING, id: $id) { state } }"#,
    ] {
        for id in ["", "a/b", " m-1", &"x".repeat(129)] {
            let (code, body) = app.gql_err(admin, doc, json!({ "id": id })).await;
            assert_eq!(code, "VALIDATION", "{doc} {id:?}: {body}");
            assert_eq!(body["errors"][0]["extensions"]["field"], "id", "{body}");
        }
    }
    let gone = app
        .gql_ok(
            admin,
            r#"mutation { removeJob(queue: MESSAGE_SENDING, id: "m-1") }"#,
            json!({}),
        )
        .await;
    assert_eq!(gone["removeJob"], false);
    let (code, _) = app
        .gql_err(
            admin,
            r#"mutation { retryJob(queue: MESSAGE_SENDING, id: "m-1") { state } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
}

/// Roles, the histograms on /metrics, and /ready naming the backend.
async fn roles_metrics_and_readiness(app: &TestApp, redis: bool) {
    // Roles: merchants and anonymous callers see nothing; service reads; only admin changes.
    let merchant = app.merchant("m1");
    let (code, _) = app
        .gql_err(Some(&merchant), "{ queues { name } }", json!({}))
        .await;
    assert_eq!(code, "FORBIDDEN");
    let (code, _) = app.gql_err(None, "{ queues { name } }", json!({})).await;
    assert_eq!(code, "UNAUTHENTICATED");
    let service = app.token(smartbot::auth::Role::Service, None);
    app.gql_ok(Some(&service), "{ queues { name } }", json!({}))
        .await;
    let (code, _) = app
        .gql_err(
            Some(&service),
            "mutation { pauseQueue(queue: MEDIA_PROCESSING) { paused } }",
            json!({}),
        )
        .await;
    assert_eq!(code, "FORBIDDEN");

    // /metrics: the histograms are there too.
    let (status, body) = app.rest(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap();
    for needle in [
        "# TYPE smartbot_job_duration_seconds histogram",
        "# TYPE smartbot_job_pickup_latency_seconds histogram",
        "# TYPE smartbot_jobs_retried counter",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    // /ready names the queue backend's dependency.
    let (status, body) = app.rest(Method::GET, "/ready", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["checks"]["redis"].is_string(), redis, "{body}");
}

/// With METRICS_TOKEN set, /metrics needs it as a bearer token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_token_guards_metrics() {
    let app = TestApp::spawn_with(Db::Sqlite, |c| {
        c.metrics_token = Some("scrape-secret-123".into());
    })
    .await;
    let get = |auth: Option<&'static str>| {
        let mut req = app.client.get(app.url("/metrics"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer scrape-secret-12"),
        Some("scrape-secret-123"),
    ] {
        let res = get(auth).await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHENTICATED", "{body}");
    }
    let res = get(Some("Bearer scrape-secret-123")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("smartbot_jobs_enqueued_total")
    );
}

/// A media job asking for an enormous size fails once, permanently, with a clear error; it
/// neither aborts the process nor comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_media_job_fails_permanently() {
    let app = spawn(false).await;
    let admin = Some(app.admin.as_str());
    let data = json!({
        "mediaId": uuid::Uuid::now_v7().to_string(),
        "options": { "sizes": [{ "name": "huge", "width": 100000, "height": 100000, "fit": "cover" }] }
    });
    let job = app
        .gql_ok(
            admin,
            ENQUEUE,
            json!({ "q": "MEDIA_PROCESSING", "data": data, "opts": { "jobId": "huge-1", "attempts": 5 } }),
        )
        .await;
    assert_eq!(job["enqueueJob"]["id"], "huge-1");
    let start = std::time::Instant::now();
    let node = loop {
        let j = app
            .gql_ok(
                admin,
                r#"{ job(queue: MEDIA_PROCESSING, id: "huge-1") { state attemptsMade lastError } }"#,
                json!({}),
            )
            .await;
        if j["job"]["state"] != "WAITING" && j["job"]["state"] != "ACTIVE" {
            break j["job"].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the job never ran: {j}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(node["state"], "FAILED", "{node}");
    assert_eq!(
        node["attemptsMade"], 1,
        "a bad payload is not retried: {node}"
    );
    let err = node["lastError"].as_str().unwrap();
    assert!(
        err.contains("100000x100000") && err.contains("4096"),
        "{err}"
    );
    // The process is alive and serving.
    let (status, _) = app.rest(Method::GET, "/health", None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_api_embedded() {
    queue_api(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_api_redis() {
    queue_api(true).await
}

/// `failedJobs` pages by key: jobs that fail between two pages (they come first, being newer)
/// neither repeat a job on the next page nor push one off it. Offset cursors repeated them.
async fn failed_jobs_page_by_key(redis: bool) {
    let app = spawn_workers(redis, false).await;
    let admin = Some(app.admin.as_str());
    let backend = app.server.state.queue.backend().clone();
    let fail = |n: std::ops::Range<usize>| {
        let (app, backend) = (&app, backend.clone());
        async move {
            for i in n {
                let id = format!("f-{i}");
                app.gql_ok(
                    admin,
                    ENQUEUE,
                    json!({ "q": "MESSAGE_SENDING", "data": {}, "opts": { "jobId": id, "attempts": 1 } }),
                )
                .await;
                let l = backend
                    .fetch(QueueName::MessageSending, 1, Duration::from_secs(30))
                    .await
                    .unwrap()
                    .remove(0);
                assert_eq!(l.job.id, id);
                backend
                    .finish(
                        QueueName::MessageSending,
                        &id,
                        &l.token,
                        1,
                        Outcome::Failed {
                            error: "final".into(),
                            retry_in: None,
                        },
                    )
                    .await
                    .unwrap();
            }
        }
    };
    const PAGE: &str = r#"query($after: String) {
      failedJobs(queue: MESSAGE_SENDING, first: 3, after: $after) {
        totalCount pageInfo { hasNextPage hasPreviousPage endCursor } edges { node { id } }
      }
    }"#;
    let ids = |data: &serde_json::Value| -> Vec<String> {
        data["failedJobs"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    fail(0..6).await;
    let first = app.gql_ok(admin, PAGE, json!({})).await;
    assert_eq!(first["failedJobs"]["pageInfo"]["hasNextPage"], true);
    assert_eq!(first["failedJobs"]["pageInfo"]["hasPreviousPage"], false);
    fail(6..8).await;
    let after = first["failedJobs"]["pageInfo"]["endCursor"].clone();
    let second = app.gql_ok(admin, PAGE, json!({ "after": after })).await;
    assert_eq!(second["failedJobs"]["totalCount"], 8);
    assert_eq!(second["failedJobs"]["pageInfo"]["hasNextPage"], false);
    assert_eq!(second["failedJobs"]["pageInfo"]["hasPreviousPage"], true);
    let mut seen = [ids(&first), ids(&second)].concat();
    seen.sort();
    assert_eq!(seen, (0..6).map(|i| format!("f-{i}")).collect::<Vec<_>>());
    // A whole walk now sees all eight, each once, newest first.
    let mut walk = vec![];
    let mut after = serde_json::Value::Null;
    loop {
        let page = app.gql_ok(admin, PAGE, json!({ "after": after })).await;
        walk.extend(ids(&page));
        if page["failedJobs"]["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = page["failedJobs"]["pageInfo"]["endCursor"].clone();
    }
    let mut sorted = walk.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((walk.len(), sorted.len()), (8, 8), "{walk:?}");
    // An offset cursor from before is refused, not read as a position.
    let old = smartbot::pagination::encode_cursor("failed", "3");
    let (_, err) = app.gql(admin, PAGE, json!({ "after": old })).await;
    assert_eq!(
        err["errors"][0]["extensions"]["code"], "VALIDATION",
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_page_by_key_embedded() {
    failed_jobs_page_by_key(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_page_by_key_redis() {
    failed_jobs_page_by_key(true).await
}
