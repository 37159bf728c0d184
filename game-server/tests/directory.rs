//! Rooms across replicas, on a real `redis-server`: three server processes share one room
//! directory. 60 bots joining 6 rooms through all three land on each room's owner (redirects);
//! when an owner is killed its rooms move to the survivors once the lease lapses and the bots
//! reconnect. And with Redis down a server keeps its own rooms running and refuses joins to
//! rooms it does not know with close 4005.
mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{Client, SECRET, Server, http, temp_dir};
use game_server::protocol::{Encoding, ServerMsg};
use serde_json::Value;

const LEASE_MS: u64 = 2_000;

/// room → (server url, members), from every server's GET /rooms; panics on a room that two
/// servers run.
fn placement(servers: &[&Server]) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    for s in servers {
        let (status, body) = http(s.addr, "GET", "/rooms", None, &[]);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let me = v["server"].as_str().unwrap().to_owned();
        for r in v["rooms"].as_array().unwrap() {
            let (name, n) = (r["room"].as_str().unwrap(), r["members"].as_u64().unwrap());
            if n == 0 {
                continue;
            }
            if let Some((other, _)) = out.insert(name.to_owned(), (me.clone(), n)) {
                panic!("room {name} runs on {other} and {me}");
            }
        }
    }
    out
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

fn every_room_full(p: &BTreeMap<String, (String, u64)>) -> bool {
    p.len() == 6 && p.values().all(|(_, n)| *n == 10)
}

#[test]
fn rooms_live_on_one_server_and_move_after_the_lease_when_it_dies() {
    let dir = temp_dir("directory");
    let redis = RedisServer::start(&dir);
    let lease = LEASE_MS.to_string();
    let flags = ["--redis-addr", &redis.addr_arg(), "--room-lease-ms", &lease];
    let mut servers: Vec<Server> = (0..3)
        .map(|i| Server::start_in(&dir.join(format!("s{i}")), &flags))
        .collect();
    let urls: Vec<String> = servers.iter().map(|s| s.ws_url()).collect();
    let bots = Command::new(env!("CARGO_BIN_EXE_bots"))
        .args(["--url", &urls.join(","), "--sessions", "60", "--rooms", "6"])
        .args([
            "--rate",
            "5",
            "--duration",
            "16",
            "--reconnect",
            "--json",
            "--quiet",
        ])
        .args(["--token-secret", SECRET])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let bots = scopeguard(bots);

    // Every bot in its room, every room on one server, the directory agreeing.
    let all = || servers.iter().collect::<Vec<_>>();
    wait_for("60 bots in 6 rooms", Duration::from_secs(20), || {
        every_room_full(&placement(&all()))
    });
    let before = placement(&all());
    for (room, (url, _)) in &before {
        let owner = redis.cli(&["GET", &format!("ks:room:{room}")]).unwrap();
        assert_eq!(&owner, url, "directory entry of {room}");
    }
    let owners: std::collections::BTreeSet<&String> = before.values().map(|(u, _)| u).collect();
    eprintln!("placement before: {before:?}");

    // Kill (SIGKILL: no goodbye) a server that owns rooms.
    let victim = servers
        .iter()
        .position(|s| owners.contains(&s.ws_url()))
        .unwrap();
    let victim_url = servers[victim].ws_url();
    let moved: Vec<String> = before
        .iter()
        .filter(|(_, (u, _))| *u == victim_url)
        .map(|(r, _)| r.clone())
        .collect();
    servers[victim].sigkill();
    let survivors: Vec<&Server> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, s)| s)
        .collect();
    let took = wait_for(
        "the dead server's rooms back on the survivors",
        Duration::from_millis(LEASE_MS + 8_000),
        || every_room_full(&placement(&survivors)),
    );
    let after = placement(&survivors);
    eprintln!("placement after ({took:?} after the kill): {after:?}");
    for room in &moved {
        let (url, _) = &after[room];
        assert_ne!(url, &victim_url);
        let owner = redis.cli(&["GET", &format!("ks:room:{room}")]).unwrap();
        assert_eq!(&owner, url, "directory entry of {room}");
    }
    // Rooms of the survivors stayed where they were.
    for (room, (url, _)) in &before {
        if !moved.contains(room) {
            assert_eq!(&after[room].0, url, "{room} moved although its owner lives");
        }
    }
    assert!(
        took >= Duration::from_millis(LEASE_MS / 2),
        "rooms moved after {took:?}, before the {LEASE_MS} ms lease could lapse"
    );

    let out = bots.into_inner().wait_with_output().unwrap();
    let s: Value = serde_json::from_slice(&out.stdout).expect("bots JSON summary");
    assert_eq!(s["connected"], 60, "{s}");
    assert!(s["redirects"].as_u64().unwrap() > 0, "no redirects: {s}");
    assert!(
        s["reconnects"].as_u64().unwrap() >= 10 * moved.len() as u64,
        "bots of the dead server did not reconnect: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_owned_rooms_keep_running_and_unknown_rooms_are_refused() {
    let dir = temp_dir("directory-down");
    let mut redis = RedisServer::start(&dir);
    let srv = Server::start(&["--redis-addr", &redis.addr_arg(), "--room-lease-ms", "2000"]);
    let mut a = Client::connect(&srv, "alice", Encoding::Json).await;
    a.join("alpha").await;
    redis.kill();
    // Alice's room runs on: input → acknowledged in a delta.
    a.send(&game_server::protocol::ClientMsg::Input(
        game_server::protocol::Input {
            seq: 1,
            dx: 1,
            dy: 0,
            collect: false,
        },
    ))
    .await;
    a.delta_until(|m| matches!(m, ServerMsg::Delta { ack, .. } if *ack >= 1))
        .await;
    // A room this server runs can still be joined.
    let mut b = Client::connect(&srv, "bob", Encoding::Binary).await;
    b.join("alpha").await;
    // A room it does not run cannot be placed: a clear close code.
    let mut c = Client::connect(&srv, "carol", Encoding::Json).await;
    c.send(&game_server::protocol::ClientMsg::Join {
        room: "beta".into(),
    })
    .await;
    assert_eq!(
        c.expect_close().await,
        (4005, "directory_unavailable".to_owned())
    );
    // Redis back: the room is placed again.
    redis.spawn();
    let mut d = Client::connect(&srv, "dave", Encoding::Json).await;
    d.join("beta").await;
}

