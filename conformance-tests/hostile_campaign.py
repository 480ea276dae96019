#!/usr/bin/env python3
"""HTTP hostile-input campaign against a running ironfhir (issue 21).

Reads the server's CapabilityStatement (GET [base]/metadata) and, for every resource type,
interaction, operation and search parameter it lists, sends hostile requests: very long values,
control characters, invalid UTF-8, huge and tiny numbers, impossible dates, deep nesting,
malformed JSON and XML, wrong content types, odd headers (unreadable If-Match, huge headers),
chains / _has / _include / _sort / _summary / _elements / _format=xml combinations, Bundles with
bad references, JSON Patch edge cases, path tricks, and more. Synthetic data only.

It records every 5xx answer, every request slower than --hang-seconds (10 s), every request the
server dropped without an answer, and whether the server stopped answering GET /metadata, each
with a reproducible description (generator, method, path, a short body excerpt, and the request
index: `--seed N --replay I` sends exactly that request again, `--show I` prints it in full).
Exit status 1 when anything was recorded, 0 otherwise, 2 on a usage or setup error.

Request i of a run is a function of (seed, i) alone — the generators draw from
random.Random(f"{seed}/{i}") and the resources the campaign writes have ids it chooses
(`hc<seed>-…`) — so a run is deterministic given the seed; only how many requests fit in
--duration depends on the server's speed.

Writes stay inside what the campaign owns: instance writes target its own ids (or ids that
cannot exist), and conditional writes always carry the campaign's own `_tag` criterion, so it
can run against a shared test server without changing anyone else's resources.

    python3 conformance-tests/hostile_campaign.py --base http://127.0.0.1:8080/fhir \\
        --token "$(ironfhir admin token --scope 'system/*.*')" --duration 1800 --seed 1 --out report.json

Needs Python 3.11 and requests (conformance-tests/.venv has both).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import sys
import time
import urllib.parse
from dataclasses import dataclass, field

import requests

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
JSON_PATCH = "application/json-patch+json"
TAG_SYSTEM = "http://ironfhir.invalid/hostile-campaign"

# ---------------------------------------------------------------------------------------------
# Requests and their descriptions
# ---------------------------------------------------------------------------------------------


@dataclass
class Req:
    generator: str
    method: str
    path: str  # after the base, '' or starting with '/'; already percent-encoded
    query: str = ""  # raw (already encoded) query string, without '?'
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    auth: bool = True
    note: str = ""
    # Follow up to this many `next` links of a 200 Bundle (each page must answer too).
    follow: int = 0


def excerpt(data: bytes | str | None, limit: int = 160) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    text = data[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)
    if len(data) > limit:
        text += f"… ({len(data)} bytes, sha1 {hashlib.sha1(data).hexdigest()[:12]})"
    return text


def describe(req: Req) -> dict:
    url = req.path + ("?" + req.query if req.query else "")
    headers = {k: excerpt(v, 80) for k, v in req.headers.items() if k.lower() != "authorization"}
    if "Authorization" in req.headers and not req.auth:
        headers["Authorization"] = excerpt(req.headers["Authorization"], 40)
    return {
        "generator": req.generator,
        "method": req.method,
        "url": excerpt(url, 240),
        "headers": headers,
        "body": excerpt(req.body),
        "note": req.note,
    }


def q(value: str | bytes) -> str:
    """Percent-encodes a query key or value completely (bytes are taken as they are, so invalid
    UTF-8 reaches the server as %FF…)."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return urllib.parse.quote_from_bytes(value, safe="")


def query(pairs) -> str:
    return "&".join(f"{q(k)}={q(v)}" for k, v in pairs)


# ---------------------------------------------------------------------------------------------
# Hostile values
# ---------------------------------------------------------------------------------------------

UNICODE_BITS = ["é", "ß", "中文", "ñ", "Ω", "😀", "\u200b", "\u202e", "\u2028", "\ufeff", "a\u0301", "\ufffd", "𝔘", "ﬀ", "İ", "ǅ"]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f", "\x85", "\t", "\r\n"]
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]
NUMBERS = ["1e999999", "1e-999999", "-1e999999", "1e400", "1e-400", "-0", "0.0e10", "NaN", "Infinity", "-Infinity", "9" * 400,
           "1." + "5" * 200, "0x10", "1_000", ".5", "5.", "--1", "+1", "1e", "0.5e-2147483648", "1e2147483648", "1e-2147483649",
           "18446744073709551616", "-9223372036854775809", "9223372036854775807", "4.9e-324", "1.7976931348623157e309"]
DATES = ["2020-02-30", "2020-13-45", "0000-00-00", "0000", "9999-12-31T23:59:59.9999999999+14:00", "2020-01-01T25:61:61Z", "-2020",
         "20200", "2020-1-1", "2019-02-29", "2020-01-01T00:00:00+99:99", "99999999-01-01", "2020-01-01T10:00:00.000000000000001Z",
         "2020-W01", "2020-01-01T", "2020-01-01T10", "2020-01-01T10:00:00", "2020-01-01 10:00:00Z", "T10:00", "2020-02-29T24:00:00Z",
         "1970-01-01T00:00:00-00:00", "2262-04-12", "+275760-09-13", "262143-12-31", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
         "2020-01-01T10:00:00.Z", "2020-01-01T10:00:60Z", "2020-00", "2020-12-00", "1e3", "now", "éééé-01", "1-\ufffdnt", "20\u00e9-01",
         "2020-0\u00e9", "2020-01-\u00e9"]
PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx", "gege", "EQ"]
SPECIAL = ["", " ", ",", "|", "$", "\\", "\\\\,", "%", "*", "..", "../../etc/passwd", "' OR 1=1 --", "\"", "<script>x</script>", "${jndi:x}",
           "null", "{}", "[]", "Patient/", "Patient//", "/Patient/1", "urn:uuid:", "urn:oid:", "http://", "#", "#x", "?", "&", "=", "a=b&c",
           "%00", "%%", "%ZZ", "\\u0000", ":", "::", "Patient/1/_history/1", "Patient?name=x", "_has:Observation", "...", "a" * 65,
           "🙂" * 100, "-" * 300, "system|", "|code", "||", "a|b|c|d", "a$b$c", "\\|\\,\\$", "a\\", "x" * 2705]
MODIFIERS = ["", ":missing", ":exact", ":contains", ":not", ":text", ":above", ":below", ":in", ":not-in", ":of-type", ":identifier",
             ":Patient", ":Observation", ":iterate", ":x", ":", "::", ":missing:exact", ":" + "m" * 300, ":Nope"]
SYSTEM_WORDS = ["_count", "_offset", "_sort", "_total", "_summary", "_elements", "_include", "_revinclude", "_format", "_pretty",
                "_cursor", "_id", "_lastUpdated", "_text", "_content", "_type", "_since", "_at", "_list", "_has", "_query",
                "_security", "_tag", "_profile", "_source", "_filter", "_contained", "_containedType"]


def long_text(rng: random.Random, low: int = 3000, high: int = 6000) -> str:
    n = rng.randint(low, high)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,:;|$\\/'\"()[]{}<>!?*&%#@+=~`^"
    parts = []
    size = 0
    while size < n:
        if rng.random() < 0.1:
            s = rng.choice(UNICODE_BITS)
        else:
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 64)))
        parts.append(s)
        size += len(s)
    return "".join(parts)[:n]


def text_value(rng: random.Random) -> str | bytes:
    """A hostile text: long, control characters, odd Unicode, special syntax or invalid UTF-8."""
    kind = rng.randrange(8)
    if kind == 0:
        return long_text(rng)
    if kind == 1:
        base = rng.choice(["abc", "Smith", "x", ""])
        return base + rng.choice(CONTROL) + base
    if kind == 2:
        return "".join(rng.choice(UNICODE_BITS) for _ in range(rng.randint(1, 40)))
    if kind == 3:
        return rng.choice(SPECIAL)
    if kind == 4:
        return b"ab" + rng.choice(INVALID_UTF8) + b"cd"
    if kind == 5:
        return rng.choice(NUMBERS)
    if kind == 6:
        return rng.choice(DATES)
    return long_text(rng, 200, 400)


