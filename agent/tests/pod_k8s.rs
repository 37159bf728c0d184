//! The pod directory against an API server of our own: real HTTP, the real kube client and
//! reflector; the server answers list and watch requests for pods from a recorded event log
//! (resuming a watch from its resourceVersion, as the API server does). Covered: the node
//! field selector, a pod deleted, a pod restarted with a new UID, an API that goes away (pods
//! change meanwhile) and comes back on the same address; and no API at all.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent::transforms::pod::k8s::{K8sArgs, PodDirectory, start, watch_node};
use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    response::Response,
    routing::get,
};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

#[derive(Default)]
struct Api {
    /// (resourceVersion, type, pod) in order.
    log: Vec<(u64, &'static str, Value)>,
    pods: HashMap<String, Value>,
    rv: u64,
    selectors: Vec<String>,
}

#[derive(Clone)]
struct Fake {
    api: Arc<Mutex<Api>>,
    live: broadcast::Sender<(u64, &'static str, Value)>,
    /// Set once when the API goes away. A state, not a `Notify`: `notify_waiters` reaches only
    /// futures that exist at that instant, and a watch stream between two events had none
    /// (CI once saw the outage never noticed: that stream stayed open).
    down: Arc<watch::Sender<bool>>,
}

fn pod(name: &str, uid: &str, node: &str, container_id: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "games", "uid": uid},
        "spec": {"nodeName": node, "containers": [{"name": "game-server", "image": "game"}]},
        "status": {"containerStatuses": [{"name": "game-server", "containerID": format!("containerd://{container_id}"),
            "image": "game", "imageID": "game", "ready": true, "restartCount": 0}]}
    })
}

impl Fake {
    fn new() -> Self {
        Self {
            api: Arc::default(),
            live: broadcast::channel(1024).0,
            down: Arc::new(watch::channel(false).0),
        }
    }

    fn change(&self, kind: &'static str, mut p: Value) {
        let mut api = self.api.lock().unwrap();
        api.rv += 1;
        let rv = api.rv;
        p["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = p["metadata"]["uid"].as_str().unwrap().to_owned();
        if kind == "DELETED" {
            api.pods.remove(&uid);
        } else {
            api.pods.insert(uid, p.clone());
        }
        api.log.push((rv, kind, p.clone()));
        let _ = self.live.send((rv, kind, p));
    }

    /// Serves on `addr` (port 0: any) until [`Fake::stop`].
    async fn serve(&self, addr: SocketAddr) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/api/v1/pods", get(pods))
            .with_state(self.clone());
        let mut down = self.down.subscribe();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = down.wait_for(|d| *d).await;
                })
                .await
                .unwrap();
        });
        addr
    }

    /// The API goes away: the listener closes and open watches end.
    fn stop(&self) {
        self.down.send_replace(true);
    }
}

fn on_node(p: &Value, selector: &str) -> bool {
    match selector.strip_prefix("spec.nodeName=") {
        Some(node) => p["spec"]["nodeName"] == node,
        None => true,
    }
}

