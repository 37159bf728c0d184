//! Prometheus metrics (prefix `game_`). One registry per server, shared with the pool.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub sessions_active: IntGauge,
    pub sessions_total: IntCounter,
    pub handshake_rejected_total: IntCounterVec,
    pub connections_accepted_total: IntCounter,
    pub connections_refused_total: IntCounterVec,
    pub connections_max: IntGauge,
    pub accept_errors_total: IntCounterVec,
    pub handshake_timeouts_total: IntCounter,
    pub messages_received_total: IntCounterVec,
    pub messages_sent_total: IntCounterVec,
    pub received_bytes_total: IntCounter,
    pub sent_bytes_total: IntCounter,
    pub kicks_total: IntCounterVec,
    pub outbound_dropped_total: IntCounter,
    pub inputs_dropped_total: IntCounter,
    pub rooms_active: IntGauge,
    pub room_members: IntGauge,
    pub joins_total: IntCounterVec,
    pub tick_duration_seconds: Histogram,
    pub tick_overruns_total: IntCounter,
    pub ticks_total: IntCounter,
    pub ticks_dropped_total: IntCounter,
    pub persistence_flushes_total: IntCounterVec,
    pub persistence_flush_duration_seconds: Histogram,
    pub persistence_records_written_total: IntCounter,
    pub persistence_pending_records: IntGauge,
    pub persistence_loads_total: IntCounterVec,
    pub batch_tasks_total: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric");
    r.register(Box::new(g.clone())).expect("register");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("metric");
    r.register(Box::new(h.clone())).expect("register");
    h
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            sessions_active: gauge(&r, "game_sessions_active", "Open WebSocket sessions."),
            sessions_total: counter(&r, "game_sessions_total", "WebSocket sessions accepted."),
            handshake_rejected_total: counter_vec(
                &r,
                "game_handshake_rejected_total",
                "WebSocket upgrades refused, by reason (origin, token).",
                &["reason"],
            ),
            connections_accepted_total: counter(
                &r,
                "game_connections_accepted_total",
                "TCP connections admitted under the connection cap.",
            ),
            connections_refused_total: counter_vec(
                &r,
                "game_connections_refused_total",
                "TCP connections answered 503 and closed, by reason (max_connections, fd_limit).",
                &["reason"],
            ),
            connections_max: gauge(
                &r,
                "game_connections_max",
                "The connection cap (--max-connections, or the fd limit less a headroom).",
            ),
            accept_errors_total: counter_vec(
                &r,
                "game_accept_errors_total",
                "accept() failures the loop backed off on, by reason (fd_limit, other).",
                &["reason"],
            ),
            handshake_timeouts_total: counter(
                &r,
                "game_handshake_timeouts_total",
                "Connections closed for not sending a request head within --handshake-timeout-ms.",
            ),
            messages_received_total: counter_vec(
                &r,
                "game_messages_received_total",
                "Client messages received, by encoding.",
                &["encoding"],
            ),
            messages_sent_total: counter_vec(
                &r,
                "game_messages_sent_total",
                "Server messages written to sockets, by encoding.",
                &["encoding"],
            ),
            received_bytes_total: counter(
                &r,
                "game_received_bytes_total",
                "Payload bytes of client messages.",
            ),
            sent_bytes_total: counter(&r, "game_sent_bytes_total", "Payload bytes written."),
            kicks_total: counter_vec(
                &r,
                "game_kicks_total",
                "Sessions closed by the server, by reason.",
                &["reason"],
            ),
            outbound_dropped_total: counter(
                &r,
                "game_outbound_dropped_total",
                "Outbound frames dropped because a client's queue was full.",
            ),
            inputs_dropped_total: counter(
                &r,
                "game_inputs_dropped_total",
                "Client inputs dropped because a room's command queue was full.",
            ),
            rooms_active: gauge(&r, "game_rooms_active", "Rooms with a running loop."),
            room_members: gauge(&r, "game_room_members", "Players in rooms (incl. grace)."),
            joins_total: counter_vec(
                &r,
                "game_room_joins_total",
                "Room joins, by kind (new, resumed).",
                &["kind"],
            ),
            tick_duration_seconds: histogram(
                &r,
                "game_tick_duration_seconds",
                "Time spent simulating and broadcasting one room tick.",
                vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04,
                    0.05, 0.075, 0.1, 0.25,
                ],
            ),
            tick_overruns_total: counter(
                &r,
                "game_tick_overruns_total",
                "Ticks that took longer than the tick budget (1/tick_hz).",
            ),
            ticks_total: counter(&r, "game_ticks_total", "Room ticks simulated."),
            ticks_dropped_total: counter(
                &r,
                "game_ticks_dropped_total",
                "Ticks skipped because catch-up exceeded --max-catchup-ticks.",
            ),
            persistence_flushes_total: counter_vec(
                &r,
                "game_persistence_flushes_total",
                "Write-behind batches, by result (ok, error).",
                &["result"],
            ),
            persistence_flush_duration_seconds: histogram(
                &r,
                "game_persistence_flush_duration_seconds",
                "Time to commit one write-behind batch.",
                prometheus::exponential_buckets(0.0001, 2.5, 12).expect("buckets"),
            ),
            persistence_records_written_total: counter(
                &r,
                "game_persistence_records_written_total",
                "Player records committed to the store.",
            ),
            persistence_pending_records: gauge(
                &r,
                "game_persistence_pending_records",
                "Player records staged but not yet committed.",
            ),
            persistence_loads_total: counter_vec(
                &r,
                "game_persistence_loads_total",
                "Player loads on join, by source (store, pending, new, error).",
                &["source"],
            ),
            batch_tasks_total: counter_vec(
                &r,
                "game_batch_tasks_total",
                "Batch-job tasks, by kind and result (submitted, rejected, ok, error).",
                &["kind", "result"],
            ),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