def typed_value(rng: random.Random, ptype: str) -> str | bytes:
    """A hostile search value for a parameter of type `ptype` (search.html)."""
    if rng.random() < 0.25:
        return text_value(rng)
    if ptype in ("date",):
        return rng.choice(PREFIXES) + rng.choice(DATES)
    if ptype in ("number",):
        return rng.choice(PREFIXES) + rng.choice(NUMBERS)
    if ptype == "quantity":
        return rng.choice(PREFIXES) + rng.choice(NUMBERS) + rng.choice(["", "|", "||mg", "|http://unitsofmeasure.org|mm[Hg]", "|" + "s" * 3000 + "|x", "|||"])
    if ptype == "token":
        return rng.choice(["", "sys|", "|", "http://loinc.org|"]) + rng.choice(["8480-6", "", long_text(rng, 50, 3200), "a,b,c", "x\\|y", "\u00e9"])
    if ptype == "reference":
        return rng.choice(["Patient/", "Patient/x", "http://other.example/fhir/Patient/1", "urn:uuid:00000000-0000-0000-0000-000000000000",
                           "Patient/" + "1" * 70, "Nope/1", "Patient/../Observation/1", "#x", "Patient/1/_history/x", "Patient",
                           "http://localhost:1/fhir/Patient/1", "a" * 3000, "Patient?identifier=x"])
    if ptype == "uri":
        return rng.choice(["http://hl7.org/fhir", "http://", "urn:", "http://x/" + "y" * 3000, "not a uri", "file:///etc/passwd", "http://[::1"])
    if ptype == "composite":
        return "$".join(str(rng.choice(["http://loinc.org|8480-6", "gt140", "1e999999", "", "$", "2020-02-30"])) for _ in range(rng.randint(1, 4)))
    if ptype == "string":
        return rng.choice(["Sm", "", long_text(rng, 3000, 3500), "a%b_c", "\\", "O'Brien", "ÄÖÜ", "ǅ" * 50])
    return text_value(rng)


# ---------------------------------------------------------------------------------------------
# Capability statement
# ---------------------------------------------------------------------------------------------


@dataclass
class Capability:
    types: list  # [{type, interactions:set, params:[(name,type)], operations:[name]}]
    system_interactions: set
    system_operations: list
    forced: dict | None = None  # the type a systematic request is about (Campaign.request)
    forced_param: tuple | None = None

    @staticmethod
    def parse(cs: dict) -> "Capability":
        rest = (cs.get("rest") or [{}])[0]
        types = []
        for r in rest.get("resource", []):
            types.append({
                "type": r["type"],
                "interactions": {i.get("code") for i in r.get("interaction", [])},
                "params": [(p["name"], p.get("type", "string")) for p in r.get("searchParam", [])],
                "operations": [o["name"] for o in r.get("operation", [])],
            })
        return Capability(types, {i.get("code") for i in rest.get("interaction", [])}, [o["name"] for o in rest.get("operation", [])])

    def by_name(self, name: str) -> dict | None:
        return next((t for t in self.types if t["type"] == name), None)

    def pick(self, rng: random.Random, interaction: str | None = None) -> dict:
        if self.forced is not None and (interaction is None or interaction in self.forced["interactions"]):
            return self.forced
        # Common clinical types half of the time: they hold the data and the most parameters.
        common = [t for t in self.types if t["type"] in ANCHOR_TYPES and (interaction is None or interaction in t["interactions"])]
        pool = [t for t in self.types if interaction is None or interaction in t["interactions"]]
        return rng.choice(common if common and rng.random() < 0.5 else pool)

    def references(self, t: dict) -> list:
        return [n for n, ty in t["params"] if ty == "reference"]


# ---------------------------------------------------------------------------------------------
# The campaign's own resources (anchors)
# ---------------------------------------------------------------------------------------------

ANCHOR_TYPES = ["Organization", "Practitioner", "Patient", "Encounter", "Observation", "Condition", "Basic", "MedicationRequest"]


