//! Rooms over real sockets: join/leave, snapshot then deltas, reconnect grace.

mod common;

use common::{Client, Server};
use game_server::protocol::{ClientMsg, Encoding, Input, KIND_NPC, KIND_PLAYER, ServerMsg};

#[tokio::test]
async fn snapshot_then_deltas_in_both_encodings() {
    let srv = Server::start(&["--npcs-per-room", "3"]);
    for (player, enc) in [("json-p", Encoding::Json), ("bin-p", Encoding::Binary)] {
        let mut c = Client::connect(&srv, player, enc).await;
        let (me, resumed, snapshot, _) = c.join(&format!("room-{player}")).await;
        assert!(!resumed);
        // Full snapshot: me plus the room's NPCs.
        assert_eq!(snapshot.iter().filter(|e| e.k == KIND_NPC).count(), 3);
        assert!(snapshot.iter().any(|e| e.id == me && e.k == KIND_PLAYER));
        let start = snapshot.iter().find(|e| e.id == me).unwrap().x;

        c.send(&ClientMsg::Input(Input {
            seq: 1,
            dx: if start > 50.0 { -1 } else { 1 },
            dy: 0,
            collect: true,
        }))
        .await;
        // The input is applied on a tick and acknowledged in a batched delta.
        let d = c
            .delta_until(|m| matches!(m, ServerMsg::Delta { ack: 1, .. }))
            .await;
        let ServerMsg::Delta {
            ents, gold, tick, ..
        } = d
        else {
            unreachable!()
        };
        assert!(tick >= 1);
        assert_eq!(gold, 1);
        let moved = ents
            .iter()
            .find(|e| e.id == me)
            .expect("my entity in the delta");
        assert_ne!(moved.x, start);
        // Deltas keep flowing for the moving NPCs with increasing ticks.
        let mut last = tick;
        for _ in 0..3 {
            let ServerMsg::Delta { tick, .. } = c.delta_until(|_| true).await else {
                unreachable!()
            };
            assert!(tick > last);
            last = tick;
        }
    }
}

#[tokio::test]
async fn join_and_leave_are_visible_to_other_members() {
    let srv = Server::start(&["--npcs-per-room", "0"]);
    let mut a = Client::connect(&srv, "alice", Encoding::Json).await;
    let mut b = Client::connect(&srv, "bob", Encoding::Binary).await;
    let (a_id, _, _, _) = a.join("lobby").await;
    let (b_id, _, snap, _) = b.join("lobby").await;
    assert!(
        snap.iter().any(|e| e.id == a_id),
        "bob's snapshot shows alice"
    );
    a.delta_until(
        |m| matches!(m, ServerMsg::Delta { ents, .. } if ents.iter().any(|e| e.id == b_id)),
    )
    .await;

    b.send(&ClientMsg::Leave).await;
    loop {
        if let ServerMsg::Left { room } = b.recv().await {
            assert_eq!(room, "lobby");
            break;
        }
    }
    a.delta_until(|m| matches!(m, ServerMsg::Delta { gone, .. } if gone.contains(&b_id)))
        .await;
    // Bob is still connected and can rejoin as a new entity.
    let (b_id2, resumed, _, _) = b.join("lobby").await;
    assert!(!resumed);
    assert_ne!(b_id2, b_id);
    b.ping(1).await;
}

#[tokio::test]
async fn reconnect_within_grace_resumes_same_player() {
    let srv = Server::start(&["--npcs-per-room", "0", "--reconnect-grace-ms", "60000"]);
    let mut watcher = Client::connect(&srv, "watcher", Encoding::Binary).await;
    watcher.join("arena").await;

    let mut c = Client::connect(&srv, "carol", Encoding::Json).await;
    let (id, _, _, _) = c.join("arena").await;
    for seq in 1..=3 {
        c.send(&ClientMsg::Input(Input {
            seq,
            collect: true,
            ..Default::default()
        }))
        .await;
    }
    c.delta_until(|m| matches!(m, ServerMsg::Delta { gold: 3, .. }))
        .await;
    // Drop the connection without leaving (a network blip).
    drop(c);

    let mut c2 = Client::connect(&srv, "carol", Encoding::Binary).await;
    let (id2, resumed, snap, gold) = c2.join("arena").await;
    assert!(resumed, "rejoin within the grace period resumes");
    assert_eq!(id2, id, "same entity");
    assert_eq!(gold, 3, "in-memory state kept");
    assert!(snap.iter().any(|e| e.id == id));
    // The other member never saw carol leave.
    watcher.ping(9).await;
    assert_eq!(srv.metric("game_room_joins_total{kind=\"resumed\"}"), 1.0);
}

#[tokio::test]
async fn second_login_replaces_first_session() {
    let srv = Server::start(&["--npcs-per-room", "0"]);
    let mut first = Client::connect(&srv, "dave", Encoding::Json).await;
    first.join("r").await;
    let mut second = Client::connect(&srv, "dave", Encoding::Json).await;
    let (_, resumed, _, _) = second.join("r").await;
    assert!(resumed);
    let (code, reason) = first.expect_close().await;
    assert_eq!((code, reason.as_str()), (4003, "replaced"));
    second.ping(2).await;
}
