//! Compact binary encoding: one message per binary frame, little-endian,
//! first byte is the message type. Layouts are in PROTOCOL.md.

use bytes::{Buf, BufMut, BytesMut};

use super::{ClientMsg, Entity, Input, ProtocolError, ServerMsg};

pub const C_JOIN: u8 = 0x01;
pub const C_LEAVE: u8 = 0x02;
pub const C_INPUT: u8 = 0x03;
pub const C_PING: u8 = 0x04;
pub const C_PONG: u8 = 0x05;

pub const S_WELCOME: u8 = 0x81;
pub const S_JOINED: u8 = 0x82;
pub const S_DELTA: u8 = 0x83;
pub const S_LEFT: u8 = 0x84;
pub const S_PING: u8 = 0x85;
pub const S_PONG: u8 = 0x86;
pub const S_ERROR: u8 = 0x87;
pub const S_REDIRECT: u8 = 0x88;

const ENTITY_BYTES: usize = 13;

fn bad(what: &str) -> ProtocolError {
    ProtocolError::Malformed(what.to_string())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.0.remaining() < n {
            Err(bad("truncated message"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn i8(&mut self) -> Result<i8, ProtocolError> {
        self.need(1)?;
        Ok(self.0.get_i8())
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.need(2)?;
        Ok(self.0.get_u16_le())
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }
    fn i64(&mut self) -> Result<i64, ProtocolError> {
        self.need(8)?;
        Ok(self.0.get_i64_le())
    }
    fn f32(&mut self) -> Result<f32, ProtocolError> {
        self.need(4)?;
        Ok(self.0.get_f32_le())
    }
    fn str8(&mut self) -> Result<String, ProtocolError> {
        let n = self.u8()? as usize;
        self.need(n)?;
        let s = std::str::from_utf8(&self.0[..n]).map_err(|_| bad("invalid utf-8"))?;
        let s = s.to_string();
        self.0.advance(n);
        Ok(s)
    }
    fn entity(&mut self) -> Result<Entity, ProtocolError> {
        self.need(ENTITY_BYTES)?;
        Ok(Entity {
            id: self.u32()?,
            k: self.u8()?,
            x: self.f32()?,
            y: self.f32()?,
        })
    }
    fn end(&self) -> Result<(), ProtocolError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad("trailing bytes"))
        }
    }
}

fn put_str8(out: &mut BytesMut, s: &str) {
    // Strings on the wire are short identifiers; longer ones are cut at a char boundary.
    let mut n = s.len().min(255);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out.put_u8(n as u8);
    out.put_slice(&s.as_bytes()[..n]);
}

fn put_entity(out: &mut BytesMut, e: &Entity) {
    out.put_u32_le(e.id);
    out.put_u8(e.k);
    out.put_f32_le(e.x);
    out.put_f32_le(e.y);
}

pub fn decode_client(data: &[u8]) -> Result<ClientMsg, ProtocolError> {
    let mut r = Reader(data);
    let msg = match r.u8()? {
        C_JOIN => ClientMsg::Join { room: r.str8()? },
        C_LEAVE => ClientMsg::Leave,
        C_INPUT => {
            let seq = r.u32()?;
            let dx = r.i8()?;
            let dy = r.i8()?;
            let flags = r.u8()?;
            ClientMsg::Input(Input {
                seq,
                dx,
                dy,
                collect: flags & 1 != 0,
            })
        }
        C_PING => ClientMsg::Ping {
            id: r.u32()?,
            ts: r.u64()?,
        },
        C_PONG => ClientMsg::Pong { id: r.u32()? },
        t => return Err(ProtocolError::Malformed(format!("unknown type 0x{t:02x}"))),
    };
    r.end()?;
    Ok(msg)
}

