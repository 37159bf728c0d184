//! Wire protocol: message types shared by the server, the bots and the tests.
//! The format is documented in `game-server/PROTOCOL.md`; keep the two in step.

pub mod binary;
pub mod json;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};

/// WebSocket subprotocol names used to negotiate the encoding per connection.
pub const SUBPROTOCOL_JSON: &str = "ks.json.v1";
pub const SUBPROTOCOL_BINARY: &str = "ks.bin.v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Binary,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        }
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => SUBPROTOCOL_JSON,
            Encoding::Binary => SUBPROTOCOL_BINARY,
        }
    }

    pub fn from_subprotocol(s: &str) -> Option<Self> {
        match s {
            SUBPROTOCOL_JSON => Some(Encoding::Json),
            SUBPROTOCOL_BINARY => Some(Encoding::Binary),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Encoding::Json),
            "binary" | "bin" => Some(Encoding::Binary),
            _ => None,
        }
    }

    pub fn decode_client(self, data: &[u8]) -> Result<ClientMsg, ProtocolError> {
        match self {
            Encoding::Json => json::decode_client(data),
            Encoding::Binary => binary::decode_client(data),
        }
    }

    pub fn encode_client(self, msg: &ClientMsg, out: &mut BytesMut) {
        match self {
            Encoding::Json => json::encode(msg, out),
            Encoding::Binary => binary::encode_client(msg, out),
        }
    }

    pub fn decode_server(self, data: &[u8]) -> Result<ServerMsg, ProtocolError> {
        match self {
            Encoding::Json => json::decode_server(data),
            Encoding::Binary => binary::decode_server(data),
        }
    }

    pub fn encode_server(self, msg: &ServerMsg, out: &mut BytesMut) {
        match self {
            Encoding::Json => json::encode(msg, out),
            Encoding::Binary => binary::encode_server(msg, out),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("wrong frame type for the negotiated encoding")]
    WrongFrameType,
}

/// Input from a client, applied by the room on its next tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Input {
    pub seq: u32,
    /// Movement direction, each clamped to -1..=1 by the room.
    #[serde(default)]
    pub dx: i8,
    #[serde(default)]
    pub dy: i8,
    /// Pick up gold at the current position (persisted player data).
    #[serde(default)]
    pub collect: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientMsg {
    Join {
        room: String,
    },
    Leave,
    Input(Input),
    /// App-level ping; the server echoes `ts` back in a `pong`.
    Ping {
        id: u32,
        #[serde(default)]
        ts: u64,
    },
    /// Answer to a server `ping`.
    Pong {
        id: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub id: u32,
    /// 0 = player, 1 = npc.
    pub k: u8,
    pub x: f32,
    pub y: f32,
}

pub const KIND_PLAYER: u8 = 0;
pub const KIND_NPC: u8 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerMsg {
    Welcome {
        session: String,
        player: String,
        tick_hz: u32,
        heartbeat_ms: u32,
    },
    /// Full snapshot sent to a (re)joining member.
    Joined {
        room: String,
        you: u32,
        tick: u64,
        gold: i64,
        items: Vec<String>,
        resumed: bool,
        ents: Vec<Entity>,
    },
    /// One batched delta per member per tick (only when something changed).
    Delta {
        tick: u64,
        /// Highest input `seq` from this member applied so far.
        ack: u32,
        /// Server wall clock at send, Unix microseconds.
        ts: u64,
        gold: i64,
        ents: Vec<Entity>,
        gone: Vec<u32>,
    },
    Left {
        room: String,
    },
    Ping {
        id: u32,
        ts: u64,
    },
    Pong {
        id: u32,
        ts: u64,
    },
    Error {
        code: u16,
        msg: String,
    },
    /// The room lives on another server: reconnect to `url` and join there. The server closes
    /// the session with 4004 right after.
    Redirect {
        room: String,
        url: String,
    },
}

/// Unix time in microseconds (for latency measurement across processes on one host).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Close codes sent by the server (see PROTOCOL.md).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    pub const SLOW_CONSUMER: u16 = 4001;
    pub const RATE_LIMITED: u16 = 4002;
    pub const REPLACED: u16 = 4003;
    /// The joined room is owned by another server (a `redirect` message names it).
    pub const ROOM_ELSEWHERE: u16 = 4004;
    /// The room is not on this server and the room directory (Redis) cannot be reached.
    pub const DIRECTORY_UNAVAILABLE: u16 = 4005;
}
