"""Hostile-input campaign (issue 21), short mode: hostile_campaign.py reads the live server's
CapabilityStatement and sends hostile requests for its resource types, interactions and search
parameters for about a minute. Zero 5xx answers, zero requests slower than 10 s, zero requests
that lose their answer, and the server still answers GET /metadata.

Runs late (file name) because it writes many odd resources (under its own ids and `_tag`),
before test_zz_no_phi_in_logs.py, which then also checks that none of them leaked into the log.

Environment:
  IRONFHIR_CAMPAIGN_SECONDS  how long to run (default 60; the README's full run is 1800)
  IRONFHIR_CAMPAIGN_SEED     seed (default 1); failures name `--seed N --replay I` to resend one
  IRONFHIR_CAMPAIGN_REPORT   where to write the JSON report (default: in the server's data dir)
"""

from __future__ import annotations

import json
import os

import hostile_campaign


def test_a_hostile_campaign_finds_no_5xx_no_hang_and_leaves_the_server_answering(server, base, token):
    seconds = float(os.environ.get("IRONFHIR_CAMPAIGN_SECONDS", "60"))
    seed = int(os.environ.get("IRONFHIR_CAMPAIGN_SEED", "1"))
    out = os.environ.get("IRONFHIR_CAMPAIGN_REPORT") or str(server.data_dir / "hostile-campaign.json")
    code = hostile_campaign.main(["--base", base, "--token", token, "--duration", str(seconds), "--seed", str(seed),
                                  "--out", out, "--quiet"])
    with open(out) as f:
        report = json.load(f)
    assert report["requests"] > 0, "the campaign sent no request"
    assert not report["setup_problems"], report["setup_problems"]
    lines = [f"{g['count']} x {g['kind']} {g['status']} {g['generator']} {g['method']}: {g['response'][:120]} "
             f"(replay: hostile_campaign.py --seed {seed} --replay {g['indices'][0]})" for g in report["failure_groups"]]
    examples = [f"#{f['index']} {f.get('method', '')} {f.get('url', '')[:200]} body={f.get('body', '')[:120]!r}"
                for f in report["failures"][:15]]
    assert report["alive"], "the server stopped answering GET /metadata:\n" + "\n".join(lines + examples)
    assert code == 0 and not report["failures"], (
        f"{len(report['failures'])} failures in {report['requests']} requests (report: {out}):\n"
        + "\n".join(lines) + "\nfirst requests:\n" + "\n".join(examples))
