#!/usr/bin/env python3
"""Generates the kernelsight Grafana dashboards (dashboards/*.json).

    python3 generate.py          # rewrite the JSON files
    python3 generate.py --check  # exit 1 if a JSON file differs from what this script makes

Every Prometheus panel links to the traces of its time range in Jaeger (Grafana Explore): the
game server's spans (enriched by the agent with kernel evidence) and the agent's incident spans.
The metric names used here are checked against live scrapes of both binaries by
xtask/tests/deploy.rs, so a renamed metric fails the test suite, not a dashboard at 2 a.m.
"""
import json
import sys
import urllib.parse
from pathlib import Path

PROM = {"type": "prometheus", "uid": "kernelsight-prometheus"}
JAEGER = {"type": "jaeger", "uid": "kernelsight-jaeger"}
OUT = Path(__file__).resolve().parent / "dashboards"

# Service names in the spans: the game server's own (telemetry::init("game-server")) and the
# agent's, whose spans are the incidents.
SERVER_SERVICE = "game-server"
AGENT_SERVICE = "kernelsight-agent"


def explore_traces(title, service, operation=None):
    """A data link to a Jaeger search in Grafana Explore over the panel's time range."""
    query = {"refId": "A", "datasource": JAEGER, "queryType": "search", "service": service, "limit": 50}
    if operation:
        query["operation"] = operation
    panes = {"traces": {"datasource": JAEGER["uid"], "queries": [query], "range": {"from": "@FROM@", "to": "@TO@"}}}
    encoded = urllib.parse.quote(json.dumps(panes, separators=(",", ":")), safe="")
    # Grafana interpolates ${__from}/${__to} (epoch ms) when the link is followed.
    encoded = encoded.replace("%40FROM%40", "${__from}").replace("%40TO%40", "${__to}")
    return {"title": title, "url": "/explore?schemaVersion=1&orgId=1&panes=" + encoded, "targetBlank": False}


TRACE_LINKS = [
    explore_traces("Game server traces in this range (Jaeger)", SERVER_SERVICE),
    explore_traces("Incident traces in this range (Jaeger)", AGENT_SERVICE),
]
INCIDENT_CLASSES = ["task_surge", "connection_fault", "cpu_contention"]


def incident_links(cls):
    """Links to one class of incident (span name kernelsight.incident.<class>), then the rest."""
    return [explore_traces(f"{cls} incidents in this range (Jaeger)", AGENT_SERVICE, f"kernelsight.incident.{cls}")] \
        + TRACE_LINKS


class Board:
    def __init__(self, uid, title, description, variables):
        self.uid, self.title, self.description, self.variables = uid, title, description, variables
        self.panels, self.y, self.next_id = [], 0, 1

    def _id(self):
        self.next_id += 1
        return self.next_id - 1

    def row(self, title):
        self.panels.append({"type": "row", "id": self._id(), "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def prom(self, title, description, targets, unit="short", w=12, h=8, x=0, kind="timeseries",
             mappings=None, thresholds=None, stack=False, links=None):
        """A Prometheus panel; targets are (expr, legend) pairs. Width 12 panels go in pairs."""
        defaults = {"unit": unit, "links": links or TRACE_LINKS, "mappings": mappings or []}
        if thresholds:
            defaults["thresholds"] = {"mode": "absolute", "steps": thresholds}
        if kind == "timeseries":
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                                  "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
        panel = {
            "type": kind, "id": self._id(), "title": title, "description": description, "datasource": PROM,
            "gridPos": {"h": h, "w": w, "x": x, "y": self.y},
            "targets": [{"refId": chr(ord("A") + i), "datasource": PROM, "expr": expr, "legendFormat": legend,
                         "range": True, "instant": False} for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}} if kind == "timeseries" else
                       {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": "auto"},
        }
        self.panels.append(panel)
        if x + w >= 24:
            self.y += h

    def traces(self, title, description, service, w=24, h=10):
        """A Jaeger search table; each row opens the trace."""
        self.panels.append({
            "type": "table", "id": self._id(), "title": title, "description": description, "datasource": JAEGER,
            "gridPos": {"h": h, "w": w, "x": 0, "y": self.y},
            "targets": [{"refId": "A", "datasource": JAEGER, "queryType": "search", "service": service, "limit": 50}],
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {"showHeader": True},
        })
        self.y += h

    def json(self):
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["kernelsight"], "timezone": "browser", "editable": False, "graphTooltip": 1,
            "schemaVersion": 39, "version": 1, "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "links": [{"type": "dashboards", "tags": ["kernelsight"], "asDropdown": False, "title": "kernelsight",
                       "includeVars": True, "keepTime": True}],
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "panels": self.panels,
        }