class Campaign:
    def __init__(self, base: str, token: str, seed: int, hang_seconds: float, capability: Capability):
        self.base = base.rstrip("/")
        self.token = token
        self.seed = seed
        self.hang = hang_seconds
        self.cap = capability
        self.prefix = f"hc{seed}"
        self.tag = {"system": TAG_SYSTEM, "code": self.prefix}
        self.session = requests.Session()
        self.retried = 0

    # -- anchors ------------------------------------------------------------------------------

    def anchor_id(self, rtype: str) -> str:
        return f"{self.prefix}-{rtype.lower()[:12]}-1"

    def meta(self) -> dict:
        return {"tag": [dict(self.tag)]}

    def anchor(self, rtype: str) -> dict:
        aid = self.anchor_id(rtype)
        ref = lambda t: {"reference": f"{t}/{self.anchor_id(t)}"}  # noqa: E731
        bodies = {
            "Organization": {"name": "Hostile campaign org", "active": True},
            "Practitioner": {"name": [{"family": "Hc", "given": ["Pr"]}]},
            "Patient": {"name": [{"family": "Hc", "given": ["Pt"]}], "gender": "other", "birthDate": "1980",
                        "managingOrganization": ref("Organization"), "generalPractitioner": [ref("Practitioner")],
                        "identifier": [{"system": TAG_SYSTEM, "value": self.prefix}]},
            "Encounter": {"status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                          "subject": ref("Patient")},
            "Observation": {"status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                            "subject": ref("Patient"), "encounter": ref("Encounter"), "effectiveDateTime": "2024-02-29T10:00:00Z",
                            "valueQuantity": {"value": 131.25, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            "Condition": {"subject": ref("Patient"), "code": {"text": "hostile"}, "recordedDate": "2024-01-01"},
            "Basic": {"code": {"text": "hostile campaign"}, "subject": ref("Patient")},
            "MedicationRequest": {"status": "active", "intent": "order", "subject": ref("Patient"),
                                  "medicationCodeableConcept": {"text": "hostile"}, "authoredOn": "2024-01-01"},
        }
        body = {"resourceType": rtype, "id": aid, "meta": self.meta()}
        body.update(bodies.get(rtype, {}))
        return body

    def setup(self) -> list:
        """PUTs the anchors (update-as-create at the campaign's own ids); returns problems."""
        problems = []
        for rtype in ANCHOR_TYPES:
            if not self.cap.by_name(rtype):
                continue
            r = self.session.put(f"{self.base}/{rtype}/{self.anchor_id(rtype)}", data=json.dumps(self.anchor(rtype)),
                                 headers=self.headers({"Content-Type": FHIR_JSON}), timeout=60)
            if r.status_code not in (200, 201):
                problems.append(f"PUT {rtype}/{self.anchor_id(rtype)}: {r.status_code} {r.text[:200]}")
        return problems

    def headers(self, extra: dict | None = None) -> dict:
        h = {"Authorization": f"Bearer {self.token}", "Accept": FHIR_JSON}
        h.update(extra or {})
        return h

    # -- generators ---------------------------------------------------------------------------

    def own_id(self, rng: random.Random, rtype: str) -> str:
        """An id whose resource the campaign may change: its anchor, or one that cannot exist."""
        if rtype in ANCHOR_TYPES and rng.random() < 0.6:
            return self.anchor_id(rtype)
        return f"{self.prefix}-x{rng.randrange(10**6)}"

    def hostile_id(self, rng: random.Random) -> str:
        """A path segment for an id (already encoded)."""
        return rng.choice([
            q("a" * rng.choice([64, 65, 300, 5000])), "%2e%2e", "..", ".", q("x/y"), "%2F", q("é"), "%00", "%FF%FE", q(" "),
            q(long_text(rng, 100, 200)), "-", "_", q("a.b"), "%25", q("1" * 40), q("$validate"), "_history", "_search",
            q("x\ny"), "%C0%AF", q(self.prefix + "-\u202e"), ";jsessionid=1", "*", q("Patient/1"),
        ])

    def gen_search(self, rng: random.Random) -> Req:
        """search-type with hostile values for the type's own parameters (every type in turn)."""
        t = self.cap.pick(rng, "search-type")
        pairs = []
        if self.cap.forced_param is not None:
            name, ptype = self.cap.forced_param
            pairs.append((name + (rng.choice(MODIFIERS) if rng.random() < 0.3 else ""), typed_value(rng, ptype)))
        for _ in range(rng.randint(0 if pairs else 1, 3)):
            name, ptype = rng.choice(t["params"]) if t["params"] else ("_id", "token")
            modifier = rng.choice(MODIFIERS) if rng.random() < 0.4 else ""
            pairs.append((name + modifier, typed_value(rng, ptype)))
        if rng.random() < 0.5:
            pairs += self.controls(rng, t)
        headers = {}
        if rng.random() < 0.2:
            headers["Prefer"] = rng.choice(["handling=strict", "handling=lenient", "handling=" + "x" * 200])
        if rng.random() < 0.3 and "search-type" in t["interactions"]:
            # POST [type]/_search with a form body (same criteria).
            body = query(pairs).encode()
            return Req("search-post", "POST", f"/{t['type']}/_search", headers={"Content-Type": "application/x-www-form-urlencoded", **headers}, body=body)
        return Req("search", "GET", f"/{t['type']}", query(pairs), headers)

    def controls(self, rng: random.Random, t: dict) -> list:
        """_sort, _count, _summary, _elements, _include, _revinclude, _total, _format … in combination."""
        names = [n for n, _ in t["params"]] or ["_id"]
        refs = self.cap.references(t)
        out = []
        for _ in range(rng.randint(1, 5)):
            k = rng.randrange(12)
            if k == 0:
                out.append(("_sort", ",".join(rng.choice(["", "-"]) + rng.choice(names + ["x", "_score", "-", "_lastUpdated"]) for _ in range(rng.randint(1, 8)))))
            elif k == 1:
                out.append(("_count", rng.choice(["0", "1", "1000", "1001", "-1", "1e3", "99999999999999999999", "abc", "", " 5"])))
            elif k == 2:
                out.append(("_summary", rng.choice(["true", "false", "text", "data", "count", "TRUE", "x", ""])))
            elif k == 3:
                out.append(("_elements", ",".join(rng.choice(names + ["id", "meta", "text", "x", "_x", "name.family", "", "*"]) for _ in range(rng.randint(1, 30)))))
            elif k == 4:
                target = rng.choice(["", ":Patient", ":Nope", ":*"])
                out.append((rng.choice(["_include", "_include:iterate", "_include:recurse", "_include:x"]),
                            rng.choice([f"{t['type']}:{rng.choice(refs) if refs else 'x'}{target}", "*", f"{t['type']}:*", "Nope:x", ":", "", long_text(rng, 100, 300)])))
            elif k == 5:
                src = self.cap.pick(rng)
                srefs = self.cap.references(src) or ["x"]
                out.append((rng.choice(["_revinclude", "_revinclude:iterate"]), rng.choice([f"{src['type']}:{rng.choice(srefs)}", f"{src['type']}:*", "*", "Observation", "::"])))
            elif k == 6:
                out.append(("_total", rng.choice(["accurate", "estimate", "none", "x"])))
            elif k == 7:
                out.append(("_format", rng.choice(["xml", "json", "application/fhir+xml", "text/html", "x", "xml;q=0", "ttl"])))
                if rng.random() < 0.5:
                    out.append(("_pretty", rng.choice(["true", "false", "x"])))
            elif k == 8:
                out.append(self.chain(rng, t))
            elif k == 9:
                out.append(self.has(rng, t))
            elif k == 10:
                out.append((rng.choice(["_offset", "_cursor", "_since", "_at", "_list", "_query", "_filter", "_contained"]),
                            rng.choice(["0", "-1", "99999999999999999999", "abc", long_text(rng, 50, 3000), "2020-02-30", "%00"])))
            else:
                out.append((rng.choice(["_text", "_content", "_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"]), text_value(rng)))
        return out

    def chain(self, rng: random.Random, t: dict) -> tuple:
        refs = self.cap.references(t)
        name = rng.choice(refs) if refs else "subject"
        links = rng.choice([1, 2, 3, 5, 6, 7, 20, 500])
        middle = "".join("." + rng.choice(["organization", "partof", "subject", "patient", "general-practitioner", "x", "_has:Observation:subject:code"]) for _ in range(links - 1))
        last = rng.choice(["name", "identifier", "birthdate", "code", "_id", "x", "name:exact", "date"])
        type_mod = rng.choice(["", ":Patient", ":Organization", ":Nope", ":"])
        return (f"{name}{type_mod}{middle}.{last}", typed_value(rng, rng.choice(["string", "token", "date"])))

    def has(self, rng: random.Random, t: dict) -> tuple:
        depth = rng.choice([1, 1, 2, 3, 6, 7, 50])
        key = ":".join(f"_has:{rng.choice(['Observation', 'Encounter', 'Nope', 'Patient', 'AuditEvent', ''])}:{rng.choice(['subject', 'patient', 'x', 'entity', ''])}" for _ in range(depth))
        return (key + ":" + rng.choice(["code", "status", "date", "_id", "x", "subject.name"]), typed_value(rng, "token"))

    def gen_search_system(self, rng: random.Random) -> Req:
        types = ",".join(rng.choice([t["type"] for t in self.cap.types] + ["Nope", "", "*", long_text(rng, 10, 100)]) for _ in range(rng.randint(1, 20)))
        pairs = [("_type", types)] if rng.random() < 0.8 else []
        pairs += self.controls(rng, self.cap.pick(rng))
        if rng.random() < 0.5:
            pairs.append((rng.choice(["_id", "_lastUpdated", "_tag", "name", "x"]), text_value(rng)))
        return Req("search-system", "GET", "", query(pairs))

    def gen_compartment(self, rng: random.Random) -> Req:
        t = self.cap.pick(rng, "search-type")
        pid = self.anchor_id("Patient") if rng.random() < 0.6 else self.hostile_id(rng)
        pairs = self.controls(rng, t) if rng.random() < 0.6 else []
        comp = rng.choice(["Patient", "Encounter", "Practitioner", "RelatedPerson", "Device", "Nope"])
        return Req("compartment", "GET", f"/{comp}/{pid}/{rng.choice([t['type'], '*', 'Nope', ''])}", query(pairs))

    def gen_read(self, rng: random.Random) -> Req:
        t = self.cap.pick(rng, "read")
        rid = self.hostile_id(rng) if rng.random() < 0.6 else self.own_id(rng, t["type"])
        k = rng.randrange(6)
        headers = {}
        if rng.random() < 0.4:
            headers[rng.choice(["If-None-Match", "If-Modified-Since", "If-Match"])] = rng.choice(
                ['W/"1"', 'W/"x"', "*", '"', 'W/"' + "9" * 40 + '"', "Mon, 32 Foo 2020 25:61:61 GMT", "yesterday", long_text(rng, 100, 3000), "W/", ""])
        pairs = self.controls(rng, t) if rng.random() < 0.3 else []
        if k <= 2:
            return Req("read", "GET", f"/{t['type']}/{rid}", query(pairs), headers)
        if k == 3:
            vid = rng.choice(["1", "0", "-1", "x", "99999999999999999999", "1.5", "%00", "1e3", q(long_text(rng, 20, 100))])
            return Req("vread", "GET", f"/{t['type']}/{rid}/_history/{vid}", query(pairs), headers)
        if k == 4:
            return Req("read-head", "HEAD", f"/{t['type']}/{rid}", query(pairs), headers)
        return Req("read-options", rng.choice(["OPTIONS", "TRACE", "PROPFIND", "CONNECT"]) if rng.random() < 0.3 else "GET",
                   f"/{t['type']}/{rid}/{rng.choice(['$validate', '$everything', '$nope', '_history/1/x', 'x/y/z', '%2e%2e/%2e%2e/metadata'])}")

    def gen_history(self, rng: random.Random) -> Req:
        level = rng.randrange(3)
        t = self.cap.pick(rng, "history-type")
        pairs = []
        for _ in range(rng.randint(0, 4)):
            pairs.append((rng.choice(["_since", "_at", "_count", "_list", "_sort", "_cursor", "_page", "_format", "_summary", "_elements"]),
                          rng.choice(DATES + NUMBERS + ["", "xml", "true", long_text(rng, 100, 3000)])))
        path = ["", f"/{t['type']}", f"/{t['type']}/{self.own_id(rng, t['type'])}"][level] + "/_history"
        return Req("history", "GET", path, query(pairs))

    # -- bodies ---------------------------------------------------------------------------------

    def mutate(self, rng: random.Random, value, depth: int = 0):
        """A copy of `value` with one to a few elements replaced by hostile ones; raw JSON
        tokens (numbers JSON cannot express in Python) as {"__raw__": text}."""
        if isinstance(value, dict) and value and depth < 6 and rng.random() < 0.8:
            out = dict(value)
            key = rng.choice(list(out))
            out[key] = self.mutate(rng, out[key], depth + 1)
            if rng.random() < 0.2:
                out[rng.choice(["_" + key, key + "x", "extension", "modifierExtension", "contained", "id", "meta", "text", "", "resourceType", "fhir_comments"])] = self.hostile_json(rng)
            return out
        if isinstance(value, list) and value and depth < 6 and rng.random() < 0.8:
            out = list(value)
            i = rng.randrange(len(out))
            out[i] = self.mutate(rng, out[i], depth + 1)
            if rng.random() < 0.2:
                out.append(rng.choice([None, {}, [], out[i]]))
            return out
        return self.hostile_json(rng)

    def hostile_json(self, rng: random.Random):
        k = rng.randrange(10)
        if k == 0:
            return long_text(rng)
        if k == 1:
            return "x" + rng.choice(CONTROL) + "y"
        if k == 2:
            return {"__raw__": rng.choice(NUMBERS[:12] + ["1e309", "-1e-400", "123456789012345678901234567890", "0." + "0" * 400 + "1"])}
        if k == 3:
            return rng.choice(DATES)
        if k == 4:
            return rng.choice([None, True, False, 0, -1, 2**63, 2**64, [], {}, "", [None], [[]], {"": ""}])
        if k == 5:
            return {"reference": rng.choice(["urn:uuid:00000000-0000-4000-8000-000000000000", "Patient/", "Nope/1", "#nope", "Patient?x=y",
                                             "http://other/fhir/Patient/1", "Patient/" + "9" * 70, long_text(rng, 100, 3000)])}
        if k == 6:
            return {"url": rng.choice(["http://x", "", long_text(rng, 50, 3000)]), rng.choice(["valueString", "valueQuantity", "valueX", "value"]): self.hostile_json(rng) if rng.random() < 0.3 else "v"}
        if k == 7:
            n = rng.choice([100, 1000, 50000])
            return [{"family": "x"}] * n if rng.random() < 0.5 else ["x"] * n
        if k == 8:
            return {"resourceType": rng.choice(["Patient", "Bundle", "Nope", ""]), "id": rng.choice(["x", "", "a" * 65]), "contained": [{"resourceType": "Patient"}]}
        return rng.choice(UNICODE_BITS) * rng.randint(1, 500)

    @staticmethod
    def dumps(value) -> bytes:
        """JSON with {"__raw__": token} replaced by the raw token."""
        raws = []

        def default(o):
            raise TypeError(str(type(o)))

        def walk(v):
            if isinstance(v, dict):
                if set(v) == {"__raw__"}:
                    raws.append(v["__raw__"])
                    return f"__RAW{len(raws) - 1}__"
                return {k: walk(x) for k, x in v.items()}
            if isinstance(v, list):
                return [walk(x) for x in v]
            return v

        text = json.dumps(walk(value), default=default, ensure_ascii=False)
        for i, raw in enumerate(raws):
            text = text.replace(f'"__RAW{i}__"', raw, 1)
        return text.encode("utf-8", "surrogatepass")

    def hostile_body(self, rng: random.Random, rtype: str, rid: str | None) -> tuple[bytes, str, str]:
        """(body, content type, description of the kind)."""
        base = self.anchor(rtype) if rtype in ANCHOR_TYPES else {"resourceType": rtype, "meta": self.meta()}
        base = dict(base)
        if rid is None:
            base.pop("id", None)
        else:
            base["id"] = rid
        k = rng.randrange(14)
        ctype = FHIR_JSON
        if k <= 4:
            kind, body = "mutated", self.dumps(self.mutate(rng, base))
        elif k == 5:
            n = rng.choice([100, 1000, 10000, 100000])
            inner = '{"url":"http://x","extension":[' * n + '{"url":"http://x","valueString":"y"}' + "]}" * n
            kind, body = f"nested-extension-{n}", (json.dumps(base)[:-1] + ',"extension":[' + inner + "]}").encode()
        elif k == 6:
            n = rng.choice([1000, 100000, 1000000])
            kind, body = f"nested-arrays-{n}", (json.dumps(base)[:-1] + ',"x":' + "[" * n + "]" * n + "}").encode()
        elif k == 7:
            raw = self.dumps(self.mutate(rng, base))
            at = rng.randrange(len(raw))
            kind, body = "invalid-utf8", raw[:at] + rng.choice(INVALID_UTF8) + raw[at:]
        elif k == 8:
            raw = json.dumps(base).encode()
            kind, body = "malformed-json", rng.choice([
                raw[: rng.randrange(len(raw))], raw + b",", raw[:-1] + b",}", b"\xef\xbb\xbf" + raw, raw.replace(b'"', b"'", 4),
                raw[:-1] + b', "resourceType": "Patient"}', raw[:-1] + b", /* c */ }", b"[" + raw + b"]", b"", b"null", b"0", b'"x"',
                raw[:-1] + b', "x": NaN}', raw * 2, b" " * 100000 + raw, raw.replace(b":", b": " + b" " * 10000, 1)])
        elif k == 9:
            kind, body, ctype = self.xml_body(rng, rtype)
            return body, ctype, kind
        elif k == 10:
            ctype = rng.choice(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/fhir+json; charset=utf-16",
                                "application/fhir+json; charset=latin1", ";;;", "application/fhir+xml", "application/json-patch+json", "*/*",
                                "application/fhir+json; fhirVersion=3.0", "application/fhir+json " + "x" * 5000, "application/octet-stream"])
            kind, body = "content-type", json.dumps(base).encode()
        elif k == 11:
            wrong = dict(base, resourceType=rng.choice(["Patient", "Observation", "Bundle", "Nope", "patient", "", None]))
            kind, body = "wrong-resourceType", self.dumps(wrong)
        elif k == 12:
            big = dict(base, text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">" + long_text(rng, 3000, 9000).replace("<", "").replace("&", "") + "</div>"})
            kind, body = "narrative", self.dumps(big)
        else:
            kind, body = "long-strings", self.dumps(self.long_strings(rng, base))
        return body, ctype, kind

    def long_strings(self, rng: random.Random, value):
        if isinstance(value, dict):
            return {k: (v if k in ("resourceType", "id", "meta") else self.long_strings(rng, v)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.long_strings(rng, v) for v in value]
        if isinstance(value, str) and rng.random() < 0.7:
            return value + long_text(rng)
        return value

    def xml_body(self, rng: random.Random, rtype: str) -> tuple[str, bytes, str]:
        ns = 'xmlns="http://hl7.org/fhir"'
        k = rng.randrange(10)
        if k == 0:
            body = f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;"><!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;"><!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">]><{rtype} {ns}><id value="&lol5;"/></{rtype}>'
            kind = "xml-billion-laughs"
        elif k == 1:
            body = f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><{rtype} {ns}><id value="&xxe;"/></{rtype}>'
            kind = "xml-external-entity"
        elif k == 2:
            n = rng.choice([1000, 100000])
            body = f"<{rtype} {ns}>" + '<extension url="http://x">' * n + "</extension>" * n + f"</{rtype}>"
            kind = f"xml-nested-{n}"
        elif k == 3:
            body = f"<{rtype} {ns}><id value=\"x\"/><text><status value=\"generated\"/><div xmlns=\"http://www.w3.org/1999/xhtml\">{'<p>' * 5000}x{'</p>' * 5000}</div></text></{rtype}>"
            kind = "xml-deep-narrative"
        elif k == 4:
            body = f"<{rtype} {ns}><name><family value=\"{long_text(rng).replace('&', '').replace('<', '').replace(chr(34), '')}\"/></name></{rtype}>"
            kind = "xml-long-attribute"
        elif k == 5:
            body = f"<{rtype} {ns}><id value=\"a\x01b\"/><name><family value=\"&#0;&#x1;&#xFFFE;\"/></name></{rtype}>"
            kind = "xml-control-chars"
        elif k == 6:
            body = rng.choice([f"<{rtype}>", f"<{rtype} xmlns=\"http://wrong\"/>", f"<{rtype} {ns}><id value=\"x\"></{rtype}>", "<", "<?xml?>", "",
                               f"<x:{rtype} xmlns:x=\"http://hl7.org/fhir\"><x:id value=\"y\"/></x:{rtype}>", f"<{rtype} {ns}><![CDATA[x]]></{rtype}>",
                               f"<{rtype} {ns}><?pi x?><!-- c --><id value=\"x\"/></{rtype}>", f"<{rtype} {ns} {ns}/>"])
            kind = "xml-malformed"
        elif k == 7:
            body = f'<?xml version="1.0" encoding="UTF-16"?><{rtype} {ns}><id value="x"/></{rtype}>'
            kind = "xml-encoding-decl"
        elif k == 8:
            body = f"<{rtype} {ns}><valueQuantity><value value=\"{rng.choice(NUMBERS)}\"/></valueQuantity><birthDate value=\"{rng.choice(DATES)}\"/><active value=\"maybe\"/></{rtype}>"
            kind = "xml-bad-primitives"
        else:
            body = f"<{rtype} {ns}><meta><tag><system value=\"{TAG_SYSTEM}\"/><code value=\"{self.prefix}\"/></tag></meta>" + "<unknown/>" * rng.randint(1, 1000) + f"</{rtype}>"
            kind = "xml-unknown-elements"
        data = body.encode("utf-8", "surrogatepass")
        if rng.random() < 0.15:
            at = rng.randrange(len(data) + 1)
            data = data[:at] + rng.choice(INVALID_UTF8) + data[at:]
            kind += "+invalid-utf8"
        return kind, data, rng.choice([FHIR_XML, FHIR_XML, "application/xml", "text/xml", FHIR_JSON])

    def write_headers(self, rng: random.Random) -> dict:
        h = {}
        if rng.random() < 0.3:
            h["If-Match"] = rng.choice(['W/"1"', 'W/"0"', 'W/"-1"', 'W/"x"', '"1"', "*", "W/", 'W/"' + "9" * 30 + '"', "1", 'W/"1", W/"2"', long_text(rng, 100, 3000), ""])
        if rng.random() < 0.2:
            h["Prefer"] = rng.choice(["return=minimal", "return=representation", "return=OperationOutcome", "return=x", "handling=strict", "respond-async", "x" * 3000])
        if rng.random() < 0.1:
            h["Accept"] = rng.choice([FHIR_XML, "text/html", "application/json;q=NaN", "*/*;q=0", "application/fhir+json;q=0, application/fhir+xml;q=0", "x" * 3000, ""])
        return h

    def gen_create(self, rng: random.Random) -> Req:
        t = self.cap.pick(rng, "create")
        body, ctype, kind = self.hostile_body(rng, t["type"], None)
        headers = {"Content-Type": ctype, **self.write_headers(rng)}
        if rng.random() < 0.2:
            headers["If-None-Exist"] = query([(rng.choice([n for n, _ in t["params"]] or ["_id"]) + rng.choice(MODIFIERS[:4]), typed_value(rng, "string")), ("_tag", f"{TAG_SYSTEM}|{self.prefix}")])
        return Req(f"create/{kind}", "POST", f"/{t['type']}", headers=headers, body=body)

    def gen_update(self, rng: random.Random) -> Req:
        t = self.cap.pick(rng, "update")
        conditional = rng.random() < 0.2
        rid = None if conditional else (self.own_id(rng, t["type"]) if rng.random() < 0.8 else None)
        body, ctype, kind = self.hostile_body(rng, t["type"], rid)
        headers = {"Content-Type": ctype, **self.write_headers(rng)}
        if conditional:
            pairs = [("_tag", f"{TAG_SYSTEM}|{self.prefix}")] + [(rng.choice([n for n, _ in t["params"]] or ["_id"]), typed_value(rng, "token"))]
            return Req(f"update-conditional/{kind}", "PUT", f"/{t['type']}", query(pairs), headers, body)
        path_id = rid if rid is not None and rng.random() < 0.85 else self.hostile_id(rng)
        return Req(f"update/{kind}", "PUT", f"/{t['type']}/{path_id}", headers=headers, body=body)

    def patch_ops(self, rng: random.Random):
        paths = ["/id", "/resourceType", "/meta", "/meta/versionId", "/name/0/family", "/name/-", "/name/99", "/name/-1", "/name/01", "/",
                 "", "/~2", "/~", "/a~1b", "/text/div", "/extension/0/extension", "/contained/0", "/" + "a/" * 500 + "b", "/status",
                 "/subject/reference", "/valueQuantity/value", "/identifier/0/value", "/name/0/given/0", "/\u00e9", "/%00"]
        ops = []
        for _ in range(rng.choice([1, 2, 3, 10, 200])):
            op = rng.choice(["add", "remove", "replace", "move", "copy", "test", "x", "", None])
            item = {"op": op, "path": rng.choice(paths)}
            if op in ("move", "copy") or rng.random() < 0.1:
                item["from"] = rng.choice(paths)
            if op in ("add", "replace", "test") or rng.random() < 0.1:
                item["value"] = self.hostile_json(rng) if rng.random() < 0.6 else rng.choice(["x", 1, None, {"family": "y"}, [], True])
            if rng.random() < 0.05:
                item.pop("op", None)
            ops.append(item)
        if rng.random() < 0.1:
            return rng.choice([{}, {"op": "add"}, "x", None, [[]], [1]])
        return ops

    def gen_patch(self, rng: random.Random) -> Req:
        t = self.cap.pick(rng, "patch")
        doc = self.patch_ops(rng)
        body = self.dumps(doc)
        ctype = JSON_PATCH
        k = rng.randrange(10)
        kind = "json-patch"
        if k == 0:
            ctype = rng.choice([FHIR_JSON, "application/json", FHIR_XML, "text/plain", JSON_PATCH + "; charset=latin1"])
            kind = "patch-content-type"
        elif k == 1:
            body = json.dumps({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [{"name": "type", "valueCode": "add"}]}]}).encode()
            ctype = rng.choice([FHIR_JSON, JSON_PATCH])
            kind = "fhirpath-patch"
        elif k == 2:
            body = body[: rng.randrange(len(body) + 1)] + rng.choice([b"", b"\xff", b"}"])
            kind = "patch-malformed"
        elif k == 3:
            n = rng.choice([20, 100])
            body = json.dumps([{"op": "copy", "from": "/name", "path": "/name/0/extension"}] + [{"op": "copy", "from": "/name/0", "path": "/name/-"}] * n).encode()
            kind = "patch-copy-amplify"
        headers = {"Content-Type": ctype, **self.write_headers(rng)}
        if rng.random() < 0.15:
            pairs = [("_tag", f"{TAG_SYSTEM}|{self.prefix}"), ("_id", self.own_id(rng, t["type"]))]
            return Req(f"patch-conditional/{kind}", "PATCH", f"/{t['type']}", query(pairs), headers, body)
        rid = self.own_id(rng, t["type"]) if rng.random() < 0.85 else self.hostile_id(rng)
        return Req(f"patch/{kind}", "PATCH", f"/{t['type']}/{rid}", headers=headers, body=body)

    def gen_delete(self, rng: random.Random) -> Req:
        t = self.cap.pick(rng, "delete")
        if rng.random() < 0.4:
            pairs = [("_tag", f"{TAG_SYSTEM}|{self.prefix}-deleted")] + [(rng.choice([n for n, _ in t["params"]] or ["_id"]) + rng.choice(MODIFIERS[:5]), typed_value(rng, "string"))]
            return Req("delete-conditional", "DELETE", f"/{t['type']}", query(pairs), self.write_headers(rng))
        # Never the anchors: a fresh id, or a hostile one.
        rid = f"{self.prefix}-d{rng.randrange(10**6)}" if rng.random() < 0.5 else self.hostile_id(rng)
        return Req("delete", "DELETE", f"/{t['type']}/{rid}", headers=self.write_headers(rng))

    def entry(self, rng: random.Random, i: int, urns: list) -> dict:
        t = self.cap.pick(rng, "create")
        method = rng.choice(["POST", "PUT", "PATCH", "DELETE", "GET", "HEAD", "get", "OPTIONS", "", None])
        full = rng.choice(urns + ["", "urn:uuid:", "urn:oid:1.2", "http://other/fhir/Patient/1", long_text(rng, 100, 300), None])
        resource = self.anchor(t["type"]) if t["type"] in ANCHOR_TYPES else {"resourceType": t["type"], "meta": self.meta()}
        resource = dict(resource)
        resource.pop("id", None)
        if rng.random() < 0.5:
            # References to other entries, to nothing, conditional ones.
            ref = rng.choice(urns + ["urn:uuid:99999999-9999-4999-8999-999999999999", f"Patient?identifier={TAG_SYSTEM}|{self.prefix}", "Patient?name=",
                                     "Nope?x=y", "Patient?", "urn:uuid:", "urn:oid:", f"Patient?_has:Observation:subject:code={q(long_text(rng, 10, 50))}",
                                     "Patient/" + self.prefix + "-nope", "#missing"])
            for key in ("subject", "managingOrganization", "partOf"):
                if key in resource or rng.random() < 0.3:
                    resource[key] = {"reference": ref}
        if rng.random() < 0.3:
            resource = self.mutate(rng, resource)
        url = {
            "POST": t["type"],
            "PUT": f"{t['type']}/{self.own_id(rng, t['type'])}",
            "DELETE": f"{t['type']}?_tag={q(TAG_SYSTEM + '|' + self.prefix + '-deleted')}&_id={self.prefix}-d{rng.randrange(1000)}",
            "PATCH": f"{t['type']}/{self.own_id(rng, t['type'])}",
        }.get(method, f"{t['type']}?{query(self.controls(rng, t))}")
        if rng.random() < 0.3:
            url = rng.choice([url + "/../..", "/" + url, f"{self.base}/{url}", "http://other.example/fhir/" + url, "", "metadata", "$export",
                              url + "?_format=xml", url + "/_history/1", url.replace(t["type"], "Nope"), long_text(rng, 100, 3000),
                              f"{t['type']}?_tag={q(TAG_SYSTEM + '|' + self.prefix)}&{q(self.chain(rng, t)[0])}=x"])
        e = {"request": {"method": method, "url": url}}
        if full is not None:
            e["fullUrl"] = full
        if method in ("POST", "PUT"):
            e["resource"] = resource
        if method == "PATCH":
            e["resource"] = {"resourceType": "Binary", "contentType": rng.choice([JSON_PATCH, "application/json", ""]),
                             "data": rng.choice([base64.b64encode(self.dumps(self.patch_ops(rng))).decode(), "!!!", "", "e30=", " eyJ \n"])}
        if rng.random() < 0.2:
            e["request"][rng.choice(["ifMatch", "ifNoneMatch", "ifNoneExist", "ifModifiedSince"])] = rng.choice(
                ['W/"1"', "x", "", "2020-02-30T00:00:00Z", f"_tag={q(TAG_SYSTEM + '|' + self.prefix)}&name={q(long_text(rng, 10, 40))}", 'W/"' + "9" * 30 + '"'])
        if rng.random() < 0.05:
            e = rng.choice([None, [], "x", {"request": "GET"}, {"resource": resource}, {"request": {"method": "POST", "url": 5}}])
        return e

    def gen_bundle(self, rng: random.Random) -> Req:
        btype = rng.choice(["transaction", "transaction", "batch", "batch", "collection", "searchset", "document", "x", None])
        n = rng.choice([1, 2, 3, 5, 10, 30, 200])
        urns = [f"urn:uuid:{rng.getrandbits(128):032x}"[:9] + f"{rng.getrandbits(32):08x}-0000-4000-8000-{rng.getrandbits(48):012x}" for _ in range(rng.randint(1, 4))]
        entries = [self.entry(rng, i, urns) for i in range(n)]
        bundle = {"resourceType": "Bundle", "type": btype, "entry": entries}
        if rng.random() < 0.1:
            bundle["entry"] = rng.choice([{}, "x", None, [[]]])
        if rng.random() < 0.05:
            # A Bundle inside a Bundle entry.
            bundle["entry"] = [{"fullUrl": urns[0], "resource": {"resourceType": "Bundle", "type": "transaction", "entry": entries[:3]},
                                "request": {"method": "POST", "url": "Bundle"}}]
        body = self.dumps(bundle)
        headers = {"Content-Type": FHIR_JSON, **self.write_headers(rng)}
        kind = f"{btype}"
        if rng.random() < 0.1:
            body = body[: rng.randrange(len(body) + 1)]
            kind += "+truncated"
        return Req(f"bundle/{kind}", "POST", "", headers=headers, body=body)

    def gen_operation(self, rng: random.Random) -> Req:
        k = rng.randrange(6)
        t = self.cap.pick(rng)
        if k <= 1:
            body, ctype, kind = self.hostile_body(rng, t["type"], None)
            pairs = [("profile", rng.choice(["http://hl7.org/fhir/StructureDefinition/vitalsigns", "http://nope", long_text(rng, 100, 3000), "", "%00"]))] if rng.random() < 0.4 else []
            path = f"/{t['type']}/$validate" if rng.random() < 0.7 else f"/{t['type']}/{self.own_id(rng, t['type'])}/$validate"
            if rng.random() < 0.3:
                body = self.dumps({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": json.loads(body) if body[:1] == b"{" and self.safe_json(body) else {"resourceType": "Nope"}},
                                                                              {"name": "mode", "valueCode": rng.choice(["create", "update", "delete", "x"])},
                                                                              {"name": "profile", "valueUri": rng.choice(["http://nope", ""])}]})
                ctype = FHIR_JSON
            return Req(f"validate/{kind}", "POST", path, query(pairs), {"Content-Type": ctype}, body)
        if k == 2:
            pid = self.anchor_id("Patient") if rng.random() < 0.6 else self.hostile_id(rng)
            pairs = [(rng.choice(["_since", "_type", "_count", "start", "end", "_elements", "_format", "_summary", "_cursor", "_offset"]),
                      rng.choice(DATES + NUMBERS + ["Observation,Nope", "*", "", long_text(rng, 100, 3000), "xml"])) for _ in range(rng.randint(0, 4))]
            return Req("everything", rng.choice(["GET", "GET", "POST"]), f"/Patient/{pid}/$everything", query(pairs))
        if k == 3:
            # $export kick-off with hostile parameters; an accepted job is cancelled right away
            # (run() deletes a returned Content-Location).
            level = rng.choice(["", "/Patient", f"/Group/{self.own_id(rng, 'Group')}"])
            pairs = [(rng.choice(["_type", "_since", "_outputFormat", "_typeFilter", "_elements", "patient", "includeAssociatedData", "_x"]),
                      rng.choice(["Patient", "Nope", "Patient,Observation", "Patient?name=" + q(long_text(rng, 10, 50)), "Observation?code:x=y",
                                  "2020-02-30", "ndjson", "application/fhir+ndjson", "x", "", long_text(rng, 100, 3000)] + DATES[:5])) for _ in range(rng.randint(0, 4))]
            headers = {"Prefer": rng.choice(["respond-async", "respond-async", "", "handling=lenient, respond-async"]), "Accept": rng.choice([FHIR_JSON, "text/html"])}
            return Req("export-kickoff", rng.choice(["GET", "GET", "POST"]), f"{level}/$export", query(pairs), headers)
        if k == 4:
            job = rng.choice(["x", "00000000000000000000000000000000", "00000000-0000-0000-0000-000000000000", "%2e%2e", q(long_text(rng, 10, 300)), "%00"])
            if rng.random() < 0.5:
                return Req("export-file", "GET", f"/$export-file/{job}/{rng.choice(['Patient.ndjson', '..%2F..%2Fetc%2Fpasswd', '%2e%2e', q(long_text(rng, 10, 300)), ''])}")
            return Req("export-status", rng.choice(["GET", "DELETE"]), f"/$export-status/{job}")
        return Req("operation-unknown", rng.choice(["GET", "POST"]), rng.choice(["/$meta", f"/{t['type']}/$nope", "/$everything", f"/{t['type']}/$everything", "/$validate", "/$" + "x" * 3000]))

    @staticmethod
    def safe_json(body: bytes) -> bool:
        try:
            json.loads(body)
            return True
        except Exception:
            return False

    def gen_path(self, rng: random.Random) -> Req:
        """Odd paths and methods on any type."""
        t = self.cap.pick(rng)
        path = rng.choice([
            "/" + "x" * rng.choice([3000, 9000]), f"/{t['type']}/" + "/".join(["a"] * 200), "//" + t["type"], f"/{t['type']}//",
            f"/{t['type'].lower()}", "/%2e%2e/%2e%2e/etc/passwd", "/../../metadata", f"/{q(t['type'] + chr(0))}", "/%FF%FE", "/Nope",
            f"/{t['type']}/_history/x/y", f"/{t['type']}/_search/x", "/metadata/x", "/.well-known/x", "/" + q(long_text(rng, 100, 400)),
            f"/{t['type']};a=b", f"/{t['type']}%3Fname=x", f"/{t['type']}/%3F", "/_history/_history", "/$export/x", "/_search",
        ])
        method = rng.choice(["GET", "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO", "PRI", "get"])
        body = None if method in ("GET", "HEAD") else rng.choice([b"", b"{}", b"x" * 10000])
        return Req("path", method, path, headers={"Content-Type": FHIR_JSON} if body else {}, body=body)

    def gen_headers(self, rng: random.Random) -> Req:
        """Odd headers on an ordinary read or search."""
        t = self.cap.pick(rng, "search-type")
        headers = {}
        k = rng.randrange(9)
        auth = True
        if k == 0:
            headers["X-Huge"] = "x" * rng.choice([8_000, 16_000, 64_000, 200_000])
        elif k == 1:
            for i in range(rng.choice([50, 101, 500])):
                headers[f"X-H{i}"] = "v"
        elif k == 2:
            headers["Accept"] = rng.choice(["application/fhir+json;q=NaN", "application/fhir+xml;q=1e999999", ",,,", ";", "text/*;q=0.5, */*;q=-1", "x" * 10000, "application/fhir+xml; charset=utf-16"])
        elif k == 3:
            headers["Authorization"] = rng.choice(["Bearer", "Bearer ", "Bearer " + "x" * 10000, "Bearer a.b.c", "Basic " + base64.b64encode(b"a:b").decode(),
                                                   "Bearer " + self.token + "x", "bearer " + self.token, "Bearer " + self.token[:-5], "Negotiate x", "Bearer e30.e30."])
            auth = False
        elif k == 4:
            headers["Host"] = rng.choice(["", "x" * 3000, "evil.example", "127.0.0.1:99999", "[::1", "a b"])
        elif k == 5:
            headers["X-Forwarded-Host"] = rng.choice(["evil.example", "x" * 3000])
            headers["X-Forwarded-Proto"] = rng.choice(["https", "gopher", ""])
        elif k == 6:
            headers["Content-Type"] = "application/fhir+json"
            headers["Content-Encoding"] = rng.choice(["gzip", "br", "x"])
        elif k == 7:
            headers["If-Modified-Since"] = rng.choice(["Mon, 32 Foo 2020 25:61:61 GMT", "0", "x" * 3000, "Thu, 01 Jan 1970 00:00:00 GMT"])
            headers["If-None-Match"] = rng.choice(['W/"1"', "*", 'W/"' + "9" * 40 + '"', "x"])
        else:
            headers["Prefer"] = rng.choice(["return=" + "x" * 5000, "handling=strict; handling=lenient", "respond-async", ",,,"])
        path = f"/{t['type']}" if rng.random() < 0.5 else f"/{t['type']}/{self.own_id(rng, t['type'])}"
        return Req(f"headers/{k}", "GET", path, headers=headers, auth=auth)

    def extreme_resource(self, rng: random.Random, rtype: str) -> dict:
        """A resource that is valid but extreme: edge dates, many or long values, odd Unicode,
        decimals at the edge of what is stored, absolute references to this server."""
        body = self.anchor(rtype)
        body["id"] = f"{self.prefix}-v{rng.randrange(50)}"
        ref = rng.choice([f"{self.base}/Patient/{self.anchor_id('Patient')}", f"Patient/{self.anchor_id('Patient')}", "Patient/" + "p" * 64,
                          "http://other.example/fhir/Patient/1", f"Patient/{self.anchor_id('Patient')}/_history/1", "#contained1"])
        date = rng.choice(["0001-01-01", "9999-12-31", "0001", "9999", "1900-02-28T23:59:59.999+14:00", "9999-12-31T23:59:59.999-14:00",
                           "2024-02-29T00:00:00Z", "1970-01-01T00:00:00.000000001Z", "2000-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z"])
        name = rng.choice(["Ångström", "İstanbul", "ǅab", "ﬀ", "á", "中文", "😀" * 10, "O'Brien", "x" * 3000,
                           long_text(rng, 3000, 4000).replace("\\", ""), "%_\\", "Smith, Jr.", "a|b$c,d"])
        number = rng.choice([0, -0.0, 1e-20, 1e20, 123456789.123456789, -1, 2**53, 0.1 + 0.2, 1.5])
        if rtype == "Patient":
            # Many copies only of short values: a resource of megabytes is what --max-body-bytes
            # bounds, not what this generator is after.
            many = rng.choice([1, 2, 50]) if len(name) < 100 else 1
            body.update(name=[{"family": name, "given": [name[:50]] * rng.choice([1, 20])}] * many,
                        birthDate=date[:10] if len(date) >= 10 else date, telecom=[{"system": "phone", "value": name[:40]}],
                        identifier=[{"system": rng.choice([TAG_SYSTEM, "urn:oid:1.2.3", "x" * 300]), "value": name[:60] or "x"}] * rng.choice([1, 100]))
        elif rtype == "Observation":
            body.update(effectiveDateTime=date, subject={"reference": ref}, issued=rng.choice(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z"]),
                        valueQuantity={"value": number, "unit": name[:20], "system": "http://unitsofmeasure.org", "code": rng.choice(["mg", "mm[Hg]", "%", "{x}"])},
                        component=[{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": number}}] * rng.choice([1, 200]))
            if ref == "#contained1":
                body["contained"] = [{"resourceType": "Patient", "id": "contained1", "name": [{"family": name[:100]}]}]
        elif rtype == "Encounter":
            body.update(period={"start": date if rng.random() < 0.7 else rng.choice(DATES), "end": rng.choice([date, "9999", "0001"] + DATES[-4:])},
                        subject={"reference": ref})
        elif rtype == "Condition":
            body.update(onsetDateTime=date, recordedDate=date, note=[{"text": name}], subject={"reference": ref})
        elif rtype == "Organization":
            body.update(name=name, alias=[name[:30]] * rng.choice([1, 300]), partOf={"reference": f"Organization/{self.anchor_id('Organization')}"})
        else:
            body.setdefault("extension", []).append({"url": "http://example.org/x", "valueString": name})
        body["meta"] = {"tag": [dict(self.tag)], "profile": [rng.choice(["http://hl7.org/fhir/StructureDefinition/vitalsigns", "http://example.org/nope"])]} \
            if rng.random() < 0.2 else self.meta()
        return body

    def gen_extreme(self, rng: random.Random) -> Req:
        """PUT a valid but extreme resource at one of the campaign's ids (update-as-create), so
        later searches, sorts, includes, paging and XML rendering meet it."""
        rtype = rng.choice([t for t in ANCHOR_TYPES if self.cap.by_name(t)])
        body = self.extreme_resource(rng, rtype)
        fmt = rng.random() < 0.3
        return Req("extreme", "PUT", f"/{rtype}/{body['id']}", query([("_format", "xml")]) if fmt else "",
                   {"Content-Type": FHIR_JSON, "Prefer": rng.choice(["return=representation", "return=minimal", "return=OperationOutcome"])},
                   self.dumps(body))

    def gen_paging(self, rng: random.Random) -> Req:
        """A search sorted and paged over the campaign's resources, following `next` links."""
        rtype = rng.choice([t for t in ANCHOR_TYPES if self.cap.by_name(t)])
        t = self.cap.by_name(rtype)
        names = [n for n, ty in t["params"] if ty in ("date", "string", "token", "quantity", "number", "reference", "uri")]
        pairs = [("_tag", f"{TAG_SYSTEM}|{self.prefix}")] if rng.random() < 0.7 else []
        pairs.append(("_sort", ",".join(rng.choice(["", "-"]) + rng.choice(names + ["_lastUpdated", "_id"]) for _ in range(rng.randint(1, 3)))))
        pairs.append(("_count", str(rng.choice([1, 2, 3, 7]))))
        for _ in range(rng.randint(0, 3)):
            k = rng.randrange(5)
            if k == 0:
                pairs.append(("_include", rng.choice([f"{rtype}:{n}" for n, ty in t["params"] if ty == "reference"] or ["*"])))
            elif k == 1:
                pairs.append(("_revinclude", rng.choice(["Observation:subject", "Encounter:subject", "Condition:subject", "Basic:subject", "Provenance:target"])))
            elif k == 2:
                pairs.append(("_format", "xml"))
            elif k == 3:
                pairs.append((rng.choice(["_summary", "_elements", "_total"]), rng.choice(["true", "text", "data", "count", "accurate", "estimate", "status,subject", "id"])))
            else:
                pairs.append((rng.choice(names or ["_id"]), typed_value(rng, rng.choice(["date", "string", "token"]))))
        return Req("paging", "GET", f"/{rtype}", query(pairs), follow=rng.choice([2, 5, 10]))

    GENERATORS = [
        ("extreme", 6), ("paging", 6),
        ("search", 22), ("search_system", 4), ("compartment", 4), ("read", 8), ("history", 4), ("create", 14), ("update", 8),
        ("patch", 8), ("delete", 3), ("bundle", 12), ("operation", 5), ("path", 4), ("headers", 4),
    ]

    # Interactions of the CapabilityStatement → the generator that exercises them.
    INTERACTION_GENERATORS = {"read": "read", "vread": "read", "update": "update", "patch": "patch", "delete": "delete",
                              "history-instance": "history", "history-type": "history", "create": "create", "search-type": "search"}

    def systematic(self) -> tuple[list, list]:
        """Every (type, search parameter) and every (type, interaction) pair the
        CapabilityStatement lists, in its order."""
        if not hasattr(self, "_systematic"):
            params = [(t, p) for t in self.cap.types if "search-type" in t["interactions"] for p in t["params"]]
            inter = [(t, self.INTERACTION_GENERATORS[i]) for t in self.cap.types for i in sorted(t["interactions"]) if i in self.INTERACTION_GENERATORS]
            inter += [(t, "operation") for t in self.cap.types if t["operations"]]
            self._systematic = (params, inter)
        return self._systematic

    def request(self, index: int) -> Req:
        """Request `index`: every 4th one a hostile search on the next (type, parameter) pair of
        the CapabilityStatement, every 4th (offset 1) the next (type, interaction) pair, the rest
        drawn by weight from all generators — so a long enough run reaches every type,
        interaction and search parameter listed, and a short one a wide sample."""
        rng = random.Random(f"{self.seed}/{index}")
        params, inter = self.systematic()
        self.cap.forced, self.cap.forced_param = None, None
        if index % 4 == 0 and params:
            self.cap.forced, self.cap.forced_param = params[(index // 4 + self.seed * 7919) % len(params)]
            name = "search"
        elif index % 4 == 1 and inter:
            self.cap.forced, name = inter[(index // 4 + self.seed * 7919) % len(inter)]
        else:
            names = [n for n, _ in self.GENERATORS]
            weights = [w for _, w in self.GENERATORS]
            name = rng.choices(names, weights)[0]
        try:
            return getattr(self, f"gen_{name}")(rng)
        finally:
            self.cap.forced, self.cap.forced_param = None, None

    # -- sending ------------------------------------------------------------------------------

    def send(self, req: Req, timeout: float) -> tuple[int | None, float, str]:
        """(status or None when no answer, seconds, short response text). A connection the
        server closed before answering is retried once on a fresh connection: a keep-alive
        connection the server closed after the previous answer (it need not read a refused
        body) is no finding; a request that loses its answer twice is."""
        status, elapsed, text = self.send_once(req, timeout)
        if status is None and "timeout" not in text:
            self.session.close()
            self.session = requests.Session()
            self.retried += 1
            status, elapsed, text = self.send_once(req, timeout)
        return status, elapsed, text

    def send_once(self, req: Req, timeout: float) -> tuple[int | None, float, str]:
        url = self.base + req.path + ("?" + req.query if req.query else "")
        headers = dict(req.headers)
        if req.auth:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        headers.setdefault("Accept", FHIR_JSON)
        # Header values go out as their UTF-8 bytes (http.client would refuse non-Latin-1 text).
        # A header value may not start with white space nor hold a line break (the client
        # refuses those; hyper would too): they are trimmed and replaced by spaces.
        headers = {k: v.lstrip().replace("\r", " ").replace("\n", " ") for k, v in headers.items()}
        headers = {k: (v.encode("utf-8") if not v.isascii() else v) for k, v in headers.items()}
        try:
            prepared = requests.Request(req.method, self.base + "/", headers=headers, data=req.body).prepare()
        except (ValueError, requests.RequestException) as e:
            return -1, 0.0, f"unsendable: {type(e).__name__}: {str(e)[:100]}"
        prepared.url = url  # exactly as built: requests would re-quote it
        start = time.monotonic()
        try:
            r = self.session.send(prepared, timeout=(10, timeout), allow_redirects=False)
            elapsed = time.monotonic() - start
            text = r.content[:600].decode("utf-8", "replace")
            page = 0
            while req.follow and page < req.follow and r.status_code == 200:
                try:
                    nxt = next((l["url"] for l in r.json().get("link", []) if l.get("relation") == "next"), None)
                except Exception:  # noqa: BLE001
                    nxt = None
                if not nxt:
                    break
                page += 1
                t0 = time.monotonic()
                r = self.session.get(nxt, headers={k: v for k, v in headers.items() if k in ("Authorization", "Accept")},
                                     timeout=(10, timeout), allow_redirects=False)
                elapsed = max(elapsed, time.monotonic() - t0)
                text = f"(next page {page}: {excerpt(nxt, 200)}) " + r.content[:600].decode("utf-8", "replace")
            if r.status_code == 202 and "Content-Location" in r.headers and req.generator == "export-kickoff":
                try:
                    self.session.delete(r.headers["Content-Location"], headers=self.headers(), timeout=30)
                except requests.RequestException:
                    pass
            return r.status_code, elapsed, text
        except requests.Timeout:
            return None, time.monotonic() - start, "timeout"
        except requests.RequestException as e:
            return None, time.monotonic() - start, f"{type(e).__name__}: {str(e)[:200]}"
        except (ValueError, UnicodeError) as e:
            # The HTTP client itself refused to send it (e.g. a header with a line break).
            return -1, 0.0, f"unsendable: {type(e).__name__}: {str(e)[:100]}"

    def alive(self) -> bool:
        for attempt in range(3):
            try:
                r = self.session.get(self.base + "/metadata", headers={"Accept": FHIR_JSON}, timeout=10)
                if r.status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(5)
        return False


def diagnostics(text: str) -> str:
    """The diagnostics of an OperationOutcome answer (JSON or XML), else the text's start."""
    try:
        issues = json.loads(text).get("issue", [])
        return " | ".join(str(i.get("diagnostics", ""))[:200] for i in issues)[:400]
    except Exception:  # noqa: BLE001
        pass
    found = [m for m in __import__("re").findall(r'<diagnostics value="([^"]*)"', text)]
    return " | ".join(found)[:400] if found else excerpt(text, 200)


def run(args) -> int:
    base = args.base.rstrip("/")
    try:
        meta = requests.get(base + "/metadata", headers={"Accept": FHIR_JSON}, timeout=30)
        meta.raise_for_status()
        cap = Capability.parse(meta.json())
    except Exception as e:  # noqa: BLE001
        print(f"hostile_campaign: cannot read {base}/metadata: {e}", file=sys.stderr)
        return 2
    campaign = Campaign(base, args.token, args.seed, args.hang_seconds, cap)
    if args.show is not None:
        for i in args.show:
            req = campaign.request(i)
            d = describe(req)
            d["index"] = i
            print(json.dumps(d, indent=2, ensure_ascii=False))
            if args.dump:
                with open(f"{args.dump}.{i}.body", "wb") as f:
                    f.write(req.body or b"")
                with open(f"{args.dump}.{i}.url", "w") as f:
                    f.write(f"{req.method} {base}{req.path}{'?' + req.query if req.query else ''}\n")
        return 0
    problems = campaign.setup()
    report = {
        "seed": args.seed, "base": base, "duration_s": args.duration, "hang_seconds": args.hang_seconds,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "setup_problems": problems,
        "types": len(cap.types), "search_params": sum(len(t["params"]) for t in cap.types),
        "requests": 0, "by_status": {}, "by_generator": {}, "failures": [], "slowest": [], "alive": True,
    }
    indices = args.replay if args.replay is not None else None
    deadline = time.monotonic() + args.duration
    timeout = args.hang_seconds + 20
    i = args.start
    last_check = time.monotonic()
    since_check = 0
    slow = []
    while True:
        if indices is not None:
            if not indices:
                break
            i = indices.pop(0)
        elif time.monotonic() >= deadline or (args.max_requests and report["requests"] >= args.max_requests):
            break
        req = campaign.request(i)
        if any(x in req.generator for x in args.exclude):
            report["skipped"] = report.get("skipped", 0) + 1
            if indices is None:
                i += 1
            continue
        status, elapsed, text = campaign.send(req, timeout)
        report["requests"] += 1
        key = "unsendable" if status == -1 else str(status) if status is not None else "no-answer"
        report["by_status"][key] = report["by_status"].get(key, 0) + 1
        g = report["by_generator"].setdefault(req.generator.split("/")[0], {"requests": 0, "failures": 0})
        g["requests"] += 1
        failure = None
        if status is None:
            failure = "hang" if "timeout" in text else "dropped"
        elif status >= 500:
            failure = "5xx"
        elif elapsed > args.hang_seconds:
            failure = "hang"
        slow.append((elapsed, i, req.generator, status))
        if failure:
            g["failures"] += 1
            entry = {"kind": failure, "index": i, "status": status, "seconds": round(elapsed, 3), **describe(req),
                     "response": diagnostics(text), "replay": f"--seed {args.seed} --replay {i}"}
            report["failures"].append(entry)
            if not args.quiet:
                print(f"[{failure}] #{i} {req.method} {entry['url'][:160]} -> {status} in {elapsed:.1f}s ({req.generator}) {entry['response'][:160]}", flush=True)
        if args.verbose:
            print(f"#{i} {req.generator} {req.method} {describe(req)['url'][:100]} -> {status} {elapsed:.2f}s", flush=True)
        since_check += 1
        if failure in ("dropped", "hang") or since_check >= 50 or time.monotonic() - last_check > 20:
            since_check, last_check = 0, time.monotonic()
            if not campaign.alive():
                report["failures"].append({"kind": "dead", "index": i, **describe(req), "response": "the server stopped answering GET /metadata",
                                           "replay": f"--seed {args.seed} --replay {i}"})
                print(f"[dead] the server stopped answering GET /metadata after request #{i} ({req.generator})", flush=True)
                if not args.on_dead:
                    report["alive"] = False
                    break
                # Restart it and go on, to look past this finding (it stays recorded).
                import subprocess
                subprocess.run(args.on_dead, shell=True, timeout=300)
                report["restarts"] = report.get("restarts", 0) + 1
                if not campaign.alive():
                    report["alive"] = False
                    break
        if indices is None:
            i += 1
    if report["alive"] and not campaign.alive():
        report["alive"] = False
        report["failures"].append({"kind": "dead", "index": i, "replay": "(at the end of the run)"})
    slow.sort(reverse=True)
    report["slowest"] = [{"seconds": round(s, 3), "index": idx, "generator": gname, "status": st} for s, idx, gname, st in slow[:10]]
    report["retried_connections"] = campaign.retried
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    groups = {}
    for f in report["failures"]:
        k = (f["kind"], f.get("generator", ""), f.get("method", ""), f.get("status"), (f.get("response") or "")[:80])
        groups.setdefault(k, []).append(f.get("index"))
    report["failure_groups"] = [{"kind": k[0], "generator": k[1], "method": k[2], "status": k[3], "response": k[4], "count": len(v), "indices": v[:20]}
                                for k, v in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
    print(f"hostile_campaign: seed {args.seed}, {report['requests']} requests in {args.duration if indices is None else 'replay'} s, "
          f"statuses {dict(sorted(report['by_status'].items()))}, {len(report['failures'])} failures "
          f"({len(report['failure_groups'])} kinds), server {'alive' if report['alive'] else 'NOT ANSWERING'}")
    for grp in report["failure_groups"]:
        print(f"  {grp['count']:4d} x {grp['kind']} {grp['status']} {grp['generator']} {grp['method']}: {grp['response'][:100]} (e.g. #{grp['indices'][0]})")
    return 1 if report["failures"] else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="FHIR base URL, e.g. http://127.0.0.1:8080/fhir")
    p.add_argument("--token", required=True, help="bearer token with system/*.* (ironfhir admin token --scope 'system/*.*')")
    p.add_argument("--duration", type=float, default=60, help="seconds to run (default 60)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--hang-seconds", type=float, default=10, help="a request slower than this is a hang (default 10)")
    p.add_argument("--max-requests", type=int, default=0, help="stop after this many requests (0: no limit)")
    p.add_argument("--start", type=int, default=0, help="index of the first request (default 0)")
    p.add_argument("--replay", type=lambda s: [int(x) for x in s.split(",")], help="send only these request indices (comma-separated)")
    p.add_argument("--show", type=lambda s: [int(x) for x in s.split(",")], help="print these requests (nothing is sent but GET /metadata)")
    p.add_argument("--dump", help="with --show: write each request's body and URL to <DUMP>.<i>.body / .url")
    p.add_argument("--exclude", action="append", default=[], metavar="TEXT",
                   help="skip requests whose generator name contains TEXT (repeatable; to look past a known finding)")
    p.add_argument("--on-dead", metavar="COMMAND",
                   help="shell command that restarts the server when it stopped answering; the campaign then goes on "
                        "(the death stays a failure). Without it the campaign ends there")
    p.add_argument("--quiet", action="store_true", help="no line per failure")
    p.add_argument("--verbose", action="store_true", help="a line per request")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
