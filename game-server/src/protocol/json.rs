//! JSON encoding: one object per text frame, tagged by `"t"`.

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use super::{ClientMsg, Entity, ProtocolError, ServerMsg};

pub fn encode<T: Serialize>(msg: &T, out: &mut BytesMut) {
    // Writing into a BytesMut cannot fail; serialization of our own types cannot either.
    serde_json::to_writer(out.writer(), msg).expect("serialize protocol message");
}

pub fn decode_client(data: &[u8]) -> Result<ClientMsg, ProtocolError> {
    serde_json::from_slice(data).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

pub fn decode_server(data: &[u8]) -> Result<ServerMsg, ProtocolError> {
    serde_json::from_slice(data).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Per-member part of a delta; `delta_body` completes the object. Split so a room
/// serializes the shared entity list once per tick, not once per member.
pub fn delta_header(tick: u64, ack: u32, ts: u64, gold: i64, out: &mut BytesMut) {
    use std::fmt::Write;
    let _ = write!(
        Fmt(out),
        r#"{{"t":"delta","tick":{tick},"ack":{ack},"ts":{ts},"gold":{gold},"#
    );
}

pub fn delta_body(ents: &[Entity], gone: &[u32], out: &mut BytesMut) {
    out.put_slice(br#""ents":"#);
    serde_json::to_writer(out.writer(), ents).expect("serialize entities");
    out.put_slice(br#","gone":"#);
    serde_json::to_writer(out.writer(), gone).expect("serialize ids");
    out.put_u8(b'}');
}

struct Fmt<'a>(&'a mut BytesMut);

impl std::fmt::Write for Fmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}