def query_var(name, label, query, multi=True):
    return {"name": name, "label": label, "type": "query", "datasource": PROM,
            "query": {"qryType": 1, "query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi,
            "allValue": ".*" if multi else None, "current": {}, "options": [], "hide": 0}


NODE = query_var("node", "Node", "label_values(kernelsight_tcp_resets_total, node)")
NAMESPACE = query_var("namespace", "Namespace", "label_values(game_sessions_active, namespace)", multi=False)
POD = query_var("pod", "Pod", 'label_values(game_sessions_active{namespace="$namespace"}, pod)')
SEL_NODE = 'node=~"$node"'
SEL_POD = 'namespace="$namespace", pod=~"$pod"'
STATE_MAPPINGS = [{"type": "value", "options": {
    "0": {"text": "closed", "color": "green", "index": 0},
    "1": {"text": "open", "color": "red", "index": 1},
    "2": {"text": "half-open", "color": "orange", "index": 2}}}]


def kernel():
    b = Board("kernelsight-kernel", "kernelsight / Kernel evidence",
              "What the kernel saw on each node: TCP retransmits and resets (counted in the kernel, lossless), "
              "the processes that owned the sockets, and run-queue latency of the watched processes.", [NODE])
    b.row("TCP")
    b.prom("TCP resets by direction", "RST segments sent and received (kernel per-CPU counters).",
           [(f"sum by (node, direction) (rate(kernelsight_tcp_resets_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} {{direction}}")], unit="pps")
    b.prom("TCP retransmits", "Segments retransmitted, and retransmit attempts that failed.",
           [(f"sum by (node) (rate(kernelsight_tcp_retransmits_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} retransmitted"),
            (f"sum by (node) (rate(kernelsight_tcp_retransmit_failures_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} failed")], unit="pps", x=12)
    b.prom("TCP events by owning process",
           "Retransmits and RSTs attributed to the socket's owner (learnt in process context, not the task a "
           "softirq interrupted). Follow the link to the connection spans of the same range.",
           [(f"topk(10, sum by (node, event, comm, pid) "
             f"(rate(kernelsight_tcp_events_by_owner_total{{{SEL_NODE}}}[$__rate_interval])))",
             "{{node}} {{comm}}[{{pid}}] {{event}}")], unit="pps", w=24)
    b.row("Run-queue latency (wakeup or preemption to on-CPU)")
    b.prom("Run-queue latency p99 by process", "From the kernel's per-process log2 histograms.",
           [(f"histogram_quantile(0.99, sum by (le, node, comm, pid) "
             f"(rate(kernelsight_runq_latency_seconds_bucket{{{SEL_NODE}}}[$__rate_interval])))",
             "{{node}} {{comm}}[{{pid}}] p99"),
            (f"histogram_quantile(0.5, sum by (le, node, comm, pid) "
             f"(rate(kernelsight_runq_latency_seconds_bucket{{{SEL_NODE}}}[$__rate_interval])))",
             "{{node}} {{comm}}[{{pid}}] p50")], unit="s")
    b.prom("Slow run-queue delays", "Delays at or above the agent's event threshold; each becomes span evidence.",
           [(f"sum by (node, comm, pid) (rate(kernelsight_runq_slow_events_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} {{comm}}[{{pid}}]")], unit="ops", x=12)
    b.row("Correlation: spans in, evidence joined, spans out")
    b.prom("Spans received", "Spans the node's workloads sent to the agent over OTLP, and spans it could not hold "
           "for joining.",
           [(f"sum by (node, transport) (rate(kernelsight_spans_received_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} {{transport}}"),
            (f"sum by (node, reason) (rate(kernelsight_spans_unenriched_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} not enriched: {{reason}}")], unit="ops")
    b.prom("Spans forwarded to the trace backend", "Enriched, passed-through and incident spans sent on over OTLP.",
           [(f"sum by (node) (rate(kernelsight_otlp_forwarded_spans_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} forwarded"),
            (f"sum by (node) (rate(kernelsight_otlp_forward_errors_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} export errors"),
            (f"sum by (node) (kernelsight_otlp_forward_queue_spans{{{SEL_NODE}}})", "{{node}} queued")], unit="ops",
           x=12)
    b.row("Agent health (is the evidence complete?)")
    b.prom("Events lost in the kernel", "Ring buffer full: per-event detail is missing (totals above stay exact).",
           [(f"sum by (node, ring) (rate(kernelsight_ebpf_events_lost_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} {{ring}}"),
            (f"sum by (node) (rate(kernelsight_pipeline_dropped_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} pipeline dropped")], unit="ops")
    b.prom("Records decoded / unattributed", "Ring records decoded by the agent, and TCP events with no known owner.",
           [(f"sum by (node) (rate(kernelsight_ring_records_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} decoded"),
            (f"sum by (node) (rate(kernelsight_ring_records_malformed_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} malformed"),
            (f"sum by (node) (rate(kernelsight_tcp_owner_unknown_total{{{SEL_NODE}}}[$__rate_interval]))",
             "{{node}} owner unknown")], unit="ops", x=12)
    return b


def pool():
    b = Board("kernelsight-pool", "kernelsight / Worker pool",
              "The game server's worker pool: saturation, queue, circuit breaker, and task outcomes and latencies "
              "by kind.", [NAMESPACE, POD])
    b.row("Saturation")
    b.prom("Watermark", "(busy workers + queued tasks) / (max workers + queue capacity); the HPA scales on it.",
           [(f"max by (pod, pool) (pool_watermark_ratio{{{SEL_POD}}})", "{{pod}} {{pool}}")], unit="percentunit",
           thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.6},
                       {"color": "red", "value": 0.9}])
    b.prom("Circuit breaker", "0 closed, 1 open (tasks refused), 2 half-open.",
           [(f"max by (pod, pool) (pool_breaker_state{{{SEL_POD}}})", "{{pod}} {{pool}}")], kind="stat",
           mappings=STATE_MAPPINGS, x=12,
           thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1},
                       {"color": "orange", "value": 2}])
    b.prom("Queue depth and capacity", "Tasks waiting for a worker.",
           [(f"sum by (pod, pool) (pool_queue_depth{{{SEL_POD}}})", "{{pod}} {{pool}} queued"),
            (f"max by (pod, pool) (pool_queue_capacity{{{SEL_POD}}})", "{{pod}} {{pool}} capacity")])
    b.prom("Workers", "Worker threads by state (elastic between min and max).",
           [(f"sum by (pod, state) (pool_workers{{{SEL_POD}}})", "{{pod}} {{state}}")], x=12, stack=True)
    b.row("Tasks")
    b.prom("Tasks by outcome", "Finished submissions; rejected = refused by the queue bound or the breaker.",
           [(f"sum by (outcome) (rate(pool_tasks_total{{{SEL_POD}}}[$__rate_interval]))", "{{outcome}}")],
           unit="ops", stack=True)
    b.prom("Submissions by kind", "Task arrivals; a surge far above baseline is a task_surge incident.",
           [(f"sum by (kind) (rate(pool_submitted_total{{{SEL_POD}}}[$__rate_interval]))", "{{kind}}")],
           unit="ops", x=12, stack=True)
    b.prom("Queue wait p99 by kind", "Submission to start on a worker.",
           [(f"histogram_quantile(0.99, sum by (le, kind) (rate(pool_task_wait_seconds_bucket{{{SEL_POD}}}"
             f"[$__rate_interval])))", "{{kind}}")], unit="s")
    b.prom("Run time p99 by kind", "Time on the worker; run-queue delay of the worker thread is inside it.",
           [(f"histogram_quantile(0.99, sum by (le, kind) (rate(pool_task_run_seconds_bucket{{{SEL_POD}}}"
             f"[$__rate_interval])))", "{{kind}}")], unit="s", x=12)
    return b


