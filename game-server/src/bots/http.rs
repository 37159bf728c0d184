//! Tiny HTTP/1.1 client for /login and /metrics (one request per connection), so the
//! bots need no HTTP client dependency.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Dev-mode login: returns a session token for `player`.
pub async fn login(addr: SocketAddr, player: &str) -> anyhow::Result<String> {
    let (status, body) = request(
        addr,
        "POST",
        "/login",
        Some(&format!(r#"{{"player":"{player}"}}"#)),
    )
    .await?;
    anyhow::ensure!(
        status == 200,
        "POST /login: HTTP {status} (is the server in --dev mode? else pass --token-secret)"
    );
    let v: serde_json::Value = serde_json::from_str(body.trim())?;
    Ok(v["token"]
        .as_str()
        .context("no token in /login answer")?
        .to_string())
}

/// Parsed Prometheus text: (sample name with labels, value).
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<Vec<(String, f64)>> {
    let (status, body) = request(addr, "GET", "/metrics", None).await?;
    anyhow::ensure!(status == 200, "GET /metrics: HTTP {status}");
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            Some((n.to_string(), v.parse().ok()?))
        })
        .collect())
}

pub fn sample(m: &[(String, f64)], name: &str) -> f64 {
    m.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}
