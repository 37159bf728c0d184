//! `cargo xtask bench peer` compares us with a Colyseus room only if both do the same work:
//! our bench's defaults, our room's constants and the Colyseus room (asked with
//! `node server.cjs --workload`, which prints what the room runs) must all agree with
//! game-server/peer/workload.json. No sockets; well under a second.

use std::path::Path;
use std::process::Command;

use clap::Parser;
use game_server::bots::bench::BenchOpts;
use game_server::bots::load::{COLLECT_EVERY_INPUTS, PING_EVERY};
use game_server::room;
use serde_json::Value;

#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    bench: BenchOpts,
}

fn workload() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/workload.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("peer/workload.json"))
        .expect("workload.json is JSON")
}

#[test]
fn bench_and_room_match_the_workload_file() {
    let w = workload();
    let b = Defaults::parse_from(["bench"]).bench;
    assert_eq!(w["tick_hz"], b.rate, "bench tick rate");
    assert_eq!(w["input_hz"], b.rate, "bench input rate");
    assert_eq!(w["members_per_room"], b.per_room);
    assert_eq!(w["npcs_per_room"], b.npcs_per_room);
    assert_eq!(w["ping_hz"].as_f64(), Some(1.0 / PING_EVERY.as_secs_f64()));
    assert_eq!(w["collect_every_inputs"], COLLECT_EVERY_INPUTS);
    assert_eq!(w["world_size"].as_f64(), Some(room::WORLD_SIZE as f64));
    assert_eq!(w["player_speed"].as_f64(), Some(room::PLAYER_SPEED as f64));
    assert_eq!(w["npc_speed"].as_f64(), Some(room::NPC_SPEED as f64));
    assert_eq!(w["npc_turn_one_in"], room::NPC_TURN_ONE_IN);
    assert_eq!(w["max_queued_inputs"], room::MAX_QUEUED_INPUTS);
    assert_eq!(w["max_inputs_per_tick"], room::MAX_INPUTS_PER_TICK);
}

#[test]
fn colyseus_room_runs_the_workload_file() {
    let w = workload();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/colyseus/server.cjs");
    let out = Command::new("node")
        .arg(&script)
        .arg("--workload")
        .output()
        .expect("node (Node.js 20) is needed for the Colyseus peer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let room: Value = serde_json::from_slice(&out.stdout).expect("--workload prints JSON");
    let keys = room.as_object().expect("an object");
    // The parameters the room's simulation uses; the rest (input and ping rates) are the
    // load's, checked in bench.cjs's use of the same file.
    for k in [
        "tick_hz",
        "members_per_room",
        "npcs_per_room",
        "world_size",
        "player_speed",
        "npc_speed",
        "npc_turn_one_in",
        "max_queued_inputs",
        "max_inputs_per_tick",
    ] {
        let got = keys.get(k).and_then(Value::as_f64);
        assert!(got.is_some(), "Colyseus room does not report {k}");
        assert_eq!(got, w[k].as_f64(), "Colyseus room's {k}");
    }
}