def server():
    b = Board("kernelsight-server", "kernelsight / Game server",
              "Sessions, rooms and the fixed-step tick loop of the game server.", [NAMESPACE, POD])
    b.row("Sessions")
    b.prom("Open sessions", "Open WebSocket sessions per pod; the HPA scales on it.",
           [(f"sum by (pod) (game_sessions_active{{{SEL_POD}}})", "{{pod}}")], stack=True)
    b.prom("Sessions accepted and refused", "Accepted upgrades, and refusals by reason (origin, token).",
           [(f"sum (rate(game_sessions_total{{{SEL_POD}}}[$__rate_interval]))", "accepted"),
            (f"sum by (reason) (rate(game_handshake_rejected_total{{{SEL_POD}}}[$__rate_interval]))",
             "refused: {{reason}}")], unit="ops", x=12)
    b.prom("Messages", "Client messages received and server messages sent, by encoding.",
           [(f"sum by (encoding) (rate(game_messages_received_total{{{SEL_POD}}}[$__rate_interval]))",
             "in {{encoding}}"),
            (f"sum by (encoding) (rate(game_messages_sent_total{{{SEL_POD}}}[$__rate_interval]))",
             "out {{encoding}}")], unit="ops")
    b.prom("Slow clients", "Outbound frames dropped (full client queue) and inputs dropped (full room queue).",
           [(f"sum (rate(game_outbound_dropped_total{{{SEL_POD}}}[$__rate_interval]))", "outbound dropped"),
            (f"sum (rate(game_inputs_dropped_total{{{SEL_POD}}}[$__rate_interval]))", "inputs dropped")],
           unit="ops", x=12)
    b.row("Rooms and ticks")
    b.prom("Tick duration p99", "Simulate + broadcast one room tick; the budget is 1/tick_hz.",
           [(f"histogram_quantile(0.99, sum by (le, pod) (rate(game_tick_duration_seconds_bucket{{{SEL_POD}}}"
             f"[$__rate_interval])))", "{{pod}} p99"),
            (f"histogram_quantile(0.5, sum by (le, pod) (rate(game_tick_duration_seconds_bucket{{{SEL_POD}}}"
             f"[$__rate_interval])))", "{{pod}} p50")], unit="s")
    b.prom("Tick overruns and dropped ticks", "Overruns: a tick over budget. Dropped: catch-up gave up.",
           [(f"sum by (pod) (rate(game_tick_overruns_total{{{SEL_POD}}}[$__rate_interval]))", "{{pod}} overruns"),
            (f"sum by (pod) (rate(game_ticks_dropped_total{{{SEL_POD}}}[$__rate_interval]))", "{{pod}} dropped")],
           unit="ops", x=12)
    b.prom("Rooms and members", "Rooms with a running loop; players in rooms (including reconnect grace).",
           [(f"sum by (pod) (game_rooms_active{{{SEL_POD}}})", "{{pod}} rooms"),
            (f"sum by (pod) (game_room_members{{{SEL_POD}}})", "{{pod}} members")])
    b.prom("Persistence", "Write-behind: records staged and not yet committed (the crash-loss window).",
           [(f"sum by (pod) (game_persistence_pending_records{{{SEL_POD}}})", "{{pod}} pending"),
            (f"sum by (pod) (rate(game_persistence_records_written_total{{{SEL_POD}}}[$__rate_interval]))",
             "{{pod}} written/s")], x=12)
    return b


