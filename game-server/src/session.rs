//! One task per WebSocket connection: reads client messages, writes the room's
//! frames from a bounded queue, keeps a single heartbeat deadline, and closes with
//! a clear code and reason.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use prometheus::IntCounter;
use tracing::{Instrument, Span, info_span};

use crate::directory::Claim;
use crate::outbox::Outbox;
use crate::protocol::{ClientMsg, Encoding, ProtocolError, ServerMsg, close};
use crate::room::{JoinError, Member, RoomHandle};
use crate::server::App;
use crate::token::valid_player_id;

/// Why a session ended: a close code we send (if any) and a reason for logs/metrics.
struct Ending {
    code: Option<u16>,
    reason: &'static str,
    /// Server-initiated for cause (counted in game_kicks_total).
    kick: bool,
}

impl Ending {
    fn kick(code: u16, reason: &'static str) -> Self {
        Self {
            code: Some(code),
            reason,
            kick: true,
        }
    }
    fn quiet(reason: &'static str) -> Self {
        Self {
            code: None,
            reason,
            kick: false,
        }
    }
}

enum WriteErr {
    Kicked,
    Timeout,
    Io,
}

/// The socket, read and written by the session's one task (not split: no lock between a
/// read half and a write half), and the frames waiting to be written.
struct Conn {
    ws: WebSocket,
    enc: Encoding,
    out: Arc<Outbox>,
    write_timeout: Duration,
    sent: IntCounter,
    sent_bytes: IntCounter,
    batch: VecDeque<Message>,
    /// Since when frames have been waiting to be written (None: nothing to write). The main
    /// loop checks it when the heartbeat fires, instead of a timer per write.
    writing: Option<Instant>,
}

/// What the socket did: the pending write finished or failed, or a message (or the end) arrived.
enum Io {
    WriteFailed,
    Written,
    Read(Option<Result<Message, axum::Error>>),
}

impl Conn {
    fn frame(&self, data: Bytes) -> Message {
        match self.enc {
            Encoding::Binary => Message::Binary(data),
            // Our own encoder produced it, so this validation cannot fail.
            Encoding::Json => Message::Text(
                Utf8Bytes::try_from(data).unwrap_or_else(|_| Utf8Bytes::from_static("{}")),
            ),
        }
    }

    fn push(&mut self, data: Bytes) {
        self.sent.inc();
        self.sent_bytes.inc_by(data.len() as u64);
        let m = self.frame(data);
        self.push_msg(m);
    }

    fn push_msg(&mut self, m: Message) {
        self.batch.push_back(m);
        self.writing.get_or_insert_with(Instant::now);
    }

    /// Make progress on the queued frames: all of them go into tungstenite's write buffer,
    /// then one flush writes them (one syscall for the batch while the socket takes it).
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        while !self.batch.is_empty() {
            ready!(self.ws.poll_ready_unpin(cx))?;
            if let Some(m) = self.batch.pop_front() {
                self.ws.start_send_unpin(m)?;
            }
        }
        ready!(self.ws.poll_flush_unpin(cx))?;
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    /// Poll the pending write (if any) and the next incoming message.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Io> {
        // A finished write ends the loop's turn: the next turn may take frames again (whether
        // it may is decided when the turn starts).
        if self.writing.is_some()
            && let Poll::Ready(r) = self.poll_write(cx)
        {
            return Poll::Ready(match r {
                Ok(()) => Io::Written,
                Err(_) => Io::WriteFailed,
            });
        }
        self.ws.poll_next_unpin(cx).map(Io::Read)
    }

    /// Write what is queued now (the rare direct replies: welcome, errors, redirect); give up
    /// if kicked or the peer stalls.
    async fn flush(&mut self) -> Result<(), WriteErr> {
        let out = self.out.clone();
        let limit = self.write_timeout;
        let write = std::future::poll_fn(|cx| self.poll_write(cx));
        tokio::select! {
            r = tokio::time::timeout(limit, write) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(WriteErr::Io),
                Err(_) => Err(WriteErr::Timeout),
            },
            _ = out.wait_kicked() => Err(WriteErr::Kicked),
        }
    }
}

