//! The embedded default: the last incidents and enriched spans, in memory, served as JSON at
//! `/incidents` on the agent's HTTP listener, so a user without a trace backend still sees
//! what was detected, the evidence, and the baseline it beat.
use std::{
    collections::{HashMap, VecDeque},
    hash::{DefaultHasher, Hash as _, Hasher as _},
    sync::{Arc, Mutex},
};

use serde::Deserialize;

use crate::shared::{
    incident::{Incident, IncidentOutput, IncidentState},
    span::SpanSummary,
};

pub struct Board {
    incidents: VecDeque<Incident>,
    keep: usize,
    /// The JSON of the enriched spans kept, oldest first, end to end in one byte ring. Kept as
    /// `SpanSummary`s each took ~25 small allocations (ids, attribute map, strings), and even
    /// one allocation each lands wherever the heap has a hole: a burst's last thousand spans,
    /// scattered among its short-lived allocations, kept up to a page each resident after it.
    /// Read back only when the page or `/incidents` asks.
    text: VecDeque<u8>,
    /// Position (in bytes written since the start) of `text[0]`.
    text_base: u64,
    /// One entry per span written to `text`, oldest first; a span sent again leaves its
    /// earlier entry dead.
    kept: VecDeque<Kept>,
    /// Sequence number of `kept[0]`.
    first_seq: u64,
    /// Hash of (trace id, span id) → sequence number of the live entry with them.
    index: HashMap<u64, u64>,
    spans_keep: usize,
}

#[derive(Clone, Copy)]
struct Kept {
    hash: u64,
    at: u64,
    len: usize,
    live: bool,
}

fn id_hash(trace_id: &str, span_id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (trace_id, span_id).hash(&mut h);
    h.finish()
}

pub type SharedBoard = Arc<Mutex<Board>>;

impl Board {
    pub fn new(keep: usize, spans_keep: usize) -> Self {
        Self {
            incidents: VecDeque::new(),
            keep: keep.max(1),
            text: VecDeque::new(),
            text_base: 0,
            kept: VecDeque::new(),
            first_seq: 0,
            index: HashMap::new(),
            spans_keep,
        }
    }

    pub fn shared(keep: usize, spans_keep: usize) -> SharedBoard {
        Arc::new(Mutex::new(Self::new(keep, spans_keep)))
    }

    /// Adds an incident or replaces the stored one with the same id.
    pub fn upsert(&mut self, inc: Incident) {
        if let Some(slot) = self.incidents.iter_mut().find(|i| i.id == inc.id) {
            *slot = inc;
            return;
        }
        self.incidents.push_back(inc);
        while self.incidents.len() > self.keep {
            // Closed ones go first; an open one is only dropped if everything is open.
            match self
                .incidents
                .iter()
                .position(|i| i.state == IncidentState::Closed)
            {
                Some(p) => {
                    self.incidents.remove(p);
                }
                None => {
                    self.incidents.pop_front();
                }
            }
        }
    }

    pub fn record_span(&mut self, s: SpanSummary) {
        if self.spans_keep == 0 {
            return;
        }
        let at = self.text_base + self.text.len() as u64;
        if serde_json::to_writer(&mut self.text, &s).is_err() {
            self.text.truncate((at - self.text_base) as usize);
            return;
        }
        let len = (self.text_base + self.text.len() as u64 - at) as usize;
        let hash = id_hash(&s.trace_id, &s.span_id);
        let seq = self.first_seq + self.kept.len() as u64;
        // The same span again (re-sent by its exporter) replaces the one kept.
        if let Some(old) = self.index.insert(hash, seq)
            && let Some(k) = self.kept.get_mut((old - self.first_seq) as usize)
        {
            k.live = false;
        }
        self.kept.push_back(Kept {
            hash,
            at,
            len,
            live: true,
        });
        while self.index.len() > self.spans_keep || self.kept.front().is_some_and(|k| !k.live) {
            let Some(k) = self.kept.pop_front() else {
                break;
            };
            let seq = self.first_seq;
            self.first_seq += 1;
            self.text.drain(..k.len);
            self.text_base += k.len as u64;
            if k.live && self.index.get(&k.hash) == Some(&seq) {
                self.index.remove(&k.hash);
            }
        }
    }

