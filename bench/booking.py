#!/usr/bin/env python3
"""Booking benchmark: `Appointment/$book` throughput on distinct slots, and the race of many
clients for one slot (time to settle, exactly one winner). Standard library only.

    bench/booking.sh                     # starts a server on a fresh database, then runs this
    python3 bench/booking.py --base http://127.0.0.1:8080/fhir --token "$TOKEN"

Workload: 16 practitioners, each with a Schedule and `--slots / 16` consecutive 15-minute free
Slots; `--clients` threads (one keep-alive connection each) book every Slot once through
`$book` with a proposed Appointment (Slot, time, practitioner, one of 100 patients). Then
`--racers` threads, released together by a barrier, `$book` the same new Slot. Prints one JSON
object with the figures.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse
from datetime import datetime, timedelta, timezone

PRACTITIONERS = 16
PATIENTS = 100


class Client:
    """One keep-alive HTTP connection with the bearer token."""

    def __init__(self, base: str, token: str):
        url = urllib.parse.urlsplit(base)
        self.path = url.path.rstrip("/")
        self.conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json",
                        "Accept": "application/fhir+json"}

    def send(self, method: str, path: str, body=None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body)
        self.conn.request(method, f"{self.path}/{path}", body=data, headers=self.headers)
        r = self.conn.getresponse()
        text = r.read()
        return r.status, (json.loads(text) if text else {})


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def transaction(client: Client, resources: list[dict]) -> list[str]:
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]}
    status, out = client.send("POST", "", bundle)
    assert status == 200, (status, str(out)[:300])
    return [e["response"]["location"].split("/")[1] for e in out["entry"]]


def setup(client: Client, slots: int) -> tuple[list[str], list[dict]]:
    """Practitioners, patients, schedules and free slots; returns patient ids and one proposed
    Appointment per slot."""
    practitioners = transaction(client, [{"resourceType": "Practitioner", "name": [{"family": f"Benchdoc{i}"}]}
                                         for i in range(PRACTITIONERS)])
    patients = transaction(client, [{"resourceType": "Patient", "name": [{"family": f"Benchpatient{i}"}]}
                                    for i in range(PATIENTS)])
    schedules = transaction(client, [{"resourceType": "Schedule", "actor": [{"reference": f"Practitioner/{p}"}]}
                                     for p in practitioners])
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    per = max(1, slots // PRACTITIONERS)
    proposals = []
    for k, (practitioner, schedule) in enumerate(zip(practitioners, schedules)):
        batch, times = [], []
        for i in range(per):
            t0 = start + timedelta(minutes=15 * i)
            t1 = t0 + timedelta(minutes=15)
            times.append((t0, t1))
            batch.append({"resourceType": "Slot", "schedule": {"reference": f"Schedule/{schedule}"},
                          "status": "free", "start": iso(t0), "end": iso(t1)})
        ids = []
        for j in range(0, len(batch), 500):
            ids += transaction(client, batch[j:j + 500])
        for slot, (t0, t1) in zip(ids, times):
            proposals.append({"resourceType": "Appointment", "status": "proposed", "start": iso(t0), "end": iso(t1),
                              "slot": [{"reference": f"Slot/{slot}"}],
                              "participant": [{"actor": {"reference": f"Practitioner/{practitioner}"}, "status": "accepted"}]})
    return patients, proposals


def book_body(proposal: dict, patient: str) -> dict:
    appointment = json.loads(json.dumps(proposal))
    appointment["participant"].append({"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"})
    return {"resourceType": "Parameters", "parameter": [{"name": "appt-resource", "resource": appointment}]}


def throughput(args, patients: list[str], proposals: list[dict]) -> dict:
    lock = threading.Lock()
    queue = list(enumerate(proposals))
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    def worker():
        client = Client(args.base, args.token)
        while True:
            with lock:
                if not queue:
                    return
                i, proposal = queue.pop()
            t0 = time.perf_counter()
            status, _ = client.send("POST", "Appointment/$book", book_body(proposal, patients[i % len(patients)]))
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "bookings": len(latencies), "clients": args.clients, "seconds": round(wall, 2),
        "per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "statuses": statuses,
    }


def race(args, client: Client, patients: list[str]) -> dict:
    practitioner = transaction(client, [{"resourceType": "Practitioner", "name": [{"family": "Racedoc"}]}])[0]
    schedule = transaction(client, [{"resourceType": "Schedule", "actor": [{"reference": f"Practitioner/{practitioner}"}]}])[0]
    t0 = datetime(2031, 1, 1, 9, tzinfo=timezone.utc)
    slot = transaction(client, [{"resourceType": "Slot", "schedule": {"reference": f"Schedule/{schedule}"},
                                 "status": "free", "start": iso(t0), "end": iso(t0 + timedelta(minutes=15))}])[0]
    proposal = {"resourceType": "Appointment", "status": "proposed", "start": iso(t0), "end": iso(t0 + timedelta(minutes=15)),
                "slot": [{"reference": f"Slot/{slot}"}],
                "participant": [{"actor": {"reference": f"Practitioner/{practitioner}"}, "status": "accepted"}]}
    barrier = threading.Barrier(args.racers + 1)
    statuses: list[int] = []
    done_at: list[float] = []
    lock = threading.Lock()

    def racer(i: int):
        c = Client(args.base, args.token)
        c.send("GET", "metadata")  # connect before the start
        body = book_body(proposal, patients[i % len(patients)])
        barrier.wait()
        status, _ = c.send("POST", "Appointment/$book", body)
        with lock:
            statuses.append(status)
            done_at.append(time.perf_counter())

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(args.racers)]
    for t in threads:
        t.start()
    barrier.wait()
    released = time.perf_counter()
    for t in threads:
        t.join()
    _, booked = client.send("GET", f"Appointment?slot=Slot/{slot}&status=booked&_summary=count")
    return {
        "racers": args.racers, "settle_ms": round((max(done_at) - released) * 1000, 1),
        "won": statuses.count(200), "conflicts": statuses.count(409),
        "other": len([s for s in statuses if s not in (200, 409)]),
        "booked_appointments": booked.get("total"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--slots", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--racers", type=int, default=50)
    args = parser.parse_args()
    client = Client(args.base, args.token)
    patients, proposals = setup(client, args.slots)
    result = {"throughput": throughput(args, patients, proposals), "race": race(args, client, patients)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
