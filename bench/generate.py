#!/usr/bin/env python3
"""Deterministic synthetic FHIR R4 data for the ironfhir load benchmark (stdlib only).

    python3 bench/generate.py --resources 20000 --seed 42 --out bench/out/data

Writes, under --out:
  <Type>.ndjson      one complete resource per line, compact JSON, with a client-assigned id,
                     i.e. the body of `PUT [base]/<Type>/<id>` (update-as-create). Each line
                     starts with {"resourceType":"<Type>","id":"<id>", so the wrk Lua script
                     builds the URL with a pattern match instead of a JSON parser.
  level-<n>.list     the <Type>.ndjson files to load in phase n: references only point to
                     resources of earlier phases, so a server that checked references would
                     accept every PUT (organisations and practitioners, then patients, then
                     encounters, then what refers to encounters).
  post-Observation.ndjson  Observation bodies without id, for `POST [base]/Observation`
                     (server-assigned ids); they refer to loaded patients and encounters.
  ids.tsv            <Type>\\t<id> of every loaded resource (read workload, pgbench id table).
  manifest.json      counts and bytes per type, seed, and the generator parameters.
  bundles/NNNNNN.json  (with --bundles SIZE) the same resources as transaction Bundles of about
                     SIZE entries, the way an EHR sends them: the first Bundles PUT the
                     organisations and practitioners; each later one POSTs whole patients
                     (the patient and everything of theirs) with urn:uuid fullUrls and
                     references, so the server assigns ids and rewrites references.

Why client-assigned ids: the dataset is one fixed graph (patients, their encounters and the
observations, conditions, prescriptions and appointments that point at both) whose references
must resolve however the load is scheduled over 16 connections; with ids fixed up front
every body is self-contained, runs are repeatable byte for byte, and the read workload knows
every id without asking the server. Server-assigned ids are measured too, with the POST bodies,
which only refer to resources already loaded.

Every resource is 1-3 KB: its narrative (text.div, as EHRs send) is filled to a size drawn
uniformly from 1,000-3,000 bytes. Names, addresses and numbers are invented (Testperson...).
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

LEVELS = {
    1: ["Organization", "Practitioner"],
    2: ["Patient"],
    3: ["Encounter"],
    4: ["Observation", "Condition", "MedicationRequest", "Appointment"],
}
# Average number of each resource per patient.
PER_PATIENT = {"Encounter": 2, "Observation": 4, "Condition": 1, "MedicationRequest": 1,
               "Appointment": 1}

GIVEN = ["Ada", "Bela", "Cora", "Dario", "Edda", "Femi", "Gita", "Hugo", "Ines", "Jonas", "Kira",
         "Lars", "Mira", "Nils", "Olga", "Pavel", "Rina", "Sami", "Tove", "Ugo", "Vera", "Wim"]
FAMILY_STEMS = ["Testperson", "Sampleton", "Fictivo", "Mockwell", "Dummer", "Placeholt",
                "Synthman", "Examplia"]
STREETS = ["Teststreet", "Sample Road", "Example Lane", "Mock Avenue", "Fiction Way"]
CITIES = ["Testcity", "Sampleville", "Exampleburg", "Mocktown"]
WORDS = ("patient reports mild discomfort follow up advised vitals stable no acute distress "
         "reviewed history discussed plan medication adherence good sleep appetite normal "
         "denies fever cough chest pain examination unremarkable counselled diet exercise").split()
VITALS = [  # LOINC code, display, unit, UCUM, low, high
    ("8867-4", "Heart rate", "beats/minute", "/min", 50, 110),
    ("8310-5", "Body temperature", "Cel", "Cel", 36.0, 38.5),
    ("9279-1", "Respiratory rate", "breaths/minute", "/min", 10, 24),
    ("29463-7", "Body weight", "kg", "kg", 45, 120),
    ("8302-2", "Body height", "cm", "cm", 150, 200),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", "mg/dL", 70, 180),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", "%", 90, 100),
]
CONDITIONS = [("44054006", "Diabetes mellitus type 2"), ("38341003", "Hypertensive disorder"),
              ("195967001", "Asthma"), ("35489007", "Depressive disorder"),
              ("40055000", "Chronic sinusitis"), ("55822004", "Hyperlipidemia")]
MEDICATIONS = [("860975", "metformin 500 MG Oral Tablet"), ("197361", "amlodipine 5 MG Oral Tablet"),
               ("895994", "fluticasone 0.11 MG/ACTUAT Inhaler"),
               ("312938", "sertraline 50 MG Oral Tablet"),
               ("617314", "atorvastatin 10 MG Oral Tablet")]
SPECIALTIES = [("419772000", "Family practice"), ("394579002", "Cardiology"),
               ("394583002", "Endocrinology"), ("394587001", "Psychiatry")]
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


class Gen:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    # ------------------------------------------------------------ primitives
    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def pick(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def when(self, days: int = 700) -> datetime:
        return EPOCH + timedelta(seconds=self.rng.randrange(days * 86400))

    def digits(self, n: int) -> str:
        return "".join(str(self.rng.randrange(10)) for _ in range(n))

    def name(self) -> dict:
        return {"use": "official", "family": self.pick(FAMILY_STEMS) + self.digits(3),
                "given": [self.pick(GIVEN), self.pick(GIVEN)], "prefix": [self.pick(["Mx", "Ms", "Mr"])]}

    def address(self) -> dict:
        return {"use": "home", "type": "both",
                "line": [f"{self.rng.randrange(1, 300)} {self.pick(STREETS)}"],
                "city": self.pick(CITIES), "postalCode": self.digits(5), "country": "XX"}

    def phone(self) -> dict:
        return {"system": "phone", "value": "+00 " + self.digits(4) + " " + self.digits(6),
                "use": self.pick(["home", "mobile", "work"])}

    def sentence(self, n: int) -> str:
        return " ".join(self.pick(WORDS) for _ in range(n)).capitalize() + "."

    def fill(self, res: dict) -> dict:
        """Give the resource a generated narrative so its JSON is 1,000-3,000 bytes."""
        target = self.rng.randint(1000, 3000)
        base = len(dumps(res)) + len(',"text":{"status":"generated","div":""}') + 60
        words = []
        while base + len(" ".join(words)) < target:
            words.append(self.pick(WORDS))
        # narrative.html txt-2: a narrative has some content, even when the resource alone is
        # long enough (no random pick here, so the data sets stay the same otherwise).
        div = f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{" ".join(words) or "Synthetic record."}</p></div>'
        out = {"resourceType": res["resourceType"]}
        if "id" in res:
            out["id"] = res["id"]
        out["text"] = {"status": "generated", "div": div}
        out.update({k: v for k, v in res.items() if k not in ("resourceType", "id")})
        return out

    # ------------------------------------------------------------ resources
    def organization(self, i: int) -> dict:
        return {"resourceType": "Organization", "id": self.uid(),
                "identifier": [{"system": "http://example.org/bench/org", "value": f"ORG-{i:05d}"}],
                "active": True,
                "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                      "code": "prov", "display": "Healthcare Provider"}]}],
                "name": f"Test Clinic {self.pick(CITIES)} {i}",
                "telecom": [self.phone()], "address": [self.address()]}

    def practitioner(self, i: int) -> dict:
        spec = self.pick(SPECIALTIES)
        return {"resourceType": "Practitioner", "id": self.uid(),
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi",
                                "value": "9" + self.digits(9)}],
                "active": True, "name": [self.name()], "telecom": [self.phone()],
                "gender": self.pick(["female", "male", "other"]),
                "qualification": [{"code": {"coding": [{"system": "http://snomed.info/sct",
                                                         "code": spec[0], "display": spec[1]}],
                                            "text": spec[1]}}]}

    def patient(self, i: int, org: str, gp: str) -> dict:
        born = date(1930, 1, 1) + timedelta(days=self.rng.randrange(90 * 365))
        return {"resourceType": "Patient", "id": self.uid(),
                "identifier": [{"use": "usual",
                                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                     "code": "MR"}]},
                                "system": "http://example.org/bench/mrn", "value": f"MRN{i:08d}"}],
                "active": True, "name": [self.name()], "telecom": [self.phone(), self.phone()],
                "gender": self.pick(["female", "male", "other", "unknown"]),
                "birthDate": born.isoformat(), "address": [self.address()],
                "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                              "code": self.pick(["M", "S", "D", "W", "U"])}]},
                "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]},
                                   "preferred": True}],
                "generalPractitioner": [{"reference": f"Practitioner/{gp}"}],
                "managingOrganization": {"reference": f"Organization/{org}"}}

    def encounter(self, pat: str, pract: str, org: str) -> dict:
        start = self.when()
        return {"resourceType": "Encounter", "id": self.uid(), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": self.pick(["AMB", "EMER", "IMP"])},
                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003",
                                      "display": "Encounter for check up"}]}],
                "subject": {"reference": f"Patient/{pat}"},
                "participant": [{"individual": {"reference": f"Practitioner/{pract}"}}],
                "period": {"start": iso(start), "end": iso(start + timedelta(minutes=30))},
                "reasonCode": [{"text": self.sentence(4)}],
                "serviceProvider": {"reference": f"Organization/{org}"}}

    def observation(self, pat: str, enc: str | None, with_id: bool = True) -> dict:
        code, display, unit, ucum, lo, hi = self.pick(VITALS)
        value = round(self.rng.uniform(lo, hi), 1)
        res = {"resourceType": "Observation"}
        if with_id:
            res["id"] = self.uid()
        res.update({
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}],
                     "text": display},
            "subject": {"reference": f"Patient/{pat}"},
            "effectiveDateTime": iso(self.when()),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                              "code": ucum}})
        if enc:
            res["encounter"] = {"reference": f"Encounter/{enc}"}
        return res

    def condition(self, pat: str, enc: str) -> dict:
        code, display = self.pick(CONDITIONS)
        return {"resourceType": "Condition", "id": self.uid(),
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                                   "code": "confirmed"}]},
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                          "code": "problem-list-item"}]}],
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code,
                                     "display": display}], "text": display},
                "subject": {"reference": f"Patient/{pat}"},
                "encounter": {"reference": f"Encounter/{enc}"},
                "onsetDateTime": iso(self.when()), "recordedDate": iso(self.when()),
                "note": [{"text": self.sentence(8)}]}

    def medication_request(self, pat: str, enc: str, pract: str) -> dict:
        code, display = self.pick(MEDICATIONS)
        return {"resourceType": "MedicationRequest", "id": self.uid(), "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                          "code": code, "display": display}],
                                              "text": display},
                "subject": {"reference": f"Patient/{pat}"},
                "encounter": {"reference": f"Encounter/{enc}"},
                "authoredOn": iso(self.when()),
                "requester": {"reference": f"Practitioner/{pract}"},
                "dosageInstruction": [{"sequence": 1, "text": "1 tablet daily",
                                       "timing": {"repeat": {"frequency": 1, "period": 1,
                                                             "periodUnit": "d"}},
                                       "doseAndRate": [{"doseQuantity": {
                                           "value": 1, "unit": "tablet",
                                           "system": "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm",
                                           "code": "TAB"}}]}],
                "dispenseRequest": {"numberOfRepeatsAllowed": self.rng.randrange(6),
                                    "quantity": {"value": 30, "unit": "tablet"},
                                    "expectedSupplyDuration": {"value": 30, "unit": "days",
                                                               "system": "http://unitsofmeasure.org",
                                                               "code": "d"}}}

    def appointment(self, pat: str, pract: str) -> dict:
        start = self.when(900)
        return {"resourceType": "Appointment", "id": self.uid(),
                "status": self.pick(["booked", "fulfilled", "cancelled", "noshow"]),
                "serviceType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/service-type",
                                             "code": "124", "display": "General Practice"}]}],
                "description": self.sentence(5),
                "start": iso(start), "end": iso(start + timedelta(minutes=20)),
                "minutesDuration": 20,
                "participant": [
                    {"actor": {"reference": f"Patient/{pat}"}, "required": "required",
                     "status": "accepted"},
                    {"actor": {"reference": f"Practitioner/{pract}"}, "required": "required",
                     "status": "accepted"}]}


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps(res: dict) -> str:
    return json.dumps(res, separators=(",", ":"), ensure_ascii=False)


def poisson_ish(rng: random.Random, mean: int) -> int:
    """0..2*mean, mean `mean` (keeps per-patient counts varied but the total predictable)."""
    return rng.randint(0, 2 * mean) if mean > 0 else 0


class BundleWriter:
    """Transaction Bundles of about `size` entries under out/bundles/ (see the module doc)."""

    def __init__(self, out: Path, size: int):
        self.dir = out / "bundles"
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.json"):
            old.unlink()
        self.size, self.entries, self.count = size, [], 0

    def put(self, res: dict) -> None:
        self.entries.append({"fullUrl": f"{res['resourceType']}/{res['id']}", "resource": res,
                             "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}})
        if len(self.entries) >= self.size:
            self.flush()

    def patient(self, group: list[dict]) -> None:
        """POSTs one patient's resources; references among them become urn:uuid."""
        urn = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, r['resourceType'] + '/' + r['id'])}"
               for r in group}
        for res in group:
            text = dumps({k: v for k, v in res.items() if k != "id"})
            for ref, u in urn.items():
                text = text.replace(f'"reference":"{ref}"', f'"reference":"{u}"')
            self.entries.append({"fullUrl": urn[f"{res['resourceType']}/{res['id']}"], "resource": json.loads(text),
                                 "request": {"method": "POST", "url": res["resourceType"]}})
        if len(self.entries) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        self.count += 1
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": self.entries}
        (self.dir / f"{self.count:06d}.json").write_text(dumps(bundle), encoding="utf-8")
        self.entries = []