def incidents():
    b = Board("kernelsight-incidents", "kernelsight / Incidents",
              "Incidents are spans of their own traces, emitted by the agent, with span links to the spans they "
              "hurt. The table lists them; the panels below show the signal behind each kind.", [NODE, NAMESPACE, POD])
    b.prom("Open incidents", "Incidents open now, by class.",
           [(f"sum by (class) (kernelsight_incidents_open{{{SEL_NODE}}})", "{{class}}")], kind="stat", w=8, h=6,
           thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}])
    b.prom("Incidents detected", "New incidents by class. Follow a link to the incident spans of the range.",
           [(f"sum by (class) (increase(kernelsight_incidents_total{{{SEL_NODE}}}[$__rate_interval]))", "{{class}}")],
           w=16, h=6, x=8, stack=True,
           links=[l for c in INCIDENT_CLASSES for l in incident_links(c)[:1]] + TRACE_LINKS)
    b.traces("Incident traces (kernelsight-agent)",
             "Click a trace: the incident span (kernelsight.incident.<class>) names its subject and evidence, and "
             "links to the spans it affected.",
             AGENT_SERVICE)
    b.row("task_surge: arrivals far above baseline, with queue growth or run-queue delay")
    b.prom("Task arrivals by kind", "Submissions to the worker pool.",
           [(f"sum by (kind) (rate(pool_submitted_total{{{SEL_POD}}}[$__rate_interval]))", "{{kind}}")],
           unit="ops", w=8, x=0, links=incident_links("task_surge"))
    b.prom("Queue depth", "Tasks waiting for a worker.",
           [(f"sum by (pod) (pool_queue_depth{{{SEL_POD}}})", "{{pod}}")], w=8, x=8, links=incident_links("task_surge"))
    b.prom("Refused and timed out", "Tasks the pool gave up on.",
           [(f'sum by (outcome) (rate(pool_tasks_total{{{SEL_POD}, outcome=~"rejected|queue_timeout|timeout"}}'
             f'[$__rate_interval]))', "{{outcome}}")], unit="ops", w=8, x=16, links=incident_links("task_surge"))
    b.row("connection_fault: a burst of RSTs or retransmits")
    b.prom("RSTs by owning process", "Which process's sockets were reset, or sent resets.",
           [(f'topk(10, sum by (node, comm, event) (rate(kernelsight_tcp_events_by_owner_total{{{SEL_NODE}, '
             f'event=~"rst_sent|rst_received"}}[$__rate_interval])))', "{{node}} {{comm}} {{event}}")],
           unit="pps", links=incident_links("connection_fault"))
    b.prom("Retransmits by owning process", "Loss toward a peer shows as retransmits before it shows as resets.",
           [(f'topk(10, sum by (node, comm) (rate(kernelsight_tcp_events_by_owner_total{{{SEL_NODE}, '
             f'event="retransmit"}}[$__rate_interval])))', "{{node}} {{comm}}")], unit="pps", x=12,
           links=incident_links("connection_fault"))
    b.row("cpu_contention: run-queue delay up while arrivals are normal")
    b.prom("Run-queue latency p99 of the game server", "Threads waiting for a CPU, measured in the kernel.",
           [(f'histogram_quantile(0.99, sum by (le, node) (rate(kernelsight_runq_latency_seconds_bucket{{{SEL_NODE}, '
             f'comm="game-server"}}[$__rate_interval])))', "{{node}}")], unit="s",
           links=incident_links("cpu_contention"))
    b.prom("Tick overruns", "A starved room loop overruns its tick budget.",
           [(f"sum by (pod) (rate(game_tick_overruns_total{{{SEL_POD}}}[$__rate_interval]))", "{{pod}}")],
           unit="ops", x=12, links=incident_links("cpu_contention"))
    return b


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for board in (kernel(), pool(), server(), incidents()):
        path = OUT / f"{board.uid}.json"
        text = json.dumps(board.json(), indent=2, ensure_ascii=False) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"dashboards out of date: {', '.join(stale)}; run python3 {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
