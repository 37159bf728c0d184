//! Connection admission, in front of HTTP: a cap on open connections (sessions included) set
//! below the fd limit, a deadline for the HTTP request head (slowloris), and an accept loop
//! that refuses cleanly instead of stalling when the cap or the fd limit is reached.
//!
//! What a refused client sees: over the cap, `HTTP/1.1 503` with `Retry-After: 1`, then the
//! close; at the fd limit (something else took the fds the cap left), the same 503 written
//! through a reserve fd. A client is never left in the listen backlog waiting for an accept
//! that cannot come, and the loop never spins on EMFILE.
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::ConnAddrs;
use crate::metrics::Metrics;

/// Fds kept out of the connection cap for everything else (store, Redis pool, exporter,
/// epoll, the reserve fd, refusals in flight).
const FD_HEADROOM: u64 = 64;

/// The connection's place under the cap; the WebSocket session takes a clone with it, so the
/// place is held until the session ends, not just until the upgrade.
#[derive(Clone)]
pub struct ConnSlot(#[expect(dead_code, reason = "held for its drop")] Arc<OwnedSemaphorePermit>);

pub struct Admission {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

impl Admission {
    /// `max_connections == 0`: the soft RLIMIT_NOFILE less a headroom for other fds.
    pub fn new(max_connections: usize, handshake_timeout: Duration) -> Self {
        let max_connections = if max_connections == 0 {
            default_max_connections()
        } else {
            max_connections
        };
        Self {
            max_connections,
            handshake_timeout,
        }
    }
}

pub fn default_max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let soft = if ok { lim.rlim_cur } else { 1024 };
    soft.saturating_sub(FD_HEADROOM).clamp(16, 1 << 20) as usize
}

/// Holds one fd in reserve so that, at EMFILE, the loop can still accept the waiting
/// connection to refuse it (and take it out of the backlog) instead of leaving it hanging.
fn reserve_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\nserver at capacity\n";

/// Writes the 503 without waiting (a fresh socket's send buffer takes it whole) and closes.
/// What the client already sent is read first, so the close is a FIN, not a RST that could
/// overtake the answer.
fn refuse(s: TcpStream, m: &Metrics, reason: &'static str) {
    m.connections_refused_total
        .with_label_values(&[reason])
        .inc();
    let mut buf = [0u8; 2048];
    while matches!(s.try_read(&mut buf), Ok(n) if n > 0) {}
    let _ = s.try_write(REFUSAL);
    if let Ok(s) = s.into_std() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

fn is_fd_limit(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Accepts until `shutdown`, then lets in-flight HTTP exchanges finish (WebSocket sessions
/// are not ours to wait for: the server's session tracker does).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    adm: Admission,
    m: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(adm.max_connections));
    m.connections_max.set(adm.max_connections as i64);
    let conns = TaskTracker::new();
    let mut reserve = reserve_fd();
    // Back-off while accept fails for reasons a refusal cannot fix; reset by a success.
    let mut backoff = Duration::ZERO;
    let mut last_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    refuse(stream, &m, "max_connections");
                    continue;
                };
                m.connections_accepted_total.inc();
                let _ = stream.set_nodelay(true);
                let local = stream
                    .local_addr()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                let conn = Conn {
                    addrs: ConnAddrs { peer, local },
                    slot: ConnSlot(Arc::new(permit)),
                    router: router.clone(),
                    timeout: adm.handshake_timeout,
                    m: m.clone(),
                    stop: shutdown.clone(),
                };
                conns.spawn(conn.serve(stream));
            }
            Err(e) if is_fd_limit(&e) => {
                // Free the reserve, take the waiting connection out of the backlog with a 503,
                // and re-arm the reserve.
                if reserve.take().is_some()
                    && let Ok(Ok((s, _))) =
                        tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
                {
                    refuse(s, &m, "fd_limit");
                    reserve = reserve_fd();
                    continue;
                }
                reserve = reserve.or_else(reserve_fd);
                m.accept_errors_total.with_label_values(&["fd_limit"]).inc();
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_millis(200));
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_log = Some(Instant::now());
                    tracing::warn!(error = %e, "accept: out of file descriptors; backing off");
                }
                tokio::time::sleep(backoff).await;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                m.accept_errors_total.with_label_values(&["other"]).inc();
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_millis(200));
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_log = Some(Instant::now());
                    tracing::warn!(error = %e, "accept failed; backing off");
                }
                tokio::time::sleep(backoff).await;
            }
        }
    }
    conns.close();
    conns.wait().await;
}

struct Conn {
    addrs: ConnAddrs,
    slot: ConnSlot,
    router: Router,
    timeout: Duration,
    m: Arc<Metrics>,
    stop: CancellationToken,
}

impl Conn {
    async fn serve(self, stream: TcpStream) {
        let Conn {
            addrs,
            slot,
            router,
            timeout,
            m,
            stop,
        } = self;
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(addrs));
            req.extensions_mut().insert(slot.clone());
            let router = router.clone();
            async move {
                Ok::<_, Infallible>(
                    router
                        .oneshot(req.map(axum::body::Body::new))
                        .await
                        .unwrap_or_else(|e| match e {}),
                )
            }
        });
        // The head of every request (the upgrade's included) must arrive within the
        // handshake timeout of the connection's start or of the previous response.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        tokio::pin!(conn);
        let r = tokio::select! {
            r = conn.as_mut() => r,
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        };
        if let Err(e) = r
            && e.is_timeout()
        {
            m.handshake_timeouts_total.inc();
        }
    }
}
