//! Player data survives restarts: everything on a clean shutdown, and everything
//! older than the documented write-behind window on SIGKILL (README "Persistence").

mod common;

use std::time::Duration;

use common::{Client, Server, temp_dir};
use game_server::protocol::{ClientMsg, Encoding, Input, ServerMsg};

const FLUSH_MS: u64 = 200;

async fn collect(c: &mut Client, from_seq: u32, n: u32) -> i64 {
    let mut gold = 0;
    // Chunks of 4: the room buffers at most 8 inputs per player between ticks.
    let end = from_seq + n;
    let mut seq = from_seq;
    while seq < end {
        let chunk_end = (seq + 4).min(end);
        for s in seq..chunk_end {
            c.send(&ClientMsg::Input(Input {
                seq: s,
                dx: 1,
                dy: 0,
                collect: true,
            }))
            .await;
        }
        let last = chunk_end - 1;
        // Acknowledged: the room applied the inputs and reported the resulting gold.
        if let ServerMsg::Delta { gold: g, .. } = c
            .delta_until(|m| matches!(m, ServerMsg::Delta { ack, .. } if *ack == last))
            .await
        {
            gold = g;
        }
        seq = chunk_end;
    }
    gold
}

async fn joined_gold(srv: &Server, player: &str) -> (i64, Vec<String>) {
    let mut c = Client::connect(srv, player, Encoding::Json).await;
    c.send(&ClientMsg::Join {
        room: "mine".into(),
    })
    .await;
    loop {
        if let ServerMsg::Joined { gold, items, .. } = c.recv().await {
            return (gold, items);
        }
    }
}

#[tokio::test]
async fn sigkill_loses_at_most_the_write_behind_window() {
    let dir = temp_dir("kill");
    let flush = FLUSH_MS.to_string();
    let mut srv = Server::start_in(&dir, &["--flush-interval-ms", &flush]);
    let mut c = Client::connect(&srv, "miner", Encoding::Binary).await;
    c.join("mine").await;
    assert_eq!(collect(&mut c, 1, 12).await, 12);
    // Older than the window (flush interval + commit): must survive a crash.
    tokio::time::sleep(Duration::from_millis(FLUSH_MS * 5)).await;
    // Newer than the window: may or may not survive, never more than acknowledged.
    assert_eq!(collect(&mut c, 13, 5).await, 17);
    srv.sigkill();

    let srv = Server::start_in(&dir, &["--flush-interval-ms", &flush]);
    let (gold, items) = joined_gold(&srv, "miner").await;
    assert!((12..=17).contains(&gold), "gold after SIGKILL = {gold}");
    assert_eq!(
        items,
        vec!["gem".to_string()],
        "item granted at 10 gold persisted"
    );
}

#[tokio::test]
async fn clean_shutdown_flushes_everything_acknowledged() {
    let dir = temp_dir("term");
    // A long interval: only the shutdown flush can have written the data.
    let mut srv = Server::start_in(&dir, &["--flush-interval-ms", "600000"]);
    let mut c = Client::connect(&srv, "saver", Encoding::Json).await;
    c.join("mine").await;
    assert_eq!(collect(&mut c, 1, 7).await, 7);
    assert_eq!(srv.metric("game_persistence_records_written_total"), 0.0);
    srv.sigterm();
    assert_eq!(c.expect_close().await.0, 1001);
    let code = tokio::task::spawn_blocking(move || srv.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0));

    let srv = Server::start_in(&dir, &[]);
    assert_eq!(joined_gold(&srv, "saver").await.0, 7);
    // The reloaded player keeps earning from where it was.
    let mut c = Client::connect(&srv, "saver2", Encoding::Json).await;
    c.join("mine").await;
    assert_eq!(collect(&mut c, 1, 1).await, 1);
}
