//! The scheduled batch job can be triggered on demand and runs through the pool.

mod common;

use common::{Server, http};

fn trigger(srv: &Server, tasks: u32, auth: Option<&str>) -> (u16, serde_json::Value) {
    let body = format!(r#"{{"kind":"full_sync","tasks":{tasks}}}"#);
    let h: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
    let (status, body) = http(srv.addr, "POST", "/admin/batch", Some(&body), &h);
    (
        status,
        serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn admin_batch_runs_tasks_on_the_pool() {
    let srv = Server::start(&[]);
    let (status, v) = trigger(&srv, 40, None);
    assert_eq!(status, 200);
    assert_eq!(
        v["submitted"].as_u64().unwrap() + v["rejected"].as_u64().unwrap(),
        40
    );
    let ok = v["submitted"].as_u64().unwrap() as f64;
    srv.wait_metric(
        "game_batch_tasks_total{kind=\"full_sync\",result=\"ok\"}",
        |x| x == ok,
    )
    .await;
    // The pool saw them under their kind.
    assert!(srv.metrics().contains("full_sync"));
    let (status, _) = http(
        srv.addr,
        "POST",
        "/admin/batch",
        Some(r#"{"kind":"defrag","tasks":1}"#),
        &[],
    );
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_surge_beyond_the_queue_is_rejected_not_buffered() {
    let srv = Server::start(&["--pool-max-workers", "2", "--pool-queue", "16"]);
    let (_, v) = trigger(&srv, 500, None);
    let rejected = v["rejected"].as_u64().unwrap();
    assert!(rejected > 0, "{v}");
    assert_eq!(
        srv.metric("game_batch_tasks_total{kind=\"full_sync\",result=\"rejected\"}"),
        rejected as f64
    );
}

#[tokio::test]
async fn admin_needs_the_admin_token_outside_dev_mode() {
    let srv = Server::start_prod(&["--admin-token", "let-me-in"]);
    assert_eq!(trigger(&srv, 1, None).0, 401);
    assert_eq!(trigger(&srv, 1, Some("Bearer wrong")).0, 401);
    assert_eq!(trigger(&srv, 1, Some("Bearer let-me-in")).0, 200);
    // No dev login outside dev mode.
    assert_eq!(http(srv.addr, "POST", "/login", Some("{}"), &[]).0, 404);
}

#[tokio::test]
async fn full_sync_also_runs_on_its_schedule() {
    let srv = Server::start(&["--batch-every-secs", "1", "--batch-tasks", "5"]);
    srv.wait_metric(
        "game_batch_tasks_total{kind=\"full_sync\",result=\"ok\"}",
        |v| v >= 10.0,
    )
    .await;
}
