"""Fuzzing a running ``infomax serve`` from its own OpenAPI schema with Schemathesis (``st run``).

Every operation of /openapi.json is exercised (positive and negative data, every HTTP method);
the checks are: no 5xx (``not_a_server_error``), every response body valid against the schema
(``response_schema_conformance``), documented status codes and content types. The figures come
from Schemathesis' own reports: the HAR file (every request sent and its status) and the NDJSON
event log (every check run on every response).

    python -m tests.stress.fuzz --url http://127.0.0.1:8000 [--api-key K] [--examples 60]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from stress import harness  # noqa: F401 (puts tests/ on sys.path)

CHECKS = ["not_a_server_error", "response_schema_conformance", "status_code_conformance", "content_type_conformance"]


def st_command() -> list[str]:
    script = Path(sys.executable).parent / "st"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "schemathesis.cli"]


def run_schemathesis(
    base_url: str,
    out_dir: Path,
    *,
    examples: int,
    phases: str = "examples,coverage,fuzzing",
    seed: int = 1,
    api_key: str | None = None,
    workers: int = 1,
    max_time: float | None = None,
    timeout: float = 3600,
    include_path: str | None = None,
) -> dict:
    """Runs ``st run`` against ``base_url`` (only the operations of ``include_path`` when given) and
    returns the figures (see :func:`read_reports`); the HAR of every exchange is left in
    ``out_dir/requests.har.json``, schemathesis's output in ``out_dir/st-output.txt``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        *st_command(),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(examples),
        "--phases",
        phases,
        "--seed",
        str(seed),
        "--no-shrink",
        "--continue-on-failure",
        "--workers",
        str(workers),
        "--request-timeout",
        "60",
        "--report",
        "har,json,ndjson",
        "--report-dir",
        str(out_dir),
        "--report-har-path",
        str(out_dir / "requests.har.json"),
        "--report-json-path",
        str(out_dir / "report.json"),
        "--report-ndjson-path",
        str(out_dir / "events.ndjson"),
        "--suppress-health-check",
        "all",
        "--warnings",
        "off",
    ]
    if include_path:
        cmd += ["--include-path", include_path]
    if max_time:
        cmd += ["--max-time", str(int(max_time))]
    if api_key:
        cmd += ["--header", f"X-API-Key: {api_key}"]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "stress.st_hooks",
        "PYTHONPATH": os.pathsep.join([str(harness.TESTS_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=out_dir)
    elapsed = time.monotonic() - t0
    (out_dir / "st-output.txt").write_text(proc.stdout + proc.stderr)
    figures = read_reports(out_dir, base_url)
    figures.update(
        exit_code=proc.returncode, seconds=round(elapsed, 1), examples_per_operation=examples, phases=phases, seed=seed
    )
    if not (out_dir / "requests.har.json").is_file():
        raise RuntimeError(f"schemathesis wrote no report (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return figures


def har_entries(out_dir: Path) -> list[dict]:
    """The exchanges of a :func:`run_schemathesis` run, from its HAR file."""
    return json.loads((Path(out_dir) / "requests.har.json").read_text())["log"]["entries"]


def _endpoint(method: str, url: str, base_url: str) -> str:
    path = url.split("?")[0].removeprefix(base_url)
    path = re.sub(r"^/v1/items/(?!sample$)[^/]+", "/v1/items/{item_id}", path)
    return f"{method} {path}"


def read_reports(out_dir: Path, base_url: str) -> dict:
    """requests: every request sent (HAR entries); server_errors: those answered 5xx;
    schema_violations: response bodies that failed ``response_schema_conformance``; check_failures:
    failures per check; statuses: answers per endpoint and status."""
    har = json.loads((out_dir / "requests.har.json").read_text())
    entries = har["log"]["entries"]
    statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    five = []
    for e in entries:
        status = int(e["response"]["status"])
        key = _endpoint(e["request"]["method"], e["request"]["url"], base_url)
        statuses[key][status] += 1
        if status >= 500:
            five.append(f"{key} -> {status}: {e['response'].get('content', {}).get('text', '')[:200]}")
    checks_run: collections.Counter = collections.Counter()
    checks_failed: collections.Counter = collections.Counter()
    failure_examples: dict[str, list[str]] = collections.defaultdict(list)
    events = out_dir / "events.ndjson"
    if events.is_file():
        for line in events.read_text().splitlines():
            ev = json.loads(line)
            fin = ev.get("ScenarioFinished")
            if not fin:
                continue
            rec = fin.get("recorder") or {}
            for results in (rec.get("checks") or {}).values():
                for r in results:
                    checks_run[r["name"]] += 1
                    if r["status"] == "failure":
                        checks_failed[r["name"]] += 1
                        info = (r.get("failure_info") or {}).get("failure") or {}
                        if len(failure_examples[r["name"]]) < 5:
                            failure_examples[r["name"]].append(
                                f"{info.get('operation', rec.get('label'))}: {info.get('title', '')}: "
                                f"{info.get('message', '')[:300]}"
                            )
    return {
        "requests": len(entries),
        "server_errors": len(five),
        "server_error_examples": five[:10],
        "schema_violations": checks_failed["response_schema_conformance"],
        "checks_run": dict(checks_run),
        "check_failures": dict(checks_failed),
        "failure_examples": dict(failure_examples),
        "statuses": {k: dict(sorted(v.items())) for k, v in sorted(statuses.items())},
        "operations": len({k for k in statuses}),
    }


def probe_unlisted(base_url: str) -> dict:
    """The routes the schema leaves out (the web page and its static files), by hand."""
    out = {}
    with httpx.Client(base_url=base_url, timeout=30) as c:
        for path in (
            "/",
            "/static/app.js",
            "/static/style.css",
            "/static/index.html",
            "/static/nope.js",
            "/static/",
            "/openapi.json",
            "/docs",
            "/nowhere",
        ):
            r = c.get(path)
            out[path] = r.status_code
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--api-key")
    p.add_argument("--examples", type=int, default=60)
    p.add_argument("--phases", default="examples,coverage,fuzzing")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("out/fuzz"))
    a = p.parse_args(argv)
    figures = run_schemathesis(a.url, a.out, examples=a.examples, phases=a.phases, seed=a.seed, api_key=a.api_key)
    print(json.dumps(figures, indent=1))
    return 0 if figures["server_errors"] == 0 and figures["schema_violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
