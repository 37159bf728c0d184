//! The game server's pool metrics (`pool_submitted_total`, `pool_queue_depth`), read from its
//! Prometheus endpoint once a second for the page's task lane.
//!
//! Why a scrape, when the agent receives the pool's `pool.task` spans: a span reaches the agent
//! only after its task has run and the SDK's batch has gone out (seconds later; during a surge,
//! after the whole queue wait), and no span carries the queue's depth. The page's lane is live.
//! The request goes through hyper's client; the exposition parser below is ours, since the
//! crates.io parsers either do not unescape label values (prometheus-parse) or are LGPL.
use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, bail};
use axum::{
    body::Bytes,
    http::{Request, Uri, header},
};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::shared::sample::PoolPoint;

/// Pools tracked per sample.
pub const MAX_POOLS: usize = 16;
/// Largest exposition read.
const MAX_BYTES: usize = 8 << 20;
/// Per scrape, so that one slow answer cannot delay the next second's sample.
const TIMEOUT: Duration = Duration::from_millis(800);

/// A plain-HTTP URL (the scrape stays on the node; no TLS client in the agent for this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(Uri);

impl HttpUrl {
    /// `http://host[:port][/path]`; the path defaults to `/metrics`.
    pub fn parse(u: &str) -> anyhow::Result<Self> {
        let rest = u
            .strip_prefix("http://")
            .context("only http:// URLs are supported")?;
        if rest.is_empty() || rest.starts_with('/') {
            bail!("no host");
        }
        let full = if rest.contains('/') {
            u.to_owned()
        } else {
            format!("{u}/metrics")
        };
        Ok(Self(full.parse().context("not a URL")?))
    }
}

/// Reads the game server's exposition; keeps its connection between scrapes.
pub struct Scraper {
    url: HttpUrl,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Scraper {
    pub fn new(url: HttpUrl) -> Self {
        Self {
            url,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// One GET of the exposition text.
    pub async fn scrape(&self) -> anyhow::Result<String> {
        let uri = &self.url.0;
        let fut = async {
            let req = Request::get(uri.clone())
                .header(header::ACCEPT, "text/plain")
                .body(Empty::new())?;
            let resp = self
                .client
                .request(req)
                .await
                .with_context(|| format!("GET {uri}"))?;
            if !resp.status().is_success() {
                bail!("HTTP {} from {uri}", resp.status().as_u16());
            }
            let body = Limited::new(resp.into_body(), MAX_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading {uri}: {e}"))?
                .to_bytes();
            Ok(String::from_utf8_lossy(&body).into_owned())
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .context("timed out after 800 ms")?
    }
}

/// Pool series scraped from the game server's Prometheus text: submissions (counter, summed
/// over kinds) and queue depth (gauge), per `pool` label.
pub fn parse_pool_metrics(text: &str) -> HashMap<String, (f64, f64)> {
    let mut out: HashMap<String, (f64, f64)> = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let which = if name.ends_with("pool_submitted_total") {
            0
        } else if name.ends_with("pool_queue_depth") {
            1
        } else {
            continue;
        };
        let pool = label(labels, "pool").unwrap_or_else(|| "default".into());
        if !out.contains_key(&pool) && out.len() >= MAX_POOLS {
            continue;
        }
        let e = out.entry(pool).or_default();
        if which == 0 {
            e.0 += v;
        } else {
            e.1 += v;
        }
    }
    out
}

fn label(labels: &str, key: &str) -> Option<String> {
    // `a="x",b="y\"z"}`: values are quoted with backslash escapes.
    let mut rest = labels;
    loop {
        let (k, after) = rest.split_once("=\"")?;
        let k = k.trim_start_matches([',', ' ']);
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            e => e,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        if k == key {
            return Some(value);
        }
        rest = &after[end..];
    }
}

/// Turns successive cumulative pool counters into per-second points.
#[derive(Default)]
pub struct PoolDelta {
    prev: HashMap<String, f64>,
}

impl PoolDelta {
    pub fn step(&mut self, now: HashMap<String, (f64, f64)>) -> Vec<PoolPoint> {
        let mut pts: Vec<PoolPoint> = now
            .iter()
            .map(|(pool, &(submitted, depth))| {
                let arrivals = match self.prev.get(pool) {
                    Some(&p) if submitted >= p => submitted - p,
                    // First sight or a restarted server: no rate yet.
                    _ => 0.0,
                };
                PoolPoint {
                    pool: pool.clone(),
                    arrivals,
                    queue_depth: depth,
                }
            })
            .collect();
        pts.sort_by(|a, b| a.pool.cmp(&b.pool));
        self.prev = now.into_iter().map(|(k, (s, _))| (k, s)).collect();
        pts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let uri = |u: &str| HttpUrl::parse(u).unwrap().0.to_string();
        assert_eq!(
            uri("http://127.0.0.1:7000/metrics"),
            "http://127.0.0.1:7000/metrics"
        );
        assert_eq!(uri("http://game"), "http://game/metrics");
        assert_eq!(uri("http://game:9/x?y=1"), "http://game:9/x?y=1");
        for bad in [
            "https://x/metrics",
            "http://",
            "http:///metrics",
            "game:7000",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    /// A real HTTP/1.1 exchange with a server that closes after each answer, an error status,
    /// and a server that is not there.
    #[tokio::test]
    async fn scrapes_over_http_and_says_what_failed() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /metrics HTTP/1.1"));
                let body = "pool_queue_depth{pool=\"game\"} 3\n";
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let s = Scraper::new(HttpUrl::parse(&format!("http://{addr}")).unwrap());
        let text = s.scrape().await.unwrap();
        assert_eq!(parse_pool_metrics(&text)["game"], (0.0, 3.0));
        let err = s.scrape().await.unwrap_err().to_string();
        assert!(err.contains("HTTP 503"), "{err}");
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = gone.local_addr().unwrap();
        let s = Scraper::new(HttpUrl::parse(&format!("http://{gone}")).unwrap());
        assert!(s.scrape().await.is_err());
    }

    #[test]
    fn pool_metrics_from_the_game_servers_exposition() {
        let text = r#"# HELP pool_submitted_total Submission attempts by kind.
# TYPE pool_submitted_total counter
pool_submitted_total{kind="save",pool="game"} 10
pool_submitted_total{kind="path",pool="game"} 5
pool_submitted_total{pool="odd \"name\"",kind="x"} 1
pool_queue_depth{pool="game"} 7
pool_queue_capacity{pool="game"} 1024
other_metric 3
"#;
        let m = parse_pool_metrics(text);
        assert_eq!(m["game"], (15.0, 7.0));
        assert_eq!(m["odd \"name\""], (1.0, 0.0));
        let mut d = PoolDelta::default();
        assert_eq!(
            d.step(m.clone())[0].arrivals,
            0.0,
            "no rate from one reading"
        );
        let mut later = m;
        later.insert("game".into(), (40.0, 2.0));
        let pts = d.step(later);
        let g = pts.iter().find(|p| p.pool == "game").unwrap();
        assert_eq!((g.arrivals, g.queue_depth), (25.0, 2.0));
    }
}
