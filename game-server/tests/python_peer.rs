//! The protocol works for a client nobody here wrote: Python's `websockets`
//! library (installed by `cargo xtask setup` into `.tools/venv`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KS_PYTHON") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python3");
    assert!(
        p.exists(),
        "Python venv missing at {}: run `cargo xtask setup` (or set KS_PYTHON to a python with `websockets` installed)",
        p.display()
    );
    p
}

#[test]
fn python_websockets_client_speaks_both_encodings() {
    let origin = "http://peer.test";
    let srv = Server::start(&["--allowed-origin", origin]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ws_client.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(srv.addr.to_string())
        .arg(origin)
        .output()
        .expect("run python peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("PEER OK"),
        "python peer failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(
        srv.metric("game_handshake_rejected_total{reason=\"origin\"}"),
        1.0
    );
    assert_eq!(
        srv.metric("game_messages_received_total{encoding=\"binary\"}"),
        2.0
    );
}