    fn read(&self, k: &Kept) -> Option<SpanSummary> {
        let from = usize::try_from(k.at.checked_sub(self.text_base)?).ok()?;
        let bytes: Vec<u8> = self.text.range(from..from + k.len).copied().collect();
        serde_json::from_slice(&bytes).ok()
    }

    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.iter()
    }

    pub fn span(&self, trace_id: &str, span_id: &str) -> Option<SpanSummary> {
        let seq = *self.index.get(&id_hash(trace_id, span_id))?;
        let s = self.read(
            self.kept
                .get(usize::try_from(seq.checked_sub(self.first_seq)?).ok()?)?,
        )?;
        (s.trace_id == trace_id && s.span_id == span_id).then_some(s)
    }

    /// The enriched spans kept, newest first.
    pub fn recent_spans(&self) -> impl Iterator<Item = SpanSummary> {
        self.kept
            .iter()
            .rev()
            .filter(|k| k.live)
            .filter_map(|k| self.read(k))
    }

    pub fn listing(&self, q: &ListQuery) -> serde_json::Value {
        let limit = q.limit.unwrap_or(100);
        let incidents: Vec<serde_json::Value> = self
            .incidents
            .iter()
            .rev()
            .filter(|i| q.class.as_deref().is_none_or(|c| i.class.as_str() == c))
            .filter(|i| {
                q.state.as_deref().is_none_or(|s| {
                    matches!(
                        (s, i.state),
                        ("open", IncidentState::Open) | ("closed", IncidentState::Closed)
                    )
                })
            })
            .take(limit)
            .map(|i| {
                let mut v = serde_json::to_value(i).unwrap_or_default();
                let affected: Vec<SpanSummary> = i
                    .links
                    .iter()
                    .filter_map(|l| self.span(&l.trace_id, &l.span_id))
                    .collect();
                v["affected_spans"] = serde_json::to_value(affected).unwrap_or_default();
                v
            })
            .collect();
        let recent: Vec<SpanSummary> = self.recent_spans().take(q.spans.unwrap_or(20)).collect();
        serde_json::json!({
            "incidents": incidents,
            "incidents_kept": self.incidents.len(),
            "recent_enriched_spans": recent,
            "enriched_spans_kept": self.index.len(),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// `task_surge`, `connection_fault` or `cpu_contention`.
    pub class: Option<String>,
    /// `open` or `closed`.
    pub state: Option<String>,
    /// At most this many incidents, newest first (default 100).
    pub limit: Option<usize>,
    /// This many of the most recent enriched spans (default 20).
    pub spans: Option<usize>,
}

impl IncidentOutput for Mutex<Board> {
    fn incident(&self, inc: Incident) {
        self.lock().expect("board lock").upsert(inc);
    }

    fn enriched_span(&self, s: SpanSummary) {
        self.lock().expect("board lock").record_span(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::incident::{Class, Incident, Verdict};

    fn inc(n: u64, state: IncidentState) -> Incident {
        let v = Verdict {
            observed: 9.0,
            mean: 1.0,
            stddev: 1.0,
            threshold: 5.0,
            samples: 10,
            anomalous: true,
        };
        let mut i = Incident::new(
            n,
            Class::ConnectionFault,
            "ep:x".into(),
            0,
            1,
            "s".into(),
            v,
            serde_json::json!({}),
        );
        i.state = state;
        i
    }

    #[test]
    fn keeps_the_last_n_preferring_to_drop_closed_ones() {
        let mut b = Board::new(2, 10);
        b.upsert(inc(1, IncidentState::Open));
        b.upsert(inc(2, IncidentState::Closed));
        b.upsert(inc(3, IncidentState::Closed));
        let ids: Vec<_> = b.incidents().map(|i| i.id.clone()).collect();
        assert_eq!(ids, ["connection_fault-1", "connection_fault-3"]);
        // An update replaces, it does not add.
        b.upsert(inc(1, IncidentState::Closed));
        assert_eq!(b.incidents().count(), 2);
        let l = b.listing(&ListQuery {
            state: Some("closed".into()),
            ..Default::default()
        });
        assert_eq!(l["incidents"].as_array().unwrap().len(), 2);
        assert_eq!(l["incidents"][0]["baseline"]["threshold"], 5.0);
    }

    #[test]
    fn span_ring_is_bounded() {
        let mut b = Board::new(1, 3);
        for i in 0..10 {
            b.record_span(SpanSummary {
                trace_id: "t".into(),
                span_id: format!("{i}"),
                name: "x".into(),
                service: String::new(),
                start_unix_ns: 0,
                end_unix_ns: 0,
                attributes: Default::default(),
                events: vec![],
            });
        }
        assert!(b.span("t", "9").is_some() && b.span("t", "6").is_none());
        assert_eq!(b.listing(&ListQuery::default())["enriched_spans_kept"], 3);
    }

    #[test]
    fn a_span_sent_again_replaces_the_kept_one_and_reads_back_whole() {
        let span = |id: &str, name: &str| SpanSummary {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: id.into(),
            name: name.into(),
            service: "game-server".into(),
            start_unix_ns: 1,
            end_unix_ns: 2,
            attributes:
                serde_json::json!({"kernelsight.tcp.resets_received": 1, "session.id": "s1"})
                    .as_object()
                    .unwrap()
                    .clone(),
            events: vec![("kernelsight.tcp.reset".into(), 2)],
        };
        let mut b = Board::new(1, 2);
        b.record_span(span("a", "ws.session"));
        b.record_span(span("b", "ws.session"));
        b.record_span(span("a", "ws.session (again)"));
        let names: Vec<String> = b.recent_spans().map(|s| s.name).collect();
        assert_eq!(names, ["ws.session (again)", "ws.session"], "newest first");
        let a = b.span("0af7651916cd43dd8448eb211c80319c", "a").unwrap();
        assert_eq!(a.attributes["kernelsight.tcp.resets_received"], 1);
        assert_eq!(a.events, [("kernelsight.tcp.reset".to_owned(), 2)]);
        // Two more push out both of the earlier ones.
        b.record_span(span("c", "ws.session"));
        b.record_span(span("d", "ws.session"));
        assert!(b.span("0af7651916cd43dd8448eb211c80319c", "b").is_none());
        assert!(b.span("0af7651916cd43dd8448eb211c80319c", "d").is_some());
        assert_eq!(b.index.len(), 2);
    }
}
