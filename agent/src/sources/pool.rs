//! The game server's pool metrics (`pool_submitted_total`, `pool_queue_depth`), read from its
//! Prometheus endpoint once a second for the page's task lane.
use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::shared::sample::PoolPoint;

/// Pools tracked per sample.
pub const MAX_POOLS: usize = 16;

/// A plain-HTTP URL (the scrape stays on the node; no TLS client in the agent for this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    host_port: String,
    path: String,
}

impl HttpUrl {
    pub fn parse(u: &str) -> anyhow::Result<Self> {
        let rest = u
            .strip_prefix("http://")
            .context("only http:// URLs are supported")?;
        let (host_port, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if host_port.is_empty() {
            bail!("no host");
        }
        let host_port = if host_port
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host_port.ends_with(']')
        {
            host_port.to_owned()
        } else {
            format!("{host_port}:80")
        };
        Ok(Self {
            host_port,
            path: path.to_owned(),
        })
    }
}

/// One GET of a small Prometheus exposition (HTTP/1.0, so the body ends at EOF).
pub async fn scrape(url: &HttpUrl) -> anyhow::Result<String> {
    const MAX: u64 = 8 << 20;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&url.host_port)
            .await
            .with_context(|| format!("connecting to {}", url.host_port))?;
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
            url.path, url.host_port
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut s).take(MAX).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            bail!("HTTP {status} from {}{}", url.host_port, url.path);
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(Duration::from_millis(800), fut)
        .await
        .context("timed out after 800 ms")?
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
        assert_eq!(
            HttpUrl::parse("http://127.0.0.1:7000/metrics").unwrap(),
            HttpUrl {
                host_port: "127.0.0.1:7000".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(
            HttpUrl::parse("http://game").unwrap(),
            HttpUrl {
                host_port: "game:80".into(),
                path: "/metrics".into()
            }
        );
        assert!(HttpUrl::parse("https://x/metrics").is_err());
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
