"""The long reliability runs, in one command; writes every figure to OUT/figures.json and a
markdown summary to OUT/summary.md (the "last run" section of docs/RELIABILITY.md).

    python -m tests.stress.run_all                     # ~15-25 min on 2 cores
    python -m tests.stress.run_all --soak-minutes 10   # + bench/soak.py (another 10.5 min)
    python -m tests.stress.run_all --quick             # everything small (a few minutes)

1. hostile corpus, 3 rounds through /v1/embed, /v1/search (base64) and /v1/items, + 200 MB upload;
   peak RSS (VmHWM) of the server before and after; the hostile search filters and values of
   ``explain`` (JSON and multipart);
2. fuzzing from the OpenAPI schema (Schemathesis: examples, coverage, fuzzing and stateful
   phases; >= 1,000 requests) against the same server, now holding items of every format;
3. security: writes without the key, path traversal on every path parameter, oversize bodies
   (200 MB, with and without Content-Length), the key grepped for in the server's output;
4. crash safety: 20 SIGKILLs during concurrent writes (own server, own index);
5. startup refusal: every damaged or mismatched setup of tests/stress/startup.py;
6. one writer per index folder: a second writable server and a rebuild of the served folder
   refused, acknowledged writes kept across them and a kill -9, a reader following a rebuild
   (tests/stress/writers.py);
7. optionally the soak (bench/soak.py).

Exit status 0 when every promise of docs/RELIABILITY.md held.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from stress.harness import REPO, ServerProcess, build_index, machine, make_artifact  # noqa: E402

API_KEY = "stress-run-key-0b7e4f"


def log(*a) -> None:
    print(*a, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "out" / "reliability")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--fuzz-examples", type=int, default=150, help="Schemathesis examples per operation and phase")
    p.add_argument("--hostile-rounds", type=int, default=3)
    p.add_argument("--soak-minutes", type=float, default=0.0, help="also run bench/soak.py this long (0: no)")
    p.add_argument("--quick", action="store_true", help="small versions of everything")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if a.quick:
        a.kills, a.fuzz_examples, a.hostile_rounds = 3, 10, 1
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    figures: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "command": "python -m tests.stress.run_all " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git": _git_head(),
    }
    verdicts: dict[str, bool] = {}
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="infomax-stress-") as tmp:
        tmp = Path(tmp)
        artifact = make_artifact(tmp / "artifact")
        folder = build_index(tmp / "index", artifact, n=200)["folder"]

        # ------------------------------------------------------------ 1-3: one server with a key
        srv = ServerProcess(artifact, folder, out / "server.log", api_key=API_KEY)
        (out / "server.log").unlink(missing_ok=True)
        srv.start()
        log(f"server ready in {srv.ready_s:.1f} s, RSS {srv.rss_kb() / 1024:.0f} MB")
        try:
            from stress.hostile_run import send_corpus

            log("hostile corpus ...")
            h = send_corpus(srv, rounds=a.hostile_rounds)
            (out / "hostile.json").write_text(json.dumps(h, indent=1))
            h.pop("results")
            figures["hostile"] = h
            verdicts["hostile: documented answers"] = not h["mismatches"]
            verdicts["hostile: peak RSS growth < 400 MB"] = h["vm_hwm_mb_after_stream"] - h["vm_hwm_mb_before"] < 400
            log(json.dumps(h))

            from stress.hostile_run import send_filters

            log("hostile search filters ...")
            hf = send_filters(srv)
            (out / "hostile-filters.json").write_text(json.dumps(hf, indent=1))
            hf.pop("results")
            figures["hostile_filters"] = hf
            verdicts["hostile filters: documented answers, no 5xx"] = not hf["mismatches"] and not hf["server_errors"]
            log(json.dumps(hf))

            from stress.hostile_run import send_explain

            log("hostile explain values ...")
            he = send_explain(srv)
            (out / "hostile-explain.json").write_text(json.dumps(he, indent=1))
            he.pop("results")
            figures["hostile_explain"] = he
            verdicts["hostile explain values: documented answers, no 5xx"] = not he["mismatches"] and not he["server_errors"]
            log(json.dumps(he))

            from stress.fuzz import probe_unlisted, run_schemathesis

            log("fuzzing ...")
            f = run_schemathesis(
                srv.url,
                out / "fuzz",
                examples=a.fuzz_examples,
                phases="examples,coverage,fuzzing,stateful",
                api_key=API_KEY,
                seed=a.seed,
            )
            f["unlisted_routes"] = probe_unlisted(srv.url)
            figures["fuzz"] = f
            verdicts["fuzz: >= 1000 requests"] = f["requests"] >= 1000 or a.quick
            verdicts["fuzz: no 5xx"] = f["server_errors"] == 0 and all(s < 500 for s in f["unlisted_routes"].values())
            verdicts["fuzz: no schema violations"] = f["schema_violations"] == 0
            verdicts["fuzz: documented status codes and content types"] = not f["check_failures"]
            log(json.dumps({k: v for k, v in f.items() if k != "statuses"}))

            from stress import security

            log("security ...")
            sec = {
                "auth": security.check_auth(srv, API_KEY),
                "traversal": security.check_traversal(srv),
                "oversize": security.check_oversize(srv),
            }
            security.exercise_with_key(srv, API_KEY)
            sec["key_in_log"] = security.check_key_not_logged(srv, API_KEY)
            security.send_key_in_query(srv, API_KEY)
            time.sleep(0.3)
            sec["key_in_log_after_key_in_url"] = security.check_key_not_logged(srv, API_KEY)
            figures["security"] = sec
            verdicts["security: writes without key refused"] = not sec["auth"]["problems"]
            verdicts["security: no traversal"] = not sec["traversal"]["leaks"]
            verdicts["security: 413 early"] = all(
                r["status"] == 413 and r["bytes_sent_before_answer"] < 40 << 20 for r in sec["oversize"]
            )
            verdicts["security: key not in log"] = not sec["key_in_log"]["found"]
            log(json.dumps(sec)[:3000])
            figures["server_log_tracebacks"] = srv.log().count("Traceback")
        finally:
            srv.stop()

        # ------------------------------------------------------------ 4: crashes
        from stress.crash import run_crashes

        log(f"crash safety: {a.kills} kills ...")
        c = run_crashes(tmp / "crash", kills=a.kills, seed=a.seed, artifact=artifact, base_items=100, log=log)
        (out / "crash.json").write_text(json.dumps(c, indent=1))
        figures["crash"] = {k: v for k, v in c.items() if k != "cycles"}
        figures["crash"]["restart_s_median"] = sorted(x["restart_s"] for x in c["cycles"])[len(c["cycles"]) // 2]
        verdicts["crash: nothing acknowledged lost"] = c["items_lost"] == 0 and c["deletes_undone"] == 0
        verdicts["crash: nothing half-present"] = c["half_present"] == 0 and not c["problems"]

        # ------------------------------------------------------------ 5: startup refusal
        from stress.startup import Refusal, make_cases, run_refusals

        log("startup refusal ...")
        cases = make_cases(tmp / "startup", quick=a.quick, artifact=artifact)
        cases.append(
            Refusal(
                "invalid settings, key set",
                artifact,
                tmp / "startup" / "good-index",
                names="workers",
                extra_args=("--workers", "2"),
                env={"INFOMAX_API_KEY": API_KEY},
                secret=API_KEY,
            )
        )
        r = run_refusals(cases, parallel=2)
        (out / "startup.json").write_text(json.dumps(r, indent=1))
        figures["startup"] = [{k: v for k, v in x.items() if k != "output_tail"} for x in r]
        verdicts["startup: all refused, file named, never served"] = all(
            x["exit_code"] not in (0, None) and not x["served"] and x["names_file"] and not x["secret_leaked"] for x in r
        )
        log(json.dumps(figures["startup"], indent=1))

        # ------------------------------------------------------------ 6: one writer per folder
        from stress.writers import run_writers

        log("one writer per index folder ...")
        w = run_writers(tmp / "writers", artifact, log=log)
        (out / "writers.json").write_text(json.dumps(w, indent=1))
        figures["writers"] = w
        verdicts["writers: second writer and rebuild refused, nothing acknowledged lost"] = not w["problems"]

    # ---------------------------------------------------------------- 7: soak
    if a.soak_minutes > 0:
        log(f"soak: {a.soak_minutes} min ...")
        proc = subprocess.run(
            [sys.executable, str(REPO / "bench" / "soak.py"), "--minutes", str(a.soak_minutes), "--json", str(out / "soak.json")],
            cwd=REPO,
        )
        s = json.loads((out / "soak.json").read_text())
        figures["soak"] = {k: v for k, v in s.items() if k != "rss_series_mb"}
        verdicts["soak: no errors, RSS growth < 10%"] = proc.returncode == 0

    figures["seconds"] = round(time.monotonic() - t_all, 1)
    figures["verdicts"] = verdicts
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    (out / "summary.md").write_text(summary(figures))
    log(summary(figures))
    return 0 if all(verdicts.values()) else 1


def _git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def summary(f: dict) -> str:
    lines = [
        f"Run {f['date']} on {f['machine']} (commit {f['git']} + working tree), `{f['command']}`, "
        f"{f.get('seconds', 0) / 60:.1f} min.",
        "",
    ]
    if "hostile" in f:
        h = f["hostile"]
        lines += [
            f"* Hostile corpus: {h['cases']} files ({h['accepted']} accepted, {h['refused']} refused) x "
            f"{h['requests'] // max(1, 3 * h['cases'])} rounds x 3 routes + the 200 MB upload: "
            f"{len(h['mismatches'])} wrong answers. Server peak RSS (VmHWM) {h['vm_hwm_mb_before']:.0f} MB before, "
            f"{h['vm_hwm_mb_after_stream']:.0f} MB after (+{h['vm_hwm_mb_after_stream'] - h['vm_hwm_mb_before']:.0f} MB)."
        ]
    if "fuzz" in f:
        z = f["fuzz"]
        lines += [
            f"* Fuzzing (Schemathesis, {z['phases']}, {z['examples_per_operation']} examples): {z['requests']} "
            f"requests to {z['operations']} method/path pairs, {z['server_errors']} answers 5xx, "
            f"{z['schema_violations']} schema violations; other check failures: {z['check_failures'] or 'none'}."
        ]
    if "security" in f:
        s = f["security"]
        over = s["oversize"]
        lines += [
            f"* Security: {s['auth']['refused']}/{s['auth']['attempts']} writes without a valid key refused (401); "
            f"{s['traversal']['requests']} traversal attempts, {len(s['traversal']['leaks'])} leaks; 200 MB uploads "
            f"answered 413 after {min(r['bytes_sent_before_answer'] for r in over) / 1e6:.1f}-"
            f"{max(r['bytes_sent_before_answer'] for r in over) / 1e6:.1f} MB sent; API key in the server log: "
            f"{s['key_in_log']['found'] or 'no'} (after a client put it in a URL: "
            f"{s['key_in_log_after_key_in_url']['found'] or 'no'})."
        ]
    if "crash" in f:
        c = f["crash"]
        lines += [
            f"* Crash safety: {c['kills']} SIGKILLs, {c['clients']} writing clients, {c['acknowledged_items']} "
            f"acknowledged items + {c['acknowledged_deletes']} deletes, {c['unacknowledged_writes']} writes cut "
            f"by a kill ({c['unacknowledged_found_applied']} found applied, whole); items lost: {c['items_lost']}, "
            f"half-present: {c['half_present']}; restart to ready: median {c['restart_s_median']} s."
        ]
    if "startup" in f:
        st = f["startup"]
        lines += [
            f"* Startup refusal: {len(st)} setups, {sum(x['exit_code'] not in (0, None) for x in st)} refused "
            f"(exit != 0), {sum(x['names_file'] for x in st)} naming the file, {sum(x['served'] for x in st)} "
            f"ever served; seconds to exit {min(x['seconds'] for x in st)}-{max(x['seconds'] for x in st)}."
        ]
    if "writers" in f:
        w = f["writers"]
        sw, rb = w.get("second_writer", {}), w.get("rebuild_while_served", {})
        lines += [
            f"* One writer per folder: second writable server exit {sw.get('exit_code')} after "
            f"{sw.get('seconds')} s, rebuild of the served folder exit {rb.get('exit_code')} after "
            f"{rb.get('seconds')} s; items after a kill -9 and restart {w.get('items_after_restart')} of 42; "
            f"reader caught up with the writer in {w.get('reader_follows_writer_s')} s and with a rebuild in "
            f"{w.get('reader_follows_rebuild_s')} s; problems: {len(w['problems'])}."
        ]
    if "soak" in f:
        s = f["soak"]
        lines += [
            f"* Soak: {s['clients']} clients, {s['seconds'] / 60:.1f} min: {s['requests_per_s']} req/s, p50 "
            f"{s['p50_ms']} ms, p99 {s['p99_ms']} ms, {s['errors']} errors, RSS {s['rss_mb_start']} -> "
            f"{s['rss_mb_end']} MB ({100 * (s['rss_growth'] or 0):+.1f}%)."
        ]
    lines += ["", "| promise | held |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else '**NO**'} |" for k, v in f.get("verdicts", {}).items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
