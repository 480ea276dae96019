"""Runs last (file name): the server's log of everything the suite did — thousands of
requests, searches by name, identifier and birth date, errors — holds none of the names,
phone numbers, e-mail addresses, identifier values or birth dates of the patients the suite
created. The server logs at info, with tower_http's per-request events at debug."""

from __future__ import annotations

import re


def seeded_values(http, base) -> set[str]:
    """Every Patient's family/given names, telecom values, identifier values and birth dates."""
    values: set[str] = set()
    url = f"{base}/Patient"
    params = {"_count": "500", "_elements": "name,telecom,identifier,birthDate"}
    for _ in range(100):
        r = http.get(url, params=params)
        assert r.status_code == 200, r.text[:300]
        bundle = r.json()
        for e in bundle.get("entry", []):
            p = e["resource"]
            for n in p.get("name", []):
                values.update([n.get("family", "")] + n.get("given", []))
            values.update(t.get("value", "") for t in p.get("telecom", []))
            values.update(i.get("value", "") for i in p.get("identifier", []))
            values.add(p.get("birthDate", ""))
        nxt = next((l["url"] for l in bundle.get("link", []) if l["relation"] == "next"), None)
        if not nxt:
            break
        url, params = nxt, None
    # Short or generic strings (e.g. "Ann", a year) would match by accident; the suite's
    # invented names are long and unique. So would one character repeated (the hostile
    # campaign's 'xxxx…' names are inside its 'xxxx…' request paths): such a value tells nothing.
    return {v for v in values if len(v) >= 8 and not re.fullmatch(r"\d{4}", v) and len(set(v)) > 2}


def test_the_server_log_holds_no_seeded_phi(server, base, http):
    values = seeded_values(http, base)
    assert len(values) > 20, "the suite seeded patients"
    log = server.log_path.read_text(errors="replace")
    assert "request" in log and "GET" in log, "tower_http request events are in the log"
    leaked = sorted(v for v in values if v in log)
    assert leaked == [], f"{len(leaked)} seeded values occur in the server log, e.g. {leaked[:3]}"
