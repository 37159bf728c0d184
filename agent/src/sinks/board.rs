//! The embedded default: the last incidents and enriched spans, in memory, served as JSON at
//! `/incidents` on the agent's HTTP listener, so a user without a trace backend still sees
//! what was detected, the evidence, and the baseline it beat.
use std::{
    collections::{HashMap, VecDeque},
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
    spans: HashMap<(String, String), SpanSummary>,
    order: VecDeque<(String, String)>,
    spans_keep: usize,
}

pub type SharedBoard = Arc<Mutex<Board>>;

impl Board {
    pub fn new(keep: usize, spans_keep: usize) -> Self {
        Self {
            incidents: VecDeque::new(),
            keep: keep.max(1),
            spans: HashMap::new(),
            order: VecDeque::new(),
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
        let key = (s.trace_id.clone(), s.span_id.clone());
        if self.spans.insert(key.clone(), s).is_none() {
            self.order.push_back(key);
        }
        while self.spans.len() > self.spans_keep {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.spans.remove(&old);
        }
    }

    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.iter()
    }

    pub fn span(&self, trace_id: &str, span_id: &str) -> Option<&SpanSummary> {
        self.spans.get(&(trace_id.to_owned(), span_id.to_owned()))
    }

    /// The enriched spans kept, newest first.
    pub fn recent_spans(&self) -> impl Iterator<Item = &SpanSummary> {
        self.order.iter().rev().filter_map(|k| self.spans.get(k))
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
                let affected: Vec<&SpanSummary> = i
                    .links
                    .iter()
                    .filter_map(|l| self.span(&l.trace_id, &l.span_id))
                    .collect();
                v["affected_spans"] = serde_json::to_value(affected).unwrap_or_default();
                v
            })
            .collect();
        let recent: Vec<&SpanSummary> = self.recent_spans().take(q.spans.unwrap_or(20)).collect();
        serde_json::json!({
            "incidents": incidents,
            "incidents_kept": self.incidents.len(),
            "recent_enriched_spans": recent,
            "enriched_spans_kept": self.spans.len(),
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
}
