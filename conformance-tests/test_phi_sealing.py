"""PHI sealing from the outside: a plain pg_dump of the server's database holds none of the
names, addresses, telecoms, identifier values, birth dates, narratives, notes or dosage texts
of the patients written through the API, yet search on the protected parameters (through
blind indexes) still finds each patient and a read returns the complete resource. Searches a
blind index cannot answer are refused with 400. `ironfhir keys rotate` re-encrypts every row
under a new data key while the server keeps serving reads, updates and searches.
Synthetic data only."""

from __future__ import annotations

import base64
import glob
import re
import secrets
import shutil
import subprocess
import threading
import time
import urllib.parse
import uuid
from datetime import date, timedelta

from support import REPRESENTATION, TimeoutSession, assert_outcome, create, entry_ids, search

MRN = "urn:example:mrn"
XHTML = "http://www.w3.org/1999/xhtml"


# ---------------------------------------------------------------- helpers

def marker(n: int = 14) -> str:
    """n letters from a fresh uuid, mapped from hex digits to g..v: unguessable, and never a
    run of hex digits, so it cannot occur by chance in the hex text of a bytea column."""
    return uuid.uuid4().hex.translate(str.maketrans("0123456789abcdef", "ghijklmnopqrstuv"))[:n]


def digits(n: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(n))


def distinct_dates(count: int, first_year: int, last_year: int) -> list[str]:
    """`count` distinct random dates between 1 Jan first_year and 31 Dec last_year (years no
    other test uses, so each birth date belongs to exactly one patient)."""
    lo, hi = date(first_year, 1, 1), date(last_year, 12, 31)
    days = secrets.SystemRandom().sample(range((hi - lo).days + 1), count)
    return [(lo + timedelta(days=d)).isoformat() for d in days]


def pg_dump_binary() -> str:
    found = shutil.which("pg_dump")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"),
                        key=lambda p: int(re.search(r"/postgresql/(\d+)/", p).group(1)))
    assert candidates, "pg_dump not found on PATH nor in /usr/lib/postgresql/*/bin"
    return candidates[-1]


def dump_database(server) -> str:
    """A plain-format, data-only pg_dump of the suite's database, as text."""
    cmd = [pg_dump_binary(), "--data-only", "--format=plain", "--no-owner",
           "-d", server.env["DATABASE_URL"]]
    out = subprocess.run(cmd, env=server.env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"pg_dump exited {out.returncode}: {out.stderr[-2000:]}"
    assert "COPY public.resource " in out.stdout, "the dump holds the resource table"
    return out.stdout


def psql_value(server, sql: str) -> str:
    out = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                          "-d", server.env["DATABASE_URL"], "-c", sql],
                         env=server.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def searchable_text(dump: str) -> str:
    """The dump as a lower-case haystack: the text itself, the text URL-decoded (a query
    string stored anywhere), and every base64 AuditEvent.entity.query decoded (the audit
    trail records queries that way), so a value stored in any of those forms is found."""
    decoded = []
    for q in re.findall(r'"query":\s*"([A-Za-z0-9+/]+=*)"', dump):
        try:
            decoded.append(base64.b64decode(q).decode("utf-8", errors="replace"))
        except ValueError:
            continue
    extra = "\n".join(decoded)
    return "\n".join([dump, urllib.parse.unquote_plus(dump), extra,
                      urllib.parse.unquote_plus(extra)]).lower()


def leaked(haystack: str, needles: dict[str, str]) -> list[str]:
    """Names (e.g. 'patient 3 family') of the needles that occur in the lower-case haystack."""
    return sorted(what for what, value in needles.items() if value.lower() in haystack)


def issues_text(resp) -> str:
    oo = resp.json()
    return " ".join(str(i.get("diagnostics", "")) + " " + str(i.get("details", {}).get("text", ""))
                    for i in oo.get("issue", []))