pub fn encode_client(msg: &ClientMsg, out: &mut BytesMut) {
    match msg {
        ClientMsg::Join { room } => {
            out.put_u8(C_JOIN);
            put_str8(out, room);
        }
        ClientMsg::Leave => out.put_u8(C_LEAVE),
        ClientMsg::Input(i) => {
            out.put_u8(C_INPUT);
            out.put_u32_le(i.seq);
            out.put_i8(i.dx);
            out.put_i8(i.dy);
            out.put_u8(i.collect as u8);
        }
        ClientMsg::Ping { id, ts } => {
            out.put_u8(C_PING);
            out.put_u32_le(*id);
            out.put_u64_le(*ts);
        }
        ClientMsg::Pong { id } => {
            out.put_u8(C_PONG);
            out.put_u32_le(*id);
        }
    }
}

pub fn delta_header(tick: u64, ack: u32, ts: u64, gold: i64, out: &mut BytesMut) {
    out.put_u8(S_DELTA);
    out.put_u64_le(tick);
    out.put_u32_le(ack);
    out.put_u64_le(ts);
    out.put_i64_le(gold);
}

/// `(ack, ts)` of a binary delta without decoding its entities (the bots measure only these),
/// `None` for any other message.
pub fn peek_delta(data: &[u8]) -> Option<(u32, u64)> {
    if data.first() != Some(&S_DELTA) || data.len() < 29 {
        return None;
    }
    let ack = u32::from_le_bytes(data[9..13].try_into().ok()?);
    let ts = u64::from_le_bytes(data[13..21].try_into().ok()?);
    Some((ack, ts))
}

pub fn delta_body(ents: &[Entity], gone: &[u32], out: &mut BytesMut) {
    out.reserve(4 + ents.len() * ENTITY_BYTES + gone.len() * 4);
    out.put_u16_le(ents.len() as u16);
    for e in ents {
        put_entity(out, e);
    }
    out.put_u16_le(gone.len() as u16);
    for g in gone {
        out.put_u32_le(*g);
    }
}

pub fn encode_server(msg: &ServerMsg, out: &mut BytesMut) {
    match msg {
        ServerMsg::Welcome {
            session,
            player,
            tick_hz,
            heartbeat_ms,
        } => {
            out.put_u8(S_WELCOME);
            out.put_u16_le(*tick_hz as u16);
            out.put_u32_le(*heartbeat_ms);
            put_str8(out, session);
            put_str8(out, player);
        }
        ServerMsg::Joined {
            room,
            you,
            tick,
            gold,
            items,
            resumed,
            ents,
        } => {
            out.put_u8(S_JOINED);
            put_str8(out, room);
            out.put_u32_le(*you);
            out.put_u64_le(*tick);
            out.put_i64_le(*gold);
            out.put_u8(*resumed as u8);
            out.put_u16_le(items.len() as u16);
            for i in items {
                put_str8(out, i);
            }
            out.put_u16_le(ents.len() as u16);
            for e in ents {
                put_entity(out, e);
            }
        }
        ServerMsg::Delta {
            tick,
            ack,
            ts,
            gold,
            ents,
            gone,
        } => {
            delta_header(*tick, *ack, *ts, *gold, out);
            delta_body(ents, gone, out);
        }
        ServerMsg::Left { room } => {
            out.put_u8(S_LEFT);
            put_str8(out, room);
        }
        ServerMsg::Ping { id, ts } => {
            out.put_u8(S_PING);
            out.put_u32_le(*id);
            out.put_u64_le(*ts);
        }
        ServerMsg::Pong { id, ts } => {
            out.put_u8(S_PONG);
            out.put_u32_le(*id);
            out.put_u64_le(*ts);
        }
        ServerMsg::Error { code, msg } => {
            out.put_u8(S_ERROR);
            out.put_u16_le(*code);
            put_str8(out, msg);
        }
        ServerMsg::Redirect { room, url } => {
            out.put_u8(S_REDIRECT);
            put_str8(out, room);
            put_str8(out, url);
        }
    }
}

