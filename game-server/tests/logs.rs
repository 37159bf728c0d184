//! Logs as a cluster's log collector needs them: stderr that is a pipe gets no colour escape
//! sequences, and `--log-format json` (or GAME_LOG_FORMAT) gives one JSON object per line.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{SECRET, temp_dir};

/// The server's stderr lines from start until it listens (then it is stopped).
fn startup_lines(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_game-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token-secret",
            SECRET,
            "--data-dir",
        ])
        .arg(temp_dir("logs"))
        .args(args)
        .env_remove("GAME_DEV")
        .env_remove("GAME_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn game-server");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let done = line.contains("listening");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("listening")),
        "the server never said it listens:\n{}",
        lines.join("\n")
    );
    lines
}

#[test]
fn text_logs_into_a_pipe_carry_no_colour_codes() {
    for l in startup_lines(&[], &[]) {
        assert!(!l.contains('\x1b'), "escape sequence in {l:?}");
    }
}

#[test]
fn json_logs_are_one_object_per_line_by_flag_or_environment() {
    for lines in [
        startup_lines(&["--log-format", "json"], &[]),
        startup_lines(&[], &[("GAME_LOG_FORMAT", "json")]),
    ] {
        let mut messages = Vec::new();
        for l in &lines {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            messages.push(v["fields"]["message"].as_str().unwrap_or("").to_owned());
        }
        assert!(messages.iter().any(|m| m == "listening"), "{messages:?}");
    }
}
