#!/usr/bin/env python3
"""POSTs transaction Bundles to a FHIR server with N concurrent clients and reports the rate
(stdlib only; a harness, asserts nothing but that every Bundle was accepted).

    python3 bench/post_bundles.py --base http://127.0.0.1:8080/fhir --token T \\
        --concurrency 4 [--limit 400] bench/out/data-.../bundles

Bundles are read into memory first (only the request is timed) and POSTed in name order, each
by whichever client is free; `--limit` takes the first N files. Prints one JSON line:
{"bundles", "resources", "seconds", "resources_per_s", "p50_ms", "p99_ms", "failed"}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--skip", type=int, default=0, help="leave out the first N files (e.g. already loaded)")
    ap.add_argument("dir", type=Path)
    args = ap.parse_args()

    files = sorted(args.dir.glob("*.json"))[args.skip:]
    if args.limit is not None:
        files = files[: args.limit]
    bodies = []
    for f in files:
        raw = f.read_bytes()
        bodies.append((raw, len(json.loads(raw)["entry"])))
    url = urlsplit(args.base)
    path = url.path.rstrip("/") or "/"
    work: queue.Queue = queue.Queue()
    for b in bodies:
        work.put(b)
    latencies: list[float] = []
    failed: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=600)
        headers = {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {args.token}",
                   "Prefer": "return=minimal"}
        while True:
            try:
                body, _ = work.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if resp.status != 200:
                    failed.append(f"{resp.status}: {data[:300]!r}")

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    resources = sum(n for _, n in bodies)
    lat = sorted(latencies)
    result = {
        "bundles": len(bodies), "resources": resources, "seconds": round(seconds, 2),
        "resources_per_s": round(resources / seconds, 1) if seconds else 0,
        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1) if lat else None,
        "failed": len(failed),
    }
    print(json.dumps(result))
    if failed:
        print("first failure:", failed[0], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