pub fn decode_server(data: &[u8]) -> Result<ServerMsg, ProtocolError> {
    let mut r = Reader(data);
    let msg = match r.u8()? {
        S_WELCOME => {
            let tick_hz = r.u16()? as u32;
            let heartbeat_ms = r.u32()?;
            ServerMsg::Welcome {
                tick_hz,
                heartbeat_ms,
                session: r.str8()?,
                player: r.str8()?,
            }
        }
        S_JOINED => {
            let room = r.str8()?;
            let you = r.u32()?;
            let tick = r.u64()?;
            let gold = r.i64()?;
            let resumed = r.u8()? != 0;
            let n = r.u16()? as usize;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(r.str8()?);
            }
            let n = r.u16()? as usize;
            let mut ents = Vec::with_capacity(n);
            for _ in 0..n {
                ents.push(r.entity()?);
            }
            ServerMsg::Joined {
                room,
                you,
                tick,
                gold,
                items,
                resumed,
                ents,
            }
        }
        S_DELTA => {
            let tick = r.u64()?;
            let ack = r.u32()?;
            let ts = r.u64()?;
            let gold = r.i64()?;
            let n = r.u16()? as usize;
            let mut ents = Vec::with_capacity(n);
            for _ in 0..n {
                ents.push(r.entity()?);
            }
            let n = r.u16()? as usize;
            let mut gone = Vec::with_capacity(n);
            for _ in 0..n {
                gone.push(r.u32()?);
            }
            ServerMsg::Delta {
                tick,
                ack,
                ts,
                gold,
                ents,
                gone,
            }
        }
        S_LEFT => ServerMsg::Left { room: r.str8()? },
        S_PING => ServerMsg::Ping {
            id: r.u32()?,
            ts: r.u64()?,
        },
        S_PONG => ServerMsg::Pong {
            id: r.u32()?,
            ts: r.u64()?,
        },
        S_ERROR => ServerMsg::Error {
            code: r.u16()?,
            msg: r.str8()?,
        },
        S_REDIRECT => ServerMsg::Redirect {
            room: r.str8()?,
            url: r.str8()?,
        },
        t => return Err(ProtocolError::Malformed(format!("unknown type 0x{t:02x}"))),
    };
    r.end()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::super::Encoding;
    use super::*;

    #[test]
    fn round_trips_both_encodings() {
        let ents = vec![Entity {
            id: 7,
            k: 1,
            x: 1.5,
            y: -2.0,
        }];
        let msgs = vec![
            ServerMsg::Delta {
                tick: 9,
                ack: 3,
                ts: 42,
                gold: 5,
                ents: ents.clone(),
                gone: vec![1, 2],
            },
            ServerMsg::Joined {
                room: "r".into(),
                you: 7,
                tick: 1,
                gold: 2,
                items: vec!["gem".into()],
                resumed: true,
                ents,
            },
            ServerMsg::Redirect {
                room: "lobby".into(),
                url: "ws://game-server-0.game-server-pods.game.svc:7000/ws".into(),
            },
        ];
        for enc in [Encoding::Json, Encoding::Binary] {
            for m in &msgs {
                let mut b = BytesMut::new();
                enc.encode_server(m, &mut b);
                assert_eq!(&enc.decode_server(&b).unwrap(), m);
            }
            let c = ClientMsg::Input(Input {
                seq: 4,
                dx: -1,
                dy: 1,
                collect: true,
            });
            let mut b = BytesMut::new();
            enc.encode_client(&c, &mut b);
            assert_eq!(enc.decode_client(&b).unwrap(), c);
        }
    }

    #[test]
    fn split_delta_matches_whole() {
        for enc in [Encoding::Json, Encoding::Binary] {
            let mut a = BytesMut::new();
            let ents = [Entity {
                id: 1,
                k: 0,
                x: 0.25,
                y: 3.0,
            }];
            match enc {
                Encoding::Json => {
                    super::super::json::delta_header(1, 2, 3, 4, &mut a);
                    super::super::json::delta_body(&ents, &[9], &mut a);
                }
                Encoding::Binary => {
                    delta_header(1, 2, 3, 4, &mut a);
                    delta_body(&ents, &[9], &mut a);
                }
            }
            let m = enc.decode_server(&a).unwrap();
            assert!(
                matches!(m, ServerMsg::Delta { tick: 1, ack: 2, gold: 4, ref gone, .. } if gone == &[9])
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_client(&[0x03, 1]).is_err());
        assert!(decode_client(&[0x77]).is_err());
        assert!(decode_client(&[0x02, 0]).is_err());
    }
}