def ironfhir(server, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Runs the suite's ironfhir binary with the server's configuration (--data-dir, and
    DATABASE_URL in the environment; the key-encryption key is <data-dir>/kek.key)."""
    cmd = [str(server.binary), *args, "--data-dir", str(server.data_dir)]
    return subprocess.run(cmd, env=server.env, capture_output=True, text=True, timeout=timeout)


def key_status(server) -> list[dict]:
    out = ironfhir(server, "keys", "status", timeout=60)
    assert out.returncode == 0, f"keys status exited {out.returncode}: {out.stderr}"
    keys = []
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        m = re.fullmatch(r"(\S+)\t(data|blind)\t(active|retired)\tkek (\S+)\t(\d+) current rows\t(\d+) history rows\t(\d+) audit rows",
                         line)
        assert m, f"keys status line not in the documented format: {line!r}"
        keys.append({"id": m.group(1), "purpose": m.group(2), "state": m.group(3), "kek": m.group(4),
                     "current": int(m.group(5)), "history": int(m.group(6)), "audit": int(m.group(7))})
    return keys


# ---------------------------------------------------------------- 1. dump vs. search

def synthetic_patient(birth: str) -> tuple[dict, dict[str, str]]:
    """A Patient with a fresh marker in every protected element, and the markers by name."""
    m = {k: marker() for k in ("family", "given", "line", "city", "postal", "email", "mrn",
                               "narrative")}
    family = m["family"].capitalize()
    given = "É" + m["given"]  # accent-folded by search: 'e' + the marker
    phone = f"+44-20-{digits(4)}-{digits(4)}"
    body = {
        "resourceType": "Patient",
        "text": {"status": "generated",
                 "div": f'<div xmlns="{XHTML}">Synthetic patient {m["narrative"]}</div>'},
        "identifier": [{"system": MRN, "value": "MRN-" + m["mrn"].upper()}],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "telecom": [{"system": "phone", "value": phone, "use": "home"},
                    {"system": "email", "value": f"{m['email']}@example.org"}],
        "gender": "other",
        "birthDate": birth,
        "address": [{"use": "home", "line": [f"{m['line'].capitalize()} Street 7"],
                     "city": m["city"].capitalize(), "postalCode": m["postal"].upper(),
                     "country": "GB"}],
    }
    needles = {**m, "phone": phone, "phone digits": re.sub(r"\D", "", phone), "birth date": birth}
    return body, needles


def test_pg_dump_holds_no_phi_while_search_still_finds_each_patient(server, base, http):
    births = distinct_dates(8, 1850, 1874)
    cases = []  # (patient as stored, observation, medication request, needles)
    for birth in births:
        body, needles = synthetic_patient(birth)
        pat = create(http, base, body)
        note, dosage = marker(), marker()
        obs = create(http, base, {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": f"Patient/{pat['id']}"},
            "effectiveDateTime": "2020-01-01T10:00:00Z",
            "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org",
                              "code": "/min"},
            "note": [{"text": f"Synthetic note {note}"}],
        })
        med = create(http, base, {
            "resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                      "code": "197361", "display": "Amlodipine 5 MG Oral Tablet"}]},
            "subject": {"reference": f"Patient/{pat['id']}"},
            "dosageInstruction": [{"text": f"Take one tablet {dosage} daily"}],
        })
        needles.update({"note": note, "dosage text": dosage})
        cases.append((body, pat, obs, med, needles))
    all_needles = {f"patient {i} {what}": value
                   for i, (*_, needles) in enumerate(cases) for what, value in needles.items()}
    # Every exact value as written, too (family and given names with their capital/accent).
    for i, (body, *_) in enumerate(cases):
        all_needles[f"patient {i} family name"] = body["name"][0]["family"]
        all_needles[f"patient {i} given name"] = body["name"][0]["given"][0]
        all_needles[f"patient {i} identifier value"] = body["identifier"][0]["value"]
        all_needles[f"patient {i} email"] = body["telecom"][1]["value"]
        all_needles[f"patient {i} narrative"] = body["text"]["div"]

    ids = [pat["id"] for _, pat, *_ in cases]
    id_list = ", ".join(f"'{i}'" for i in ids)
    assert psql_value(server, f"SELECT count(*) FROM resource WHERE resource_type = 'Patient' "
                              f"AND id IN ({id_list}) AND sealed IS NOT NULL AND key_id IS NOT NULL") == "8", \
        "each patient's protected elements are stored sealed, with their key id"

    dump = dump_database(server)
    for pid in ids:
        assert pid in dump, f"the dump holds Patient/{pid} (its id is not PHI)"
    found = leaked(searchable_text(dump), all_needles)
    assert found == [], f"{len(found)} protected values are in the database dump: {found[:10]}"

    for body, pat, obs, med, needles in cases:
        pid = pat["id"]
        family = body["name"][0]["family"]
        mrn = body["identifier"][0]["value"]
        phone = body["telecom"][0]["value"]
        email = body["telecom"][1]["value"]

        def q(params, resource_type="Patient"):
            return entry_ids(search(http, base, resource_type, {**params, "_count": "500"}))

        # Name prefixes, any case (the first three letters may be shared by other patients).
        assert pid in q({"family": family[:3].upper()})
        assert pid in q({"name": family[:3].lower()})
        assert q({"family": family[:8].swapcase()}) == [pid]
        assert q({"name": family.upper()}) == [pid]
        assert q({"given": "e" + needles["given"][:6]}) == [pid], "given prefix, accent- and case-folded"
        assert q({"family:exact": family}) == [pid]
        assert q({"family:exact": family.lower()}) == [], ":exact is case-sensitive"
        assert q({"address-city": needles["city"].upper()}) == [pid]
        # Token equality.
        assert q({"identifier": f"{MRN}|{mrn}"}) == [pid]
        assert q({"identifier": mrn}) == [pid]
        assert q({"identifier": f"urn:example:other|{mrn}"}) == []
        assert q({"phone": phone}) == [pid]
        assert q({"email": email}) == [pid]
        # Birth date, equality at day precision.
        assert q({"birthdate": body["birthDate"]}) == [pid]

        got = http.get(f"{base}/Patient/{pid}")
        assert got.status_code == 200, got.text[:300]
        p = got.json()
        for element in ("identifier", "name", "telecom", "birthDate", "address", "gender", "active"):
            assert p.get(element) == body[element], f"Patient/{pid} {element}: {p.get(element)!r}"
        assert p.get("text", {}).get("div") == body["text"]["div"]
        o = http.get(f"{base}/Observation/{obs['id']}").json()
        assert o.get("note") == [{"text": f"Synthetic note {needles['note']}"}], o
        mr = http.get(f"{base}/MedicationRequest/{med['id']}").json()
        assert mr.get("dosageInstruction") == [{"text": f"Take one tablet {needles['dosage text']} daily"}], mr

    # The searches and reads above are in the audit trail now; it keeps their queries sealed.
    dump = dump_database(server)
    found = leaked(searchable_text(dump), all_needles)
    assert found == [], f"after the searches, {len(found)} protected values are in the dump: {found[:10]}"


# ---------------------------------------------------------------- 2. what a blind index cannot do

def test_protected_parameters_refuse_what_a_blind_index_cannot_answer(base, http):
    family = marker().capitalize()
    born = distinct_dates(1, 1875, 1899)[0]
    pat = create(http, base, {"resourceType": "Patient", "name": [{"family": family, "given": ["Testgiven"]}],
                              "identifier": [{"system": MRN, "value": "MRN-" + marker().upper()}],
                              "birthDate": born})

    refused = [
        {"family:contains": "x"},
        {"given:text": "x"},
        {"birthdate": "ge1970"},
        {"birthdate": "lt1970-01-01"},
        {"birthdate": "1970-01-01T10:00:00Z"},
        {"identifier:of-type": "a|b|c"},
    ]
    for params in refused:
        r = http.get(f"{base}/Patient", params=params)
        assert_outcome(r, 400)
        assert "blind index" in issues_text(r), f"{params}: {r.text[:500]}"

    # _sort on a protected parameter: refused when the client asks for strict handling.
    r = http.get(f"{base}/Patient", params={"family": family, "_sort": "family"},
                 headers={"Prefer": "handling=strict"})
    assert_outcome(r, 400)
    assert "family" in issues_text(r), r.text[:500]

    def q(params):
        return entry_ids(search(http, base, "Patient", params))

    assert q({"birthdate": f"eq{born}"}) == [pat["id"]]
    assert q({"birthdate": born}) == [pat["id"]]
    assert q({"family": family, "birthdate": born[:7]}) == [pat["id"]]
    assert q({"family": family, "birthdate": f"eq{born[:4]}"}) == [pat["id"]]
    assert q({"family": family, "birthdate": "1970-01-01"}) == []
    assert q({"family": family, "birthdate:missing": "false"}) == [pat["id"]]
    assert q({"family": family, "birthdate:missing": "true"}) == []


# ---------------------------------------------------------------- 3. key rotation under load

def test_rotation_under_load(server, base, http, token):
    prefix = marker(10).capitalize()
    patients = []
    for _ in range(30):
        body = {"resourceType": "Patient", "active": True,
                "name": [{"family": prefix + marker(6), "given": [marker(10).capitalize()]}],
                "telecom": [{"system": "phone", "value": f"+44-20-{digits(4)}-{digits(4)}"}],
                "gender": "female", "birthDate": distinct_dates(1, 1900, 1999)[0]}
        patients.append(create(http, base, body))
    names = {p["id"]: p["name"] for p in patients}
    gender = {p["id"]: p["gender"] for p in patients}  # last gender written, per patient

    before = key_status(server)
    old_active = [k["id"] for k in before if k["purpose"] == "data" and k["state"] == "active"]
    assert len(old_active) == 1, before

    stop = threading.Event()
    failures: list[str] = []
    iterations = [0, 0, 0]
    lock = threading.Lock()

    def fail(what: str) -> None:
        with lock:
            failures.append(what)

    def load(n: int) -> None:
        s = TimeoutSession()
        s.headers.update({"Authorization": f"Bearer {token}", **REPRESENTATION})
        mine = [p["id"] for p in patients[n::3]]  # no two threads update the same patient
        i = 0
        while not stop.is_set():
            pid = mine[i % len(mine)]
            i += 1
            try:
                r = s.get(f"{base}/Patient/{pid}")
                if r.status_code != 200:
                    fail(f"GET Patient/{pid}: {r.status_code} {r.text[:200]}")
                    continue
                p = r.json()
                if p.get("name") != names[pid]:
                    fail(f"GET Patient/{pid}: name {p.get('name')!r}, expected {names[pid]!r}")
                new_gender = "male" if p.get("gender") == "female" else "female"
                r = s.put(f"{base}/Patient/{pid}", json=dict(p, gender=new_gender))
                if not 200 <= r.status_code < 300:
                    fail(f"PUT Patient/{pid}: {r.status_code} {r.text[:200]}")
                    continue
                gender[pid] = new_gender
                r = s.get(f"{base}/Patient", params={"family": prefix, "_count": "50"})
                if r.status_code != 200:
                    fail(f"GET Patient?family={prefix}: {r.status_code} {r.text[:200]}")
                    continue
                found = len(r.json().get("entry", []))
                if found != len(patients):
                    fail(f"GET Patient?family={prefix}: {found} entries, expected {len(patients)}")
                    continue
            except Exception as e:  # a connection error or timeout is a failed request too
                fail(f"Patient/{pid}: {type(e).__name__}: {e}")
                continue
            with lock:
                iterations[n] += 1

    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        with lock:
            at_start = sum(iterations)
        rotated = ironfhir(server, "keys", "rotate", timeout=120)
        with lock:
            during = sum(iterations) - at_start
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "load threads stopped"

    assert rotated.returncode == 0, f"keys rotate exited {rotated.returncode}: {rotated.stderr[-2000:]}"
    m = re.search(r"new data key (\S+)", rotated.stdout)
    assert m, rotated.stdout
    new_key = m.group(1)
    assert f"every row is under data key {new_key}" in rotated.stdout, rotated.stdout
    assert failures == [], f"{len(failures)} requests failed during the rotation, e.g. {failures[:5]}"
    assert all(n >= 2 for n in iterations), f"every load thread ran: {iterations}"
    assert during > 0, "requests completed while keys rotate ran"

    after = key_status(server)
    data_keys = [k for k in after if k["purpose"] == "data"]
    active = [k for k in data_keys if k["state"] == "active"]
    assert [k["id"] for k in active] == [new_key], after
    assert new_key not in old_active
    retired = [k for k in data_keys if k["state"] == "retired"]
    assert old_active[0] in [k["id"] for k in retired], after
    for k in retired:
        assert (k["current"], k["history"], k["audit"]) == (0, 0, 0), f"retired data key still seals rows: {k}"
    assert active[0]["current"] > 0 and active[0]["history"] > 0, active

    for p in patients[::3]:
        r = http.get(f"{base}/Patient/{p['id']}")
        assert r.status_code == 200, r.text[:300]
        got = r.json()
        assert got["name"] == names[p["id"]]
        assert got["telecom"] == p["telecom"]
        assert got["birthDate"] == p["birthDate"]
        assert got["gender"] == gender[p["id"]]
    assert sorted(entry_ids(search(http, base, "Patient", {"family": prefix, "_count": "50"}))) == \
        sorted(p["id"] for p in patients)

    # The audit trail's chain covers the sealed parts of AuditEvents, which the rotation
    # re-encrypted: it still verifies.
    out = ironfhir(server, "audit", "verify", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "audit trail intact" in out.stdout
