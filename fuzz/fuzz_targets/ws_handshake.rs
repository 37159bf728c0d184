//! The game server's WebSocket upgrade checks (origin allowlist, session token from the query or
//! `Authorization: Bearer`, encoding from `Sec-WebSocket-Protocol` or `?encoding=`), fed through
//! the same query extractor the handler uses. Tokens are built from real signed ones with
//! optional damage so the fuzzer gets past the HMAC.
#![no_main]
use arbitrary::Arbitrary;
use axum::{
    extract::Query,
    http::{HeaderMap, HeaderValue, Uri, header},
};
use game_server::{
    gateway::ws::{WsQuery, admit},
    token,
};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret";

#[derive(Arbitrary, Debug)]
enum Tok {
    None,
    Raw(String),
    /// A token signed with the server's secret for `player`, then damaged.
    Signed {
        player: String,
        ttl: u8,
        expired: bool,
        flip: Option<(u16, u8)>,
        cut: Option<u16>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    origin: Option<Vec<u8>>,
    query_token: Tok,
    bearer: Tok,
    authorization_raw: Option<Vec<u8>>,
    encoding: Option<String>,
    extra_query: String,
    protocols: Vec<Vec<u8>>,
}

fn token_text(t: &Tok) -> Option<String> {
    match t {
        Tok::None => None,
        Tok::Raw(s) => Some(s.clone()),
        Tok::Signed {
            player,
            ttl,
            expired,
            flip,
            cut,
        } => {
            let player = if token::valid_player_id(player) {
                player
            } else {
                "p"
            };
            let mut t = token::issue(SECRET, player, *ttl as u64 + 60).into_bytes();
            if *expired {
                // Re-sign with an expiry in the past: same shape, valid MAC, expired.
                let exp = token::now_secs() - 1;
                let payload = format!("v1.{player}.{exp}");
                let good = token::issue(SECRET, player, 0);
                let sig = good.rsplit_once('.').unwrap().1;
                t = format!("{payload}.{sig}").into_bytes();
            }
            if let Some((at, x)) = flip {
                let i = *at as usize % t.len();
                t[i] ^= x;
            }
            if let Some(c) = cut {
                t.truncate(*c as usize % (t.len() + 1));
            }
            Some(String::from_utf8_lossy(&t).into_owned())
        }
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fuzz_target!(|inp: Input| {
    let allowed = vec![
        "http://127.0.0.1:7000".to_string(),
        "https://game.example".to_string(),
    ];
    let mut headers = HeaderMap::new();
    if let Some(o) = &inp.origin {
        let Ok(v) = HeaderValue::from_bytes(o) else {
            return;
        };
        headers.insert(header::ORIGIN, v);
    }
    if let Some(b) = token_text(&inp.bearer) {
        let Ok(v) = HeaderValue::from_str(&format!("Bearer {b}")) else {
            return;
        };
        headers.insert(header::AUTHORIZATION, v);
    } else if let Some(raw) = &inp.authorization_raw {
        let Ok(v) = HeaderValue::from_bytes(raw) else {
            return;
        };
        headers.insert(header::AUTHORIZATION, v);
    }
    let mut protocols = Vec::new();
    for p in &inp.protocols {
        let Ok(v) = HeaderValue::from_bytes(p) else {
            return;
        };
        protocols.push(v);
    }
    // The query string as a browser would send it; whatever the extractor rejects is a 400
    // before our checks run.
    let mut q = vec![inp.extra_query.clone()];
    if let Some(t) = token_text(&inp.query_token) {
        q.push(format!("token={}", enc(&t)));
    }
    if let Some(e) = &inp.encoding {
        q.push(format!("encoding={}", enc(e)));
    }
    let Ok(uri) = format!("/ws?{}", q.join("&")).parse::<Uri>() else {
        return;
    };
    let Ok(Query(query)) = Query::<WsQuery>::try_from_uri(&uri) else {
        return;
    };
    match admit(&allowed, SECRET, &headers, &query, &protocols) {
        Ok(a) => {
            // Only an allowed origin (or none), and only a player a token can name.
            if let Some(o) = headers.get(header::ORIGIN) {
                assert!(allowed.iter().any(|a| a.as_bytes() == o.as_bytes()));
            }
            assert!(token::valid_player_id(&a.player));
            if let Some(p) = &a.protocol {
                assert!(protocols.contains(p));
            }
        }
        Err((status, reason)) => {
            assert!(status.is_client_error(), "{status} {reason}");
        }
    }
});
