//! Admission under overload, over real sockets: connections beyond the cap and beyond the fd
//! limit get a clean refusal (HTTP 503, then the close) instead of hanging in the backlog, and
//! handshakes that never finish (slowloris) are closed after the handshake timeout. The bench
//! with figures is `cargo xtask bench overload`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{GUARD, Server, http, metric_value};

/// What a client got back for a complete request: the status, or how the connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Status(u16),
    Closed,
    Reset,
    /// Nothing within the wait: the connection hangs (what a clean refusal must never be).
    Silent,
}

fn answer(s: &mut TcpStream, wait: Duration) -> Answer {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => Answer::Closed,
        Ok(n) => String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .map_or(Answer::Closed, Answer::Status),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Answer::Silent,
        Err(_) => Answer::Reset,
    }
}

fn request(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    // A refused connection may already be answered and closed before the request is written:
    // the answer is what counts.
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s
}

/// A slowloris client: the start of an upgrade request, never finished.
fn slowloris(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
    )
    .unwrap();
    s
}

#[test]
fn beyond_the_cap_a_503_and_unfinished_handshakes_time_out() {
    let srv = Server::start(&["--max-connections", "4", "--handshake-timeout-ms", "1000"]);
    let mut lorises: Vec<TcpStream> = (0..4).map(|_| slowloris(srv.addr)).collect();
    // Let the server accept all four before the fifth arrives.
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = request(srv.addr, "/healthz");
    assert_eq!(
        answer(&mut fifth, Duration::from_secs(5)),
        Answer::Status(503),
        "a connection over the cap is answered 503"
    );
    // Every unfinished handshake is closed by the server (by its timeout, not ours).
    let t0 = Instant::now();
    for s in &mut lorises {
        let a = answer(s, GUARD);
        assert!(
            matches!(a, Answer::Closed | Answer::Reset | Answer::Status(408)),
            "slowloris got {a:?}"
        );
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "closed after {took:?}");
    // Their places are free again.
    let (status, _) = http(srv.addr, "GET", "/healthz", None, &[]);
    assert_eq!(status, 200);
    let m = srv.metrics();
    assert_eq!(metric_value(&m, "game_handshake_timeouts_total"), 4.0);
    assert_eq!(
        metric_value(
            &m,
            "game_connections_refused_total{reason=\"max_connections\"}"
        ),
        1.0
    );
    assert_eq!(metric_value(&m, "game_connections_max"), 4.0);
}

#[test]
fn at_the_fd_limit_new_connections_are_refused_not_left_waiting() {
    // Default flags only, so the same test runs against a server without the admission code.
    let srv = Server::start(&[]);
    // Lower the running server's fd limit (its connection cap was set from the higher one at
    // start, so it is the fd limit that bites: as when other fds ate the headroom).
    let lim = libc::rlimit {
        rlim_cur: 48,
        rlim_max: 48,
    };
    // SAFETY: prlimit on our own child; the struct outlives the call.
    let rc = unsafe {
        libc::prlimit(
            srv.child.id() as i32,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    // Keep-alive requests hold their connections open; well past the limit.
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..60 {
        let mut s = request(srv.addr, "/healthz");
        let a = answer(&mut s, Duration::from_secs(5));
        answers.push(a);
        held.push(s);
    }
    let ok = answers
        .iter()
        .filter(|a| **a == Answer::Status(200))
        .count();
    let refused = answers
        .iter()
        .filter(|a| **a == Answer::Status(503))
        .count();
    eprintln!("at the fd limit: {ok} served, {refused} refused with 503: {answers:?}");
    assert!(ok > 0 && refused > 0, "{answers:?}");
    assert!(
        !answers.contains(&Answer::Silent),
        "a connection was left waiting in the backlog: {answers:?}"
    );
    // Freed fds are used again (the scrape itself needs one), and the refusals were counted.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let (status, m) = http(srv.addr, "GET", "/metrics", None, &[]);
        if status == 200 {
            break metric_value(&m, "game_connections_refused_total{reason=\"fd_limit\"}");
        }
        assert!(Instant::now() < deadline, "no fd came back: {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        counted >= refused as f64,
        "{counted} counted, {refused} seen"
    );
}