async fn pods(State(f): State<Fake>, Query(q): Query<HashMap<String, String>>) -> Response {
    // A request that reaches a server going away (e.g. a re-watch on a kept-alive connection
    // right after the last watch ended) gets what an API server shutting down answers.
    if *f.down.borrow() {
        return Response::builder()
            .status(503)
            .body(Body::from("shutting down"))
            .unwrap();
    }
    let selector = q.get("fieldSelector").cloned().unwrap_or_default();
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    // Subscribe before reading the log, so nothing falls between the two.
    let mut live = f.live.subscribe();
    let (backlog, rv) = {
        let mut api = f.api.lock().unwrap();
        api.selectors.push(selector.clone());
        if !watch {
            let mut items: Vec<Value> = api
                .pods
                .values()
                .filter(|p| on_node(p, &selector))
                .cloned()
                .collect();
            items.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap().to_owned());
            let list = json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": api.rv.to_string()}, "items": items});
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(list.to_string()))
                .unwrap();
        }
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(api.rv);
        let backlog: Vec<_> = api
            .log
            .iter()
            .filter(|(rv, _, _)| *rv > from)
            .cloned()
            .collect();
        (backlog, api.rv)
    };
    let mut down = f.down.subscribe();
    let sel = selector.clone();
    let line = move |(_, kind, p): (u64, &'static str, Value)| {
        Ok::<_, std::convert::Infallible>(format!("{}\n", json!({"type": kind, "object": p})))
    };
    let live = async_stream(move |tx| async move {
        loop {
            tokio::select! {
                _ = async { let _ = down.wait_for(|d| *d).await; } => break,
                ev = live.recv() => match ev {
                    Ok(ev) if ev.0 > rv => { if tx.send(ev).await.is_err() { break } }
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
    });
    let stream = futures::stream::iter(backlog)
        .chain(live)
        .filter(move |(_, _, p)| std::future::ready(on_node(p, &sel)))
        .map(line);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// A stream fed by a task (no extra crate for generators).
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = (u64, &'static str, Value)>
where
    F: FnOnce(tokio::sync::mpsc::Sender<(u64, &'static str, Value)>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const U1: &str = "11111111-0000-4000-8000-000000000001";
const U2: &str = "22222222-0000-4000-8000-000000000002";
const U3: &str = "33333333-0000-4000-8000-000000000003";
const U4: &str = "44444444-0000-4000-8000-000000000004";
const U9: &str = "99999999-0000-4000-8000-000000000009";
const C1: &str = "c1c1c1c1c1c1c1c1c1c1c1c1";
const C2: &str = "c2c2c2c2c2c2c2c2c2c2c2c2";

fn name_of(d: &PodDirectory, uid: &str) -> Option<String> {
    d.by_uid(uid).map(|p| p.name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pods_through_deletes_restarts_and_an_api_outage() {
    // No API at all: no kubeconfig, not in a cluster. One log line, an empty directory.
    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe {
        std::env::set_var("KUBECONFIG", "/nonexistent/kubeconfig");
        std::env::remove_var("KUBERNETES_SERVICE_HOST");
    }
    let none = start(&K8sArgs {
        no_k8s: false,
        node_name: Some("node-a".into()),
    })
    .await;
    assert!(!none.enabled());
    let off = start(&K8sArgs {
        no_k8s: true,
        node_name: None,
    })
    .await;
    assert!(!off.enabled());

    let fake = Fake::new();
    fake.change("ADDED", pod("game-0", U1, "node-a", C1));
    fake.change("ADDED", pod("web-0", U3, "node-a", "c3c3c3c3c3c3c3c3"));
    fake.change(
        "ADDED",
        pod("elsewhere-0", U9, "node-b", "c9c9c9c9c9c9c9c9"),
    );
    let addr = fake.serve("127.0.0.1:0".parse().unwrap()).await;
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let dir = watch_node(client, "node-a");

    eventually("the node's pods are listed", || dir.len() == 2).await;
    assert!(dir.api_up());
    assert_eq!(name_of(&dir, U1).as_deref(), Some("game-0"));
    assert_eq!(name_of(&dir, U9), None, "another node's pod");
    assert!(
        fake.api
            .lock()
            .unwrap()
            .selectors
            .iter()
            .all(|s| s == "spec.nodeName=node-a"),
        "every request asks for this node's pods only"
    );
    assert_eq!(dir.container_id(U1, "game-server").as_deref(), Some(C1));
    let of = dir
        .by_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{C1}.scope",
            U1.replace('-', "_")
        ))
        .unwrap();
    assert_eq!(
        (
            of.pod.name.as_str(),
            of.pod.namespace.as_str(),
            of.pod.node.as_str()
        ),
        ("game-0", "games", "node-a")
    );
    assert_eq!(of.container.as_deref(), Some("game-server"));

    // game-0 restarts as a new pod (same name, new UID, new container).
    fake.change("DELETED", pod("game-0", U1, "node-a", C1));
    fake.change("ADDED", pod("game-0", U2, "node-a", C2));
    eventually("the restarted pod", || name_of(&dir, U2).is_some()).await;
    assert_eq!(dir.container_id(U2, "game-server").as_deref(), Some(C2));
    assert_eq!(dir.len(), 2);
    // The old UID is still nameable for late spans, but not current.
    assert_eq!(name_of(&dir, U1).as_deref(), Some("game-0"));

    // web-0 is deleted.
    fake.change("DELETED", pod("web-0", U3, "node-a", "c3c3c3c3c3c3c3c3"));
    eventually("the deleted pod gone", || dir.len() == 1).await;

    // The API goes away; pods change meanwhile; it comes back on the same address.
    fake.stop();
    eventually("the outage noticed", || !dir.api_up()).await;
    assert_eq!(dir.len(), 1, "the last answer stays in use");
    assert_eq!(name_of(&dir, U2).as_deref(), Some("game-0"));
    fake.change("DELETED", pod("game-0", U2, "node-a", C2));
    fake.change("ADDED", pod("game-1", U4, "node-a", "c4c4c4c4c4c4c4c4"));
    let fake2 = Fake {
        down: Arc::new(watch::channel(false).0),
        ..fake.clone()
    };
    let again = fake2.serve(addr).await;
    assert_eq!(again, addr);
    eventually("the changes made during the outage", || {
        name_of(&dir, U4).is_some() && dir.len() == 1
    })
    .await;
    assert!(dir.api_up());
    fake2.stop();
}
