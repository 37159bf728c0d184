//! Player store: SQLite (bundled) written behind through the worker pool.
//!
//! Rooms `stage` a player's record whenever key data changes (gold, items) and about
//! once a second for positions. A flusher commits everything staged in one transaction
//! every `--flush-interval-ms`. A record leaves the staging map only after the commit
//! that carried it succeeded, and loads consult staged records first, so a reader
//! never sees data older than what the server has acknowledged.
//!
//! Loss window: a SIGKILL loses at most what was staged after the last committed
//! flush, i.e. roughly one flush interval plus one batch's commit time (positions
//! may additionally lag by their 1 s staging cadence). WAL mode with
//! `synchronous=NORMAL` makes a committed batch survive a process crash (not
//! necessarily a power loss). A clean shutdown flushes everything.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, params};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::background::Background;
use crate::metrics::Metrics;

#[derive(Clone, Debug, PartialEq, Default)]
pub struct PlayerRecord {
    pub player: String,
    pub gold: i64,
    pub items: Vec<String>,
    pub x: f32,
    pub y: f32,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS players (
    player TEXT PRIMARY KEY,
    gold INTEGER NOT NULL,
    items TEXT NOT NULL,
    x REAL NOT NULL,
    y REAL NOT NULL,
    updated_unix_ms INTEGER NOT NULL
)";

pub struct Persistence {
    path: PathBuf,
    bg: Background,
    metrics: Arc<Metrics>,
    /// Staged records not yet committed, with the version that staged them.
    pending: Mutex<HashMap<String, (u64, PlayerRecord)>>,
    version: AtomicU64,
    /// One flush at a time, so batches commit in staging order.
    flushing: tokio::sync::Mutex<()>,
}

thread_local! {
    // Pool workers are long-lived OS threads: each keeps its own connection.
    static CONN: RefCell<Option<(PathBuf, Connection)>> = const { RefCell::new(None) };
}

fn open_conn(path: &Path) -> anyhow::Result<Connection> {
    let c = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
    c.busy_timeout(Duration::from_secs(5))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(c)
}

fn with_conn<T>(
    path: &Path,
    f: impl FnOnce(&mut Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    CONN.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(p, _)| p != path) {
            *slot = Some((path.to_path_buf(), open_conn(path)?));
        }
        let (_, conn) = slot.as_mut().expect("connection just opened");
        f(conn)
    })
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Persistence {
    /// Open (creating) the store under `data_dir`; schema is created synchronously at startup.
    pub fn open(
        data_dir: &Path,
        bg: Background,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("create data dir {}", data_dir.display()))?;
        let path = data_dir.join("players.sqlite3");
        open_conn(&path)?.execute_batch(SCHEMA)?;
        Ok(Arc::new(Self {
            path,
            bg,
            metrics,
            pending: Mutex::new(HashMap::new()),
            version: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Load a player's record: staged (newest) first, then the store, else a fresh one.
    pub async fn load(&self, player: &str) -> anyhow::Result<PlayerRecord> {
        if let Some((_, r)) = self.pending.lock().unwrap().get(player) {
            self.metrics
                .persistence_loads_total
                .with_label_values(&["pending"])
                .inc();
            return Ok(r.clone());
        }
        let path = self.path.clone();
        let p = player.to_string();
        let span = info_span!("persistence.load", "db.system.name" = "sqlite", "player.id" = %player,
            "thread.id" = tracing::field::Empty);
        let s2 = span.clone();
        let res = self
            .bg
            .run("persistence.load", Duration::from_secs(5), move |info| {
                s2.record("thread.id", info.thread_id);
                with_conn(&path, |c| {
                    c.query_row(
                        "SELECT gold, items, x, y FROM players WHERE player = ?1",
                        [&p],
                        |row| {
                            Ok(PlayerRecord {
                                player: p.clone(),
                                gold: row.get(0)?,
                                items: serde_json::from_str::<Vec<String>>(
                                    &row.get::<_, String>(1)?,
                                )
                                .unwrap_or_default(),
                                x: row.get::<_, f64>(2)? as f32,
                                y: row.get::<_, f64>(3)? as f32,
                            })
                        },
                    )
                    .optional()
                    .map_err(Into::into)
                })
            })
            .instrument(span)
            .await;
        // A record staged while we were reading is newer than what we read.
        if let Some((_, r)) = self.pending.lock().unwrap().get(player) {
            return Ok(r.clone());
        }
        let (source, rec) = match res {
            Ok(Some(r)) => ("store", r),
            Ok(None) => (
                "new",
                PlayerRecord {
                    player: player.to_string(),
                    ..Default::default()
                },
            ),
            Err(e) => {
                self.metrics
                    .persistence_loads_total
                    .with_label_values(&["error"])
                    .inc();
                return Err(anyhow::anyhow!("load {player}: {e}"));
            }
        };
        self.metrics
            .persistence_loads_total
            .with_label_values(&[source])
            .inc();
        Ok(rec)
    }

    /// Stage a record for the next write-behind batch (replaces an older staged one).
    pub fn stage(&self, rec: PlayerRecord) {
        let v = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let mut p = self.pending.lock().unwrap();
        p.insert(rec.player.clone(), (v, rec));
        self.metrics.persistence_pending_records.set(p.len() as i64);
    }

    pub fn pending_len(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    /// Commit everything staged so far in one transaction. Returns records written.
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let _one = self.flushing.lock().await;
        let batch: Vec<(u64, PlayerRecord)> =
            self.pending.lock().unwrap().values().cloned().collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        let span = info_span!(
            "persistence.flush",
            "db.system.name" = "sqlite",
            "db.operation.name" = "UPSERT",
            "db.operation.batch.size" = n as i64,
            "db.collection.name" = "players",
            "thread.id" = tracing::field::Empty
        );
        let path = self.path.clone();
        let started = Instant::now();
        let versions: Vec<(String, u64)> =
            batch.iter().map(|(v, r)| (r.player.clone(), *v)).collect();
        let s2 = span.clone();
        let res = self
            .bg
            .run("persistence.flush", Duration::from_secs(10), move |info| {
                s2.record("thread.id", info.thread_id);
                with_conn(&path, |c| {
                    let tx = c.transaction()?;
                    {
                        let mut st = tx.prepare_cached(
                            "INSERT INTO players (player, gold, items, x, y, updated_unix_ms)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                             ON CONFLICT(player) DO UPDATE SET gold = excluded.gold,
                               items = excluded.items, x = excluded.x, y = excluded.y,
                               updated_unix_ms = excluded.updated_unix_ms",
                        )?;
                        let now = unix_ms();
                        for (_, r) in &batch {
                            st.execute(params![
                                r.player,
                                r.gold,
                                serde_json::to_string(&r.items)?,
                                r.x as f64,
                                r.y as f64,
                                now
                            ])?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
            })
            .instrument(span)
            .await;
        self.metrics
            .persistence_flush_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(()) => {
                let mut p = self.pending.lock().unwrap();
                for (player, v) in versions {
                    // Only drop entries not re-staged while the batch was committing.
                    if p.get(&player).is_some_and(|(cur, _)| *cur == v) {
                        p.remove(&player);
                    }
                }
                self.metrics.persistence_pending_records.set(p.len() as i64);
                self.metrics
                    .persistence_flushes_total
                    .with_label_values(&["ok"])
                    .inc();
                self.metrics
                    .persistence_records_written_total
                    .inc_by(n as u64);
                Ok(n)
            }
            Err(e) => {
                self.metrics
                    .persistence_flushes_total
                    .with_label_values(&["error"])
                    .inc();
                Err(anyhow::anyhow!("flush: {e}"))
            }
        }
    }

    /// Flush every `interval` until `stop` is cancelled. `Delay` on missed ticks: a slow
    /// commit should push the next one back, not cause back-to-back flushes.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = t.tick() => {
                        if let Err(e) = this.flush().await {
                            tracing::warn!("write-behind flush failed (will retry): {e:#}");
                        }
                    }
                }
            }
        })
    }

    /// Read-only query used by the batch job: a page of players.
    pub fn read_page(path: &Path, offset: i64, limit: i64) -> anyhow::Result<Vec<PlayerRecord>> {
        with_conn(path, |c| {
            let mut st = c.prepare_cached(
                "SELECT player, gold, x, y FROM players ORDER BY player LIMIT ?1 OFFSET ?2",
            )?;
            let rows = st.query_map(params![limit, offset], |row| {
                Ok(PlayerRecord {
                    player: row.get(0)?,
                    gold: row.get(1)?,
                    items: Vec::new(),
                    x: row.get::<_, f64>(2)? as f32,
                    y: row.get::<_, f64>(3)? as f32,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}
