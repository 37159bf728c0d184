"""Decodes the OTLP stream the agent forwarded, with the OpenTelemetry project's own Python
protobuf bindings (code independent of the agent's Rust types), and checks it.

Input: a dump file of ExportTraceServiceRequest messages exactly as they arrived over gRPC,
each prefixed by its length (4 bytes, big-endian).

Checks:
  --expect SPAN_ID_HEX:KEY=VALUE   the span carries attribute KEY with VALUE (int or string)
  --expect-event SPAN_ID_HEX:NAME  the span carries an event named NAME
  --incident CLASS                 at least one incident span of this class, with links
  --links                          every incident span's links point to spans in the stream

Prints a one-line JSON summary; exits non-zero naming the first failed check.
"""
import argparse
import json
import struct
import sys

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def attr_value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--expect", action="append", default=[])
    ap.add_argument("--expect-event", action="append", default=[])
    ap.add_argument("--incident", action="append", default=[])
    ap.add_argument("--links", action="store_true")
    args = ap.parse_args()

    data = open(args.dump, "rb").read()
    spans = {}
    requests = 0
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
        requests += 1
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans[s.span_id.hex()] = s

    failures = []
    for e in args.expect:
        sid, kv = e.split(":", 1)
        key, want = kv.split("=", 1)
        s = spans.get(sid)
        if s is None:
            failures.append(f"span {sid} not in the stream")
            continue
        got = {a.key: attr_value(a.value) for a in s.attributes}.get(key)
        if str(got) != want:
            failures.append(f"span {sid} ({s.name}): {key} = {got!r}, want {want}")
    for e in args.expect_event:
        sid, name = e.split(":", 1)
        s = spans.get(sid)
        if s is None or not any(ev.name == name for ev in s.events):
            failures.append(f"span {sid}: no event {name}")

    incidents = [s for s in spans.values() if s.name.startswith("kernelsight.incident.")]
    for cls in args.incident:
        mine = [s for s in incidents if s.name == f"kernelsight.incident.{cls}" and len(s.links) > 0]
        if not mine:
            failures.append(f"no {cls} incident span with links (incident spans: {[s.name for s in incidents]})")
    links_checked = 0
    if args.links:
        for inc in incidents:
            if inc.trace_id in [l.trace_id for l in inc.links]:
                failures.append(f"incident {inc.span_id.hex()} links into its own trace")
            for l in inc.links:
                links_checked += 1
                target = spans.get(l.span_id.hex())
                if target is None:
                    failures.append(f"incident {inc.span_id.hex()} links to span {l.span_id.hex()}, absent from the stream")
                elif target.trace_id != l.trace_id:
                    failures.append(f"link to {l.span_id.hex()} names trace {l.trace_id.hex()}, the span is in {target.trace_id.hex()}")

    print(json.dumps({"requests": requests, "spans": len(spans), "incident_spans": len(incidents), "links_checked": links_checked, "failures": failures}))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
