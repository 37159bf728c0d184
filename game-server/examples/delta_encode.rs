//! Before/after measurement for the hot path of a room tick: building each member's
//! delta frame. "before" encodes the whole delta per member into a fresh buffer (the
//! naive port); "after" is what `room/world.rs` does: encode the shared body once
//! per tick and write header + body per member into one reused `BytesMut`.
//!
//! cargo run --release -p game-server --example delta_encode

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use game_server::protocol::{self, Encoding, Entity, ServerMsg};

const MEMBERS: usize = 50;
const ENTITIES: usize = 58;
const TICKS: usize = 4_000;

fn ents() -> Vec<Entity> {
    (0..ENTITIES as u32)
        .map(|i| Entity {
            id: i,
            k: (i % 2) as u8,
            x: i as f32 * 1.5,
            y: 100.0 - i as f32,
        })
        .collect()
}

fn before(enc: Encoding, ents: &[Entity], out: &mut Vec<Bytes>) {
    for m in 0..MEMBERS {
        let msg = ServerMsg::Delta {
            tick: 1,
            ack: m as u32,
            ts: 42,
            gold: 7,
            ents: ents.to_vec(),
            gone: vec![],
        };
        let mut b = BytesMut::new();
        enc.encode_server(&msg, &mut b);
        out.push(b.freeze());
    }
}

fn after(enc: Encoding, ents: &[Entity], scratch: &mut BytesMut, out: &mut Vec<Bytes>) {
    match enc {
        Encoding::Json => protocol::json::delta_body(ents, &[], scratch),
        Encoding::Binary => protocol::binary::delta_body(ents, &[], scratch),
    }
    let body = scratch.split().freeze();
    for m in 0..MEMBERS {
        match enc {
            Encoding::Json => protocol::json::delta_header(1, m as u32, 42, 7, scratch),
            Encoding::Binary => protocol::binary::delta_header(1, m as u32, 42, 7, scratch),
        }
        scratch.extend_from_slice(&body);
        out.push(scratch.split().freeze());
    }
    scratch.reserve(4096);
}

fn main() {
    let ents = ents();
    for enc in [Encoding::Binary, Encoding::Json] {
        let mut out = Vec::with_capacity(MEMBERS);
        let t = Instant::now();
        for _ in 0..TICKS {
            before(enc, &ents, &mut out);
            black_box(&out);
            out.clear();
        }
        let b = t.elapsed().as_nanos() as f64 / (TICKS * MEMBERS) as f64;
        let mut scratch = BytesMut::with_capacity(16 * 1024);
        let t = Instant::now();
        for _ in 0..TICKS {
            after(enc, &ents, &mut scratch, &mut out);
            black_box(&out);
            out.clear();
        }
        let a = t.elapsed().as_nanos() as f64 / (TICKS * MEMBERS) as f64;
        println!(
            "{:<6} {MEMBERS} members x {ENTITIES} entities: before {b:>7.0} ns/frame, after {a:>6.0} ns/frame ({:.1}x)",
            enc.as_str(),
            b / a
        );
    }
}
