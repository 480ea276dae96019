#!/usr/bin/env python3
"""Events benchmark: a sustained write rate through the API, and how long each write takes to
reach (a) a rest-hook Subscription's endpoint and (b) a JetStream consumer of the event stream,
plus how far the outbox dispatcher falls behind. Needs nats-py (bench/events.sh installs it).

    bench/events.sh                      # fresh database, release server, then this
    python3 bench/events.py --base URL --token T --nats nats://127.0.0.1:4222 --stream NAME --pg URL

Workload: `--rate` PUTs per second for `--seconds`, spread over 200 Patients (updates of small
resources), sent by `--writers` processes that pace themselves to the rate. One Subscription
(criteria `Patient`, rest-hook, full-resource payload) notifies a receiver process on this
machine; a second process reads the stream `<stream>.>` from JetStream. Latency = receipt time
minus the time the writer got the write's 2xx (the write was committed and acknowledged);
both clocks are this machine's. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATIENTS = 200


def writer(base: str, token: str, rate: float, seconds: float, index: int, writers: int, start_at: float, out: mp.Queue):
    """Sends its share of the writes at a steady pace; reports (id, version, ack time)."""
    url = urllib.parse.urlsplit(base)
    acks, errors, late = [], 0, 0

    def worker(offset: int, step: int):
        nonlocal errors, late
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        n = offset
        interval = 1.0 / rate
        while True:
            due = start_at + n * interval
            if due > start_at + seconds:
                return
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.05:
                late += 1
            pid = f"evbench-{n % PATIENTS}"
            body = json.dumps({"resourceType": "Patient", "id": pid, "birthDate": f"19{n % 90 + 10}-01-01"})
            try:
                conn.request("PUT", f"{url.path}/Patient/{pid}", body=body, headers=headers)
                r = conn.getresponse()
                text = r.read()
                if 200 <= r.status < 300:
                    acks.append((pid, json.loads(text)["meta"]["versionId"], time.time()))
                else:
                    errors += 1
            except Exception:
                errors += 1
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
            n += step

    threads_per_writer = 4
    step = writers * threads_per_writer
    threads = [threading.Thread(target=worker, args=(index * threads_per_writer + t, step)) for t in range(threads_per_writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({"acks": acks, "errors": errors, "late": late})


def receiver(port_out: mp.Queue, done: mp.Event, out: mp.Queue):
    """The rest-hook endpoint: records (id, version, receipt time) of every PUT."""
    got = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_PUT(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            now = time.time()
            try:
                r = json.loads(body)
                got.append((r["id"], r["meta"]["versionId"], now))
            except Exception:
                pass
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_out.put(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    done.wait()
    server.shutdown()
    out.put(got)


def stream_reader(nats_url: str, stream: str, ready: mp.Event, done: mp.Event, out: mp.Queue):
    """A JetStream push consumer of `<stream>.Patient.>` from new messages on."""
    import asyncio

    import nats

    async def run():
        got = []
        nc = await nats.connect(nats_url)
        js = nc.jetstream()

        async def handler(msg):
            now = time.time()
            p = json.loads(msg.data)
            got.append((p["id"], p["versionId"], now))

        await js.subscribe(f"{stream}.Patient.>", cb=handler, deliver_policy="new", manual_ack=False)
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        await nc.close()
        return got

    out.put(asyncio.run(run()))


def lag_sampler(pg: str, seconds: float, out: list):
    """Every 0.5 s: events waiting in the outbox and the age of the oldest (psql)."""
    end = time.time() + seconds
    while time.time() < end:
        q = "SELECT count(*), coalesce(extract(epoch FROM now() - min(recorded_at)), 0) FROM outbox_event"
        r = subprocess.run(["psql", "-X", "-At", "-F", " ", "-d", pg, "-c", q], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            n, age = r.stdout.split()
            out.append((int(n), float(age)))
        time.sleep(0.5)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    return {"n": len(v), "p50_ms": round(pick(0.5) * 1000, 1), "p99_ms": round(pick(0.99) * 1000, 1), "max_ms": round(v[-1] * 1000, 1)}


def latencies(acks: list, received: list) -> tuple[list[float], int]:
    """Receipt minus acknowledgement per (id, version); the first receipt counts."""
    first = {}
    for pid, version, t in received:
        first.setdefault((pid, str(version)), t)
    out, missing = [], 0
    for pid, version, t in acks:
        r = first.get((pid, str(version)))
        if r is None:
            missing += 1
        else:
            out.append(max(0.0, r - t))
    return out, missing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--nats", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--pg", required=True, help="database URL of the server (outbox lag)")
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--writers", type=int, default=4)
    a = ap.parse_args()
    ctx = mp.get_context("fork")
    port_q, hook_out, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    recv = ctx.Process(target=receiver, args=(port_q, done, hook_out))
    recv.start()
    port = port_q.get()
    stream_out, ready = ctx.Queue(), ctx.Event()
    reader = ctx.Process(target=stream_reader, args=(a.nats, a.stream, ready, done, stream_out))
    reader.start()
    ready.wait(30)
    url = urllib.parse.urlsplit(a.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = {"Authorization": f"Bearer {a.token}", "Content-Type": "application/fhir+json"}
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "events benchmark", "criteria": "Patient",
           "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{port}/hook", "payload": "application/fhir+json"}}
    conn.request("POST", f"{url.path}/Subscription", body=json.dumps(sub), headers=headers)
    r = conn.getresponse()
    assert r.status == 201, r.read()[:300]
    r.read()
    time.sleep(2)  # the dispatchers see the Subscription
    start_at = time.time() + 1
    acks_q = ctx.Queue()
    writers = [ctx.Process(target=writer, args=(a.base, a.token, a.rate, a.seconds, i, a.writers, start_at, acks_q)) for i in range(a.writers)]
    for w in writers:
        w.start()
    lag: list = []
    sampler = threading.Thread(target=lag_sampler, args=(a.pg, a.seconds + 15, lag))
    sampler.start()
    results = [acks_q.get() for _ in writers]
    for w in writers:
        w.join()
    acks = [x for r in results for x in r["acks"]]
    took = max((t for _, _, t in acks), default=start_at + a.seconds) - start_at
    sampler.join()
    done.set()
    hooked = hook_out.get()
    streamed = stream_out.get()
    recv.join()
    reader.join()
    hook_lat, hook_missing = latencies(acks, hooked)
    stream_lat, stream_missing = latencies(acks, streamed)
    print(json.dumps({
        "target_rate": a.rate,
        "seconds": a.seconds,
        "acknowledged": len(acks),
        "achieved_rate": round(len(acks) / max(took, 0.001), 1),
        "write_errors": sum(r["errors"] for r in results),
        "late_sends": sum(r["late"] for r in results),
        "rest_hook": {**percentiles(hook_lat), "missing": hook_missing},
        "jetstream": {**percentiles(stream_lat), "missing": stream_missing},
        "outbox_backlog_max": max((n for n, _ in lag), default=0),
        "outbox_oldest_max_s": round(max((age for _, age in lag), default=0), 2),
    }))


if __name__ == "__main__":
    main()