def generate(total: int, seed: int, out: Path, post_count: int | None, bundle_size: int | None = None) -> dict:
    g = Gen(seed)
    per_patient = 1 + sum(PER_PATIENT.values())
    n_org = max(5, total // 400)
    n_pract = max(10, total // 100)
    n_pat = max(1, (total - n_org - n_pract) // per_patient)

    out.mkdir(parents=True, exist_ok=True)
    files = {t: open(out / f"{t}.ndjson", "w", encoding="utf-8")
             for level in LEVELS.values() for t in level}
    ids = open(out / "ids.tsv", "w", encoding="utf-8")
    counts = {t: 0 for t in files}
    sizes = {t: 0 for t in files}

    bundles = BundleWriter(out, bundle_size) if bundle_size else None
    group: list[dict] = []

    def emit(res: dict) -> str:
        res = g.fill(res)
        line = dumps(res)
        group.append(res)
        t = res["resourceType"]
        files[t].write(line + "\n")
        ids.write(f"{t}\t{res['id']}\n")
        counts[t] += 1
        sizes[t] += len(line.encode()) + 1
        return res["id"]

    orgs = [emit(g.organization(i)) for i in range(n_org)]
    practs = [emit(g.practitioner(i)) for i in range(n_pract)]
    if bundles:
        for res in group:
            bundles.put(res)
        bundles.flush()
    group.clear()
    patients, encounters = [], []
    for i in range(n_pat):
        org, gp = g.pick(orgs), g.pick(practs)
        pat = emit(g.patient(i, org, gp))
        patients.append(pat)
        encs = [emit(g.encounter(pat, g.pick(practs), org))
                for _ in range(max(1, poisson_ish(g.rng, PER_PATIENT["Encounter"])))]
        encounters.append((pat, encs))
        for _ in range(poisson_ish(g.rng, PER_PATIENT["Observation"])):
            emit(g.observation(pat, g.pick(encs)))
        for _ in range(poisson_ish(g.rng, PER_PATIENT["Condition"])):
            emit(g.condition(pat, g.pick(encs)))
        for _ in range(poisson_ish(g.rng, PER_PATIENT["MedicationRequest"])):
            emit(g.medication_request(pat, g.pick(encs), gp))
        for _ in range(poisson_ish(g.rng, PER_PATIENT["Appointment"])):
            emit(g.appointment(pat, gp))
        if bundles:
            bundles.patient(group)
        group.clear()
    if bundles:
        bundles.flush()
    for f in files.values():
        f.close()
    ids.close()

    for level, types in LEVELS.items():
        (out / f"level-{level}.list").write_text("".join(f"{t}.ndjson\n" for t in types))

    n_post = post_count if post_count is not None else max(1000, total // 4)
    with open(out / "post-Observation.ndjson", "w", encoding="utf-8") as f:
        post_bytes = 0
        for _ in range(n_post):
            pat, encs = g.pick(encounters)
            line = dumps(g.fill(g.observation(pat, g.pick(encs), with_id=False)))
            post_bytes += len(line.encode()) + 1
            f.write(line + "\n")

    manifest = {
        "seed": seed, "requested_resources": total,
        "resources": sum(counts.values()), "bytes": sum(sizes.values()),
        "by_type": {t: {"count": counts[t], "bytes": sizes[t]} for t in counts},
        "levels": LEVELS, "post_observations": n_post, "post_bytes": post_bytes,
        "bundles": bundles.count if bundles else 0, "bundle_size": bundle_size,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resources", type=int, default=20000,
                    help="approximate number of resources to load (default 20000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "data")
    ap.add_argument("--post", type=int, default=None,
                    help="number of POST Observation bodies (default max(1000, resources/4))")
    ap.add_argument("--bundles", type=int, default=None, metavar="SIZE",
                    help="also write transaction Bundles of about SIZE entries to out/bundles/")
    args = ap.parse_args()
    m = generate(args.resources, args.seed, args.out, args.post, args.bundles)
    print(f"{m['resources']} resources, {m['bytes'] / 1e6:.1f} MB, "
          f"avg {m['bytes'] / max(1, m['resources']):.0f} B -> {args.out}")
    for t, v in m["by_type"].items():
        print(f"  {t:18} {v['count']:7d}  {v['bytes'] / max(1, v['count']):6.0f} B avg")


if __name__ == "__main__":
    main()