/// Token bucket: `rate` per second, up to `burst` at once.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = burst.max(1) as f64;
        Self {
            tokens: burst,
            rate: rate.max(1) as f64,
            burst,
            last: Instant::now(),
        }
    }
    fn allow(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens + (now - self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn classify_read_error(e: axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(e) => match *e {
            WsError::Capacity(_) => Ending::kick(close::TOO_BIG, "message_too_big"),
            WsError::Protocol(_) => Ending::kick(1002, "protocol_error"),
            WsError::Utf8(_) => Ending::kick(close::INVALID_PAYLOAD, "invalid_utf8"),
            WsError::ConnectionClosed | WsError::AlreadyClosed => Ending::quiet("closed"),
            _ => Ending::quiet("io_error"),
        },
        Err(_) => Ending::quiet("io_error"),
    }
}

pub struct SessionParams {
    pub session_id: u64,
    pub player: String,
    pub encoding: Encoding,
    /// `?resume=<session>`: rejoin the room that session was in (kept in Redis).
    pub resume: Option<String>,
}

/// The session's future. The socket and the session state go into one box here, before the
/// future exists: an async fn keeps its arguments for its whole life, so passing them by value
/// (to this fn, then to `Session::run`) stored them again in every session's task, idle or not.
pub fn run(
    ws: WebSocket,
    app: Arc<App>,
    p: SessionParams,
) -> impl std::future::Future<Output = ()> + Send {
    let session = Box::new(Session::new(ws, app.clone(), p));
    async move {
        let m = &app.metrics;
        m.sessions_active.inc();
        m.sessions_total.inc();
        let ending = session.run().await;
        end(&app, ending);
    }
}

fn end(app: &App, ending: Ending) {
    app.metrics.sessions_active.dec();
    let span = Span::current();
    span.record("ws.close.reason", ending.reason);
    if let Some(c) = ending.code {
        span.record("ws.close.code", c);
    }
    tracing::info!(reason = ending.reason, code = ending.code, "session closed");
}

/// The session's end of its outbox: closed when the session ends, so rooms stop queueing.
struct OutboxRx(Arc<Outbox>);

impl Drop for OutboxRx {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct Session {
    app: Arc<App>,
    sid: u64,
    player: String,
    /// The same, shared with every input command sent to the room (no allocation per input).
    player_rc: Arc<str>,
    enc: Encoding,
    conn: Conn,
    rx: OutboxRx,
    /// Frames taken from the outbox in one swap (its capacity is reused).
    taken: VecDeque<Bytes>,
    member: Member,
    room: Option<RoomHandle>,
    resume: Option<String>,
    scratch: BytesMut,
    received: IntCounter,
    received_bytes: IntCounter,
}

impl Session {
    fn new(ws: WebSocket, app: Arc<App>, p: SessionParams) -> Self {
        let tx = Arc::new(Outbox::new(app.cfg.outbound_queue));
        let rx = OutboxRx(tx.clone());
        let enc = p.encoding;
        let m = &app.metrics;
        Self {
            conn: Conn {
                ws,
                enc,
                out: tx.clone(),
                write_timeout: app.cfg.heartbeat_timeout(),
                sent: m.messages_sent_total.with_label_values(&[enc.as_str()]),
                sent_bytes: m.sent_bytes_total.clone(),
                // Grown on first use: an idle session queues only a heartbeat now and then.
                batch: VecDeque::new(),
                writing: None,
            },
            received: m.messages_received_total.with_label_values(&[enc.as_str()]),
            received_bytes: m.received_bytes_total.clone(),
            member: Member {
                session_id: p.session_id,
                encoding: enc,
                tx,
            },
            rx,
            taken: VecDeque::new(),
            room: None,
            scratch: BytesMut::with_capacity(256),
            sid: p.session_id,
            resume: p.resume,
            player_rc: Arc::from(p.player.as_str()),
            player: p.player,
            enc,
            app,
        }
    }

    fn encode(&mut self, msg: &ServerMsg) -> Bytes {
        self.enc.encode_server(msg, &mut self.scratch);
        self.scratch.split().freeze()
    }

    async fn send_now(&mut self, msg: &ServerMsg) -> Result<(), WriteErr> {
        let b = self.encode(msg);
        self.conn.push(b);
        self.conn.flush().await
    }

    async fn run(mut self: Box<Self>) -> Ending {
        let cfg = self.app.cfg.clone();
        let ping_after = cfg.heartbeat_interval();
        let kick_after = cfg.heartbeat_timeout();
        // The rare paths (welcome and resume, joins, the close handshake) are boxed: their
        // futures (Redis, persistence, timers) would otherwise be part of every session's
        // future, idle or not, for its whole life.
        let ending = match Box::pin(self.welcome_and_resume()).await {
            Ok(()) => {
                self.main_loop(ping_after, kick_after, cfg.msg_rate, cfg.msg_burst)
                    .await
            }
            Err(e) => self.write_ending(e),
        };
        // Leaving the room: an explicit leave already happened; otherwise keep the
        // player for the reconnect grace.
        if let Some(room) = self.room.take() {
            room.disconnected(&self.player, self.sid);
        }
        // Counted before the close handshake, which may take a while with a stuck peer.
        if ending.kick {
            self.app
                .metrics
                .kicks_total
                .with_label_values(&[ending.reason])
                .inc();
        }
        if let Some(code) = ending.code {
            Box::pin(self.close(code, ending.reason)).await;
        }
        ending
    }

    fn write_ending(&self, e: WriteErr) -> Ending {
        match e {
            WriteErr::Kicked => {
                let (c, r) = self.member.tx.kicked().unwrap_or((close::POLICY, "kicked"));
                Ending::kick(c, r)
            }
            // A peer that stops reading until our write times out is a slow consumer too.
            WriteErr::Timeout => Ending::kick(close::SLOW_CONSUMER, "slow_consumer"),
            WriteErr::Io => Ending::quiet("io_error"),
        }
    }

    async fn main_loop(
        &mut self,
        ping_after: Duration,
        kick_after: Duration,
        rate: u32,
        burst: u32,
    ) -> Ending {
        // One timer per session for the whole heartbeat; messages only bump `last_seen`
        // and the timer is moved lazily when it fires (no timer per message).
        let heartbeat = tokio::time::sleep(ping_after);
        tokio::pin!(heartbeat);
        let mut last_seen = Instant::now();
        let mut last_ping = Instant::now();
        let mut ping_id: u32 = 0;
        let mut limit = RateLimit::new(rate, burst);
        // Created once and kept pinned: a fresh future per loop turn would register and
        // unregister a waiter (under a lock) on every message.
        let shutdown = self.app.shutdown.clone();
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        loop {
            // While a write is pending, frames stay in the bounded queue; when it fills up
            // the room drops the session as a slow consumer.
            let take = self.conn.writing.is_none();
            tokio::select! {
                biased;
                _ = &mut shutdown => return Ending { code: Some(close::GOING_AWAY), reason: "server_shutdown", kick: false },
                // Kicks and frames wake the session through one waker: one poll per wake-up.
                () = std::future::poll_fn(|cx| self.rx.0.poll_take(cx, take, &mut self.taken)) => {
                    if let Some((code, reason)) = self.rx.0.kicked() {
                        return Ending::kick(code, reason);
                    }
                    // Everything queued is written with one flush.
                    for f in self.taken.drain(..) {
                        self.conn.push(f);
                    }
                }
                _ = &mut heartbeat => {
                    let now = Instant::now();
                    // A peer that stops reading until a write has waited for the write
                    // timeout is a slow consumer too (checked here: no timer per write).
                    if self.conn.writing.is_some_and(|t| now - t >= self.conn.write_timeout) {
                        return self.write_ending(WriteErr::Timeout);
                    }
                    let idle = now - last_seen;
                    if idle >= kick_after {
                        return Ending::kick(close::HEARTBEAT_TIMEOUT, "heartbeat_timeout");
                    }
                    if idle >= ping_after && now - last_ping >= ping_after {
                        last_ping = now;
                        ping_id = ping_id.wrapping_add(1);
                        let ts = crate::protocol::unix_micros();
                        // Both: WebSocket ping for libraries that answer it, app ping for clients behind proxies.
                        self.conn.push_msg(Message::Ping(Bytes::copy_from_slice(&ts.to_le_bytes())));
                        let b = self.encode(&ServerMsg::Ping { id: ping_id, ts });
                        self.conn.push(b);
                    }
                    let mut next = if idle >= ping_after {
                        (last_seen + kick_after).min(now + ping_after)
                    } else {
                        last_seen + ping_after
                    };
                    if let Some(t) = self.conn.writing {
                        next = next.min((t + self.conn.write_timeout).max(now + Duration::from_millis(10)));
                    }
                    heartbeat.as_mut().reset(next.into());
                }
                io = std::future::poll_fn(|cx| self.conn.poll_io(cx)) => {
                    let msg = match io {
                        Io::WriteFailed => return Ending::quiet("io_error"),
                        Io::Written => continue,
                        Io::Read(None) => return Ending::quiet("peer_gone"),
                        Io::Read(Some(Err(e))) => return classify_read_error(e),
                        Io::Read(Some(Ok(m))) => m,
                    };
                    let now = Instant::now();
                    last_seen = now;
                    let data = match (msg, self.enc) {
                        (Message::Text(t), Encoding::Json) => Bytes::from(t),
                        (Message::Binary(b), Encoding::Binary) => b,
                        (Message::Text(_) | Message::Binary(_), _) => {
                            return Ending::kick(close::INVALID_PAYLOAD, "wrong_frame_type");
                        }
                        (Message::Close(_), _) => return Ending::quiet("client_close"),
                        // tungstenite answers pings itself; a pong only proves liveness.
                        (Message::Ping(_) | Message::Pong(_), _) => continue,
                    };
                    if !limit.allow(now) {
                        return Ending::kick(close::RATE_LIMITED, "rate_limited");
                    }
                    self.received.inc();
                    self.received_bytes.inc_by(data.len() as u64);
                    let msg = match self.enc.decode_client(&data) {
                        Ok(m) => m,
                        Err(ProtocolError::Malformed(e)) => {
                            tracing::debug!("malformed message: {e}");
                            return Ending::kick(close::INVALID_PAYLOAD, "malformed_message");
                        }
                        Err(ProtocolError::WrongFrameType) => return Ending::kick(close::INVALID_PAYLOAD, "wrong_frame_type"),
                    };
                    if let Err(e) = self.handle(msg).await {
                        return self.write_ending(e);
                    }
                }
            }
        }
    }

    async fn handle(&mut self, msg: ClientMsg) -> Result<(), WriteErr> {
        match msg {
            ClientMsg::Input(i) => {
                if let Some(r) = &self.room
                    && !r.input(&self.player_rc, self.sid, i)
                {
                    self.app.metrics.inputs_dropped_total.inc();
                }
                Ok(())
            }
            ClientMsg::Ping { id, ts } => {
                // Written by the main loop with whatever else is queued.
                let b = self.encode(&ServerMsg::Pong { id, ts });
                self.conn.push(b);
                Ok(())
            }
            ClientMsg::Pong { .. } => Ok(()),
            ClientMsg::Join { room } => Box::pin(self.join(room)).await,
            ClientMsg::Leave => {
                if let Some(r) = self.room.take() {
                    let span = info_span!("room.leave", "room.id" = %r.name, "player.id" = %self.player,
                        "session.id" = %format!("{:016x}", self.sid));
                    Box::pin(r.leave(&self.player, self.sid).instrument(span)).await;
                }
                Ok(())
            }
        }
    }

    async fn welcome_and_resume(&mut self) -> Result<(), WriteErr> {
        let welcome = ServerMsg::Welcome {
            session: format!("{:016x}", self.sid),
            player: self.player.clone(),
            tick_hz: self.app.cfg.tick_hz,
            heartbeat_ms: self.app.cfg.heartbeat_interval_ms as u32,
        };
        self.send_now(&welcome).await?;
        let (Some(token), Some(redis)) = (self.resume.take(), self.app.redis.clone()) else {
            return Ok(());
        };
        match crate::cache::get_resume(&redis, &token, &self.player).await {
            Ok(Some(room)) => self.join(room).await,
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::info!("resume lookup failed: {e}");
                Ok(())
            }
        }
    }

    /// A room this server does not run: ask the directory. Owned elsewhere → a `redirect`
    /// message, then close 4004; directory unreachable → close 4005. Rooms this server runs
    /// need no Redis at all, so they keep going while it is down.
    async fn route(&mut self, room: &str) -> Result<(), WriteErr> {
        let Some(dir) = self.app.directory.clone() else {
            return Ok(());
        };
        if self.app.rooms.is_local(room) {
            return Ok(());
        }
        match dir.claim(room).await {
            Ok(Claim::Mine) => Ok(()),
            Ok(Claim::Elsewhere(url)) => {
                self.send_now(&ServerMsg::Redirect {
                    room: room.to_owned(),
                    url,
                })
                .await?;
                self.member.tx.kick(close::ROOM_ELSEWHERE, "room_elsewhere");
                Err(WriteErr::Kicked)
            }
            Err(e) => {
                tracing::warn!(room, "room directory unavailable: {e}");
                self.member
                    .tx
                    .kick(close::DIRECTORY_UNAVAILABLE, "directory_unavailable");
                Err(WriteErr::Kicked)
            }
        }
    }

    async fn join(&mut self, room: String) -> Result<(), WriteErr> {
        if !valid_player_id(&room) {
            return self
                .send_now(&ServerMsg::Error {
                    code: 400,
                    msg: "invalid room name".into(),
                })
                .await;
        }
        if self.room.as_ref().is_some_and(|r| *r.name == *room) {
            return Ok(());
        }
        self.route(&room).await?;
        let span = info_span!("room.join", "room.id" = %room, "player.id" = %self.player,
            "session.id" = %format!("{:016x}", self.sid), "game.join.resumed" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty);
        let res = async {
            if let Some(old) = self.room.take() {
                old.leave(&self.player, self.sid).await;
            }
            let rooms = &self.app.rooms;
            rooms.release_elsewhere(&self.player, &room).await;
            let record = self
                .app
                .persistence
                .load(&self.player)
                .await
                .map_err(|e| (503u16, format!("player data unavailable: {e}")))?;
            let (h, ok) = rooms
                .join(&room, &self.player, self.member.clone(), record)
                .await
                .map_err(|e| match e {
                    JoinError::Full => (409u16, e.to_string()),
                    JoinError::Closed => (503u16, e.to_string()),
                })?;
            Span::current().record("game.join.resumed", ok.resumed);
            Ok::<_, (u16, String)>(h)
        }
        .instrument(span.clone())
        .await;
        match res {
            Ok(h) => {
                self.room = Some(h);
                if let Some(redis) = self.app.redis.clone() {
                    // Stored before the client sees `joined` (the room's frames wait in this
                    // session's queue until we return): a client that reconnects at once, to
                    // any server, must find it. Best effort and bounded: without it a
                    // reconnect simply joins by name again.
                    let (sid, player) = (format!("{:016x}", self.sid), self.player.clone());
                    let ttl = self.app.cfg.reconnect_grace().max(Duration::from_secs(60));
                    let put = crate::cache::put_resume(&redis, &sid, &player, &room, ttl);
                    let _ = tokio::time::timeout(Duration::from_millis(250), put).await;
                }
                Ok(())
            }
            Err((code, msg)) => {
                span.record("otel.status_code", "ERROR");
                self.send_now(&ServerMsg::Error { code, msg }).await
            }
        }
    }

    /// Send our close frame and wait briefly for the peer's, so the close frame is
    /// not lost to a reset.
    async fn close(&mut self, code: u16, reason: &'static str) {
        self.conn.batch.clear();
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let wrote = matches!(
            tokio::time::timeout(Duration::from_secs(5), self.conn.ws.send(frame)).await,
            Ok(Ok(()))
        );
        if wrote {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(m)) = self.conn.ws.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(WebSocket, Arc<App>, SessionParams) -> Fut,
        Fut: std::future::Future,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every session's future lives as long as the session, idle or not: the rare paths (joins
    /// with their Redis and persistence futures, the close handshake) are boxed, and the
    /// socket and session state are stored once, in their own box. In a debug build it was
    /// 7.7 KB, 3.0 KB with the rare paths boxed, 1.1 KB with the state boxed too.
    #[test]
    fn session_future_stays_small() {
        let n = future_size(run);
        assert!(n <= 1536, "session future is {n} bytes");
    }
}
