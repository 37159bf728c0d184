//! Owners of accepted connections, whose resets arrive in softirq (where `current` is whoever
//! was interrupted). The owner here is another process (python), not this test, which sends the
//! RST from process context, so a right answer cannot come from `current`.
//! - accepted after the agent started: the kernel knows the listener's owner (listen()).
//! - accepted before the agent started: the kernel never saw listen() or accept(); the agent
//!   finds the socket's inode in /proc.
mod common;

use std::{
    io::{BufRead as _, BufReader, Lines},
    net::TcpStream,
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use common::{Agent, eventually, require_root};
use socket2::SockRef;

struct Server {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pid: String,
    port: u16,
}

impl Server {
    /// A python process that listens on 127.0.0.1, accepts one connection and holds it.
    fn start() -> Server {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import os, socket, time\n\
                 s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
                 print(os.getpid(), s.getsockname()[1], flush=True)\n\
                 c, _ = s.accept(); print('accepted', flush=True)\n\
                 time.sleep(120)\n",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let (pid, port) = first.split_once(' ').unwrap();
        let (pid, port) = (pid.to_owned(), port.trim().parse().unwrap());
        Server {
            child,
            lines,
            pid,
            port,
        }
    }

    fn connect(&mut self) -> TcpStream {
        let client = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        assert_eq!(self.lines.next().unwrap().unwrap(), "accepted");
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Aborts `client` (an RST to the server's accepted socket) and checks the received RST is
/// attributed to the server process. Returns the kernel's own owner-unknown count for it.
fn abort_and_check_owner(agent: &Agent, server: &Server, client: TcpStream) -> f64 {
    let before = agent.metrics();
    let by = |m: &common::Metrics, labels: &[(&str, &str)]| {
        m.sum("kernelsight_tcp_events_by_owner_total", labels)
    };
    SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);

    let received = |m: &common::Metrics| by(m, &[("event", "rst_received")]);
    assert!(
        eventually(Duration::from_secs(5), || received(&agent.metrics())
            - received(&before)
            >= 1.0),
        "the agent saw no received RST"
    );
    let after = agent.metrics();
    let delta = |labels: &[(&str, &str)]| by(&after, labels) - by(&before, labels);
    assert_eq!(
        delta(&[("event", "rst_received"), ("pid", &server.pid)]),
        1.0,
        "the RST received on the accepted socket names its owner (python, pid {}): {:?}",
        server.pid,
        after
            .0
            .iter()
            .filter(|(k, _)| k.contains("rst_received"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        delta(&[("event", "rst_received"), ("comm", "python3")]),
        1.0
    );
    assert_eq!(
        delta(&[("event", "rst_received"), ("comm", "unknown")]),
        0.0,
        "nothing unattributed"
    );
    after.get("kernelsight_tcp_owner_unknown_total")
        - before.get("kernelsight_tcp_owner_unknown_total")
}

/// Both cases in one test, one after the other: every agent counts every event on the host, so
/// two of them side by side would see each other's sockets.
#[test]
fn resets_on_accepted_sockets_name_their_owner_whenever_the_agent_started() {
    require_root();

    // Accepted after the agent started.
    {
        let agent = Agent::start(&[]);
        let mut server = Server::start();
        let client = server.connect();
        let kernel_unknown = abort_and_check_owner(&agent, &server, client);
        assert_eq!(
            kernel_unknown, 0.0,
            "the listener's owner (from listen()) names the accepted socket's owner in the kernel"
        );
    }

    // Accepted before the agent started.
    let mut server = Server::start();
    let client = server.connect();
    let agent = Agent::start(&[]);
    let kernel_unknown = abort_and_check_owner(&agent, &server, client);
    assert_eq!(
        kernel_unknown, 2.0,
        "the kernel knew neither socket (our client's RST sent, python's RST received); the agent resolved python's"
    );
}
