//! The room task: a fixed-timestep loop. Game time advances only in whole ticks of
//! `dt`; wall time feeds an accumulator; catch-up after a stall is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{Instrument, debug_span};

use super::world::World;
use super::{RoomCmd, Shared};

/// An empty room (no players, none in grace) stops after this long.
const IDLE_EXIT: Duration = Duration::from_secs(30);

pub(super) async fn run(
    shared: Arc<Shared>,
    name: Arc<str>,
    id: u64,
    mut rx: mpsc::Receiver<RoomCmd>,
) {
    // Debug level: a room lives for hours, too long to be a useful exported span.
    let span = debug_span!("room", "room.id" = %name);
    async move {
        shared.metrics.rooms_active.inc();
        let dt = shared.cfg.tick_dt();
        let dt_secs = dt.as_secs_f32();
        let max_catchup = shared.cfg.max_catchup_ticks.max(1);
        let grace = shared.cfg.reconnect_grace();
        let mut world = World::new(shared.clone(), name.clone(), id.wrapping_mul(0x9E37_79B9_7F4A_7C15));

        // The interval only wakes us; the accumulator decides how many ticks to run.
        // `Skip`: after a stall, burst wake-ups would carry no extra information (the
        // accumulator already holds the elapsed time) and would only add latency.
        let mut wake = tokio::time::interval(dt);
        wake.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut last = Instant::now();
        let mut acc = Duration::ZERO;
        let mut empty_since: Option<Instant> = None;

        loop {
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => {
                    world.stage_all();
                    break;
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    handle(&mut world, cmd, grace);
                }
                _ = wake.tick() => {
                    let now = Instant::now();
                    acc += now - last;
                    last = now;
                    if world.is_empty() {
                        // Nobody to simulate for: the world (and its NPCs) pauses.
                        acc = Duration::ZERO;
                    }
                    let started = Instant::now();
                    let mut steps = 0;
                    while acc >= dt {
                        if steps == max_catchup {
                            // Bounded catch-up: drop the backlog rather than spiral.
                            let dropped = (acc.as_nanos() / dt.as_nanos()) as u64;
                            shared.metrics.ticks_dropped_total.inc_by(dropped);
                            acc = Duration::ZERO;
                            break;
                        }
                        world.step(dt_secs);
                        acc -= dt;
                        steps += 1;
                    }
                    if steps > 0 {
                        world.expire(now);
                        // One batched delta per member per wake-up, covering all ticks run.
                        world.broadcast();
                        let took = started.elapsed();
                        shared.metrics.tick_duration_seconds.observe(took.as_secs_f64());
                        shared.metrics.ticks_total.inc_by(steps as u64);
                        if took > dt {
                            shared.metrics.tick_overruns_total.inc();
                        }
                    }
                    if world.is_empty() {
                        let since = *empty_since.get_or_insert(now);
                        if now - since >= IDLE_EXIT {
                            shared.remove_room(&name, id);
                            // Anything that raced in gets its reply sender dropped: callers retry.
                            rx.close();
                            while let Some(cmd) = rx.recv().await {
                                if let RoomCmd::Leave { reply, .. } | RoomCmd::Evict { reply, .. } = cmd {
                                    let _ = reply.send(());
                                }
                            }
                            break;
                        }
                    } else {
                        empty_since = None;
                    }
                }
            }
        }
        shared.remove_room(&name, id);
        world.clear();
        shared.metrics.rooms_active.dec();
    }
    .instrument(span)
    .await
}

fn handle(world: &mut World, cmd: RoomCmd, grace: Duration) {
    match cmd {
        RoomCmd::Join {
            player,
            member,
            record,
            reply,
        } => {
            let r = world.join(player, member, record);
            let _ = reply.send(r);
        }
        RoomCmd::Leave {
            player,
            session_id,
            reply,
        } => {
            world.leave(&player, session_id);
            let _ = reply.send(());
        }
        RoomCmd::Disconnected { player, session_id } => {
            world.disconnected(&player, session_id, grace)
        }
        RoomCmd::Evict { player, reply } => {
            world.evict(&player);
            let _ = reply.send(());
        }
        RoomCmd::Input {
            player,
            session_id,
            input,
        } => world.input(&player, session_id, input),
    }
}
