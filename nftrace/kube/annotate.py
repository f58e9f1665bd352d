"""Named hops: give a trace's kube-proxy and Docker steps the Service and endpoint they are about.

`annotate(trace_json, catalog)` adds, in place:

* `"service"` (`ns/name:port`, or `docker HOST:PORT/PROTO`) to every rule step of a chain the catalogue
  knows (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-SVC/SEP/EXT/FW/SVL/XLB, the filter REJECT/DROP rules
  that name a Service, Docker's DNAT rules), and `"endpoint"` (`IP:PORT`) where the step is about
  one endpoint (a KUBE-SEP chain, the KUBE-SVC rule that picks it, the DNAT);
* the same two keys to the `nat` DNAT step the rule caused;
* branch-level `"service"`, `"endpoint"` (the endpoint this branch's connection is DNATed to) and
  `"masquerade"` (True when a MASQUERADE or SNAT rewrote the source on the way out).
"""

from __future__ import annotations

from typing import Any

from nftrace.kube.catalog import Catalog


def annotate(trace_json: dict[str, Any], catalog: Catalog) -> None:
    names = catalog.rule_names
    if not names and not catalog.services:
        return
    for b in trace_json.get("branches") or []:
        last: dict[str, Any] | None = None  # the last named rule step (its DNAT follows)
        service: str | None = None
        endpoint: str | None = None
        masq = False
        for s in b.get("steps") or []:
            kind = s.get("kind")
            if kind == "rule":
                n = names.get((s.get("table", ""), s.get("chain", ""), s.get("rule", 0)))
                if n is None:
                    continue
                s["service"] = n.service
                if n.endpoint:
                    s["endpoint"] = n.endpoint
                if s.get("matched", True):
                    last = s
                    service = n.service
            elif kind == "nat":
                typ = s.get("type")
                if typ in ("MASQUERADE", "SNAT"):
                    masq = True
                if typ != "DNAT":
                    continue
                after = str(s.get("after", ""))
                if last is not None and last.get("target") == "DNAT":
                    s["service"] = last.get("service")
                    s["endpoint"] = last.get("endpoint") or after
                else:
                    owners = catalog.endpoint_owner(after)
                    if len(owners) == 1:
                        s["service"] = owners[0].name
                    s["endpoint"] = after
                service = s.get("service") or service
                endpoint = s["endpoint"]
        if service is not None:
            b["service"] = service
        if endpoint is not None:
            b["endpoint"] = endpoint
        if service is not None or endpoint is not None or masq:
            b["masquerade"] = masq
