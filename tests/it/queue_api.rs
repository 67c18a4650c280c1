//! The queue over GraphQL and /metrics, on the embedded backend and on Redis.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use smartbot::queue::{Outcome, QueueName};

use crate::common::{Db, TestApp, redis_url};

async fn spawn(redis: bool) -> TestApp {
    TestApp::spawn_with(Db::Sqlite, |c| {
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
    let app = spawn(redis).await;
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
        (json!({ "bogus": 1 }), "options"),
        (json!({ "priority": "urgent" }), "options"),
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
        .gql_ok(admin, "{ failedJobs(queue: MESSAGE_SENDING, first: 10) { totalCount edges { node { id state attemptsMade lastError errors { attempt error } finishedAt } } } }", json!({}))
        .await;
    let node = &failed["failedJobs"]["edges"][0]["node"];
    assert_eq!(failed["failedJobs"]["totalCount"], 1);
    assert_eq!(node["state"], "FAILED");
    assert_eq!(node["lastError"], "503 from Cloud API (2)");
    assert_eq!(
        node["errors"],
        json!([{ "attempt": 1, "error": "503 from Cloud API (1)" }, { "attempt": 2, "error": "503 from Cloud API (2)" }])
    );
    assert!(node["finishedAt"].is_string());

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

    // /metrics: Prometheus text with depth per state, counters and histograms.
    let (status, body) = app.rest(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap();
    for needle in [
        r#"smartbot_queue_jobs{queue="message_sending",state="waiting"} 0"#,
        r#"smartbot_queue_jobs{queue="media_processing",state="failed"} 0"#,
        "# TYPE smartbot_jobs_enqueued counter",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_api_embedded() {
    queue_api(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_api_redis() {
    queue_api(true).await
}