/// Kills the child if the test fails before it is waited for.
struct Guard(Option<std::process::Child>);
fn scopeguard(c: std::process::Child) -> Guard {
    Guard(Some(c))
}
impl Guard {
    fn into_inner(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}
impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_frees_its_rooms_at_once() {
    let dir = temp_dir("directory-release");
    let redis = RedisServer::start(&dir);
    // A long lease: if the room is free right after SIGTERM, the server released it.
    let mut srv = Server::start(&[
        "--redis-addr",
        &redis.addr_arg(),
        "--room-lease-ms",
        "60000",
    ]);
    let mut a = Client::connect(&srv, "alice", Encoding::Json).await;
    a.join("gamma").await;
    assert_eq!(
        redis.cli(&["GET", "ks:room:gamma"]).unwrap(),
        srv.ws_url(),
        "claimed on join"
    );
    srv.sigterm();
    assert_eq!(a.expect_close().await.0, 1001);
    assert_eq!(srv.wait(), Some(0));
    assert_eq!(
        redis.cli(&["GET", "ks:room:gamma"]).unwrap(),
        "",
        "still claimed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_finds_its_room_through_redis_on_any_server() {
    use common::{ConnectOpts, connect_raw};
    let dir = temp_dir("directory-resume");
    let redis = RedisServer::start(&dir);
    let flags = ["--redis-addr", &redis.addr_arg()];
    let (a, b) = (Server::start(&flags), Server::start(&flags));
    let tok = a.token("alice");
    let open = |url: String| async move {
        let (ws, _) = connect_raw(
            &url,
            ConnectOpts {
                token: None,
                origin: None,
                encoding: Encoding::Json,
            },
        )
        .await
        .expect("upgrade");
        let mut c = Client {
            ws,
            enc: Encoding::Json,
            auto_pong: true,
        };
        match c.recv().await {
            ServerMsg::Welcome { session, .. } => (c, session),
            m => panic!("expected welcome, got {m:?}"),
        }
    };
    let (mut first, session) = open(format!("{}?token={tok}", a.ws_url())).await;
    first.join("zeta").await;
    drop(first);
    // On the other server: the resume token names the room, which lives on `a`.
    let (mut on_b, _) = open(format!("{}?token={tok}&resume={session}", b.ws_url())).await;
    match on_b.recv().await {
        ServerMsg::Redirect { room, url } => {
            assert_eq!((room.as_str(), url), ("zeta", a.ws_url()));
        }
        m => panic!("expected redirect, got {m:?}"),
    }
    assert_eq!(on_b.expect_close().await, (4004, "room_elsewhere".into()));
    // Back on the owner: rejoined without sending a join, within the reconnect grace.
    let (mut on_a, _) = open(format!("{}?token={tok}&resume={session}", a.ws_url())).await;
    match on_a.recv().await {
        ServerMsg::Joined { room, resumed, .. } => {
            assert_eq!((room.as_str(), resumed), ("zeta", true))
        }
        m => panic!("expected joined, got {m:?}"),
    }
    // Someone else's session id is ignored.
    let bob = b.token("bob");
    let (mut other, _) = open(format!("{}?token={bob}&resume={session}", b.ws_url())).await;
    other.ping(1).await;
}
