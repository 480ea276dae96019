#!/usr/bin/env python3
"""Assemble bench/run.sh's measurements into a markdown report (stdlib only)."""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import subprocess
from pathlib import Path


def wrk_results(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def pgbench(out: Path, name: str) -> dict:
    text = (out / f"pgbench_{name}.txt").read_text()
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    lat = []
    for f in glob.glob(str(out / f"pgb_{name}" / "pgbench_log.*")):
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
    lat.sort()
    pct = (lambda p: lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else 0)
    return {"tps": float(m.group(1)) if m else 0.0,
            "failed": int(failed.group(1)) if failed else 0,
            "p50_us": pct(50), "p99_us": pct(99), "samples": len(lat), "raw": text}


def ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    try:
        pg = subprocess.run(["pgbench", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pg = "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "mem": mem, "kernel": platform.release(),
            "pgbench": pg}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--tables", required=True)
    ap.add_argument("--stored", type=int, required=True)
    ap.add_argument("--connections", type=int, required=True)
    ap.add_argument("--duration", type=int, required=True)
    ap.add_argument("--post-duration", type=int, required=True)
    ap.add_argument("--binary", required=True)
    a = ap.parse_args()

    manifest = json.loads((a.data / "manifest.json").read_text())
    puts = wrk_results(a.out / "ingest_put.jsonl")
    post = wrk_results(a.out / "ingest_post.json")[0]
    read = wrk_results(a.out / "read.json")[0]
    sel, ins, ins2 = (pgbench(a.out, n) for n in ("select", "insert", "insert2"))

    put_n = sum(p["requests"] for p in puts)
    put_s = sum(p["duration_us"] for p in puts) / 1e6
    put_err = sum(sum(p["errors"].values()) for p in puts)
    put_rate = put_n / put_s if put_s else 0
    # Percentiles cannot be merged across wrk runs: show those of the largest phase (the bulk
    # of the load); every phase is listed below.
    bulk = max(puts, key=lambda p: p["requests"])
    put_p50, put_p99 = bulk["latency_us"]["p50"], bulk["latency_us"]["p99"]
    post_rate = post["requests"] / (post["duration_us"] / 1e6)
    read_rate = read["requests"] / (read["duration_us"] / 1e6)
    ratio = (lambda x, y: f"{x / y:.2f}" if y else "n/a")

    count, res_bytes, hist_bytes, db_bytes = (int(x) for x in a.tables.split("\t"))
    m = machine()
    c = a.connections
    print(f"# ironfhir load benchmark\n")
    print(f"Binary `{a.binary}`; {c} connections (wrk) / {c} clients (pgbench); "
          f"timed phases {a.duration} s (POST {a.post_duration} s). "
          "Server, PostgreSQL, wrk and pgbench share one machine.\n")
    print("| workload | ironfhir | PostgreSQL limit (pgbench, same tables) | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| ingest, PUT update-as-create, client ids ({put_n} requests, {put_err} errors) | "
          f"**{put_rate:,.0f} resources/s**, p50 {ms(put_p50)}, p99 {ms(put_p99)} (largest phase) | "
          f"single-row insert: {ins['tps']:,.0f} tx/s, p50 {ms(ins['p50_us'])}, "
          f"p99 {ms(ins['p99_us'])} | {ratio(put_rate, ins['tps'])} |")
    print(f"| ingest, POST, server ids ({post['requests']} requests, "
          f"{sum(post['errors'].values())} errors) | **{post_rate:,.0f} resources/s**, "
          f"p50 {ms(post['latency_us']['p50'])}, p99 {ms(post['latency_us']['p99'])} | "
          f"single-row insert: {ins['tps']:,.0f} tx/s | {ratio(post_rate, ins['tps'])} |")
    print(f"| (context) | | resource + history row in one transaction: "
          f"{ins2['tps']:,.0f} tx/s, p50 {ms(ins2['p50_us'])}, p99 {ms(ins2['p99_us'])} | "
          f"PUT {ratio(put_rate, ins2['tps'])}, POST {ratio(post_rate, ins2['tps'])} |")
    print(f"| read by id, random over the dataset ({read['requests']} requests, "
          f"{sum(read['errors'].values())} errors) | **{read_rate:,.0f} reads/s**, "
          f"p50 {ms(read['latency_us']['p50'])}, p99 {ms(read['latency_us']['p99'])} | "
          f"point select: {sel['tps']:,.0f} tx/s, p50 {ms(sel['p50_us'])}, "
          f"p99 {ms(sel['p99_us'])} | {ratio(read_rate, sel['tps'])} |")
    print()
    print("Ratio = ironfhir rate / PostgreSQL rate (1.00 would mean the server adds nothing to "
          "the database's own cost).")
    if any(x["failed"] for x in (sel, ins, ins2)):
        print(f"\npgbench failed transactions: select {sel['failed']}, insert {ins['failed']}, "
              f"insert2 {ins2['failed']}")
    print("\n## Dataset\n")
    print(f"- generated: {manifest['resources']:,} resources, {manifest['bytes'] / 1e6:.1f} MB "
          f"NDJSON (avg {manifest['bytes'] / max(1, manifest['resources']):,.0f} B), "
          f"seed {manifest['seed']}; stored after the PUT ingest: {a.stored:,}")
    print("- by type: " + ", ".join(f"{t} {v['count']:,}" for t, v in manifest["by_type"].items()))
    print(f"- after the POST phase: {count:,} rows in `resource` "
          f"({res_bytes / 1e6:.1f} MB with indexes), `resource_history` {hist_bytes / 1e6:.1f} MB, "
          f"database {db_bytes / 1e6:.1f} MB")
    print("\n## Machine\n")
    print(f"- {m['nproc']} CPUs: {m['cpu']}; memory {m['mem']}; Linux {m['kernel']}; {m['pgbench']}")
    print("\n## Per ingest phase (PUT)\n")
    print("| phase | requests | seconds | resources/s | p50 | p99 | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, p in enumerate(puts, 1):
        s = p["duration_us"] / 1e6
        print(f"| {i} | {p['requests']} | {s:.1f} | {p['requests'] / s:,.0f} | "
              f"{ms(p['latency_us']['p50'])} | {ms(p['latency_us']['p99'])} | "
              f"{sum(p['errors'].values())} |")


if __name__ == "__main__":
    main()
