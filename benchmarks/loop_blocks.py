"""``python -m benchmarks.loop_blocks [--n N]``: whose code held a real triggerer's event loop.

Section 6 of ``docs/benchmarks.md`` counts Airflow's "async thread was blocked for X seconds"
warnings, and could not say whose code caused them: the watchdog cannot, and the same triggerer
holding idle ``TimeDeltaTrigger`` s (no provider code at all) warned as often. This runs the same
real-triggerer scenario (``benchmarks.real_triggerer``: N deferred task instances in a fresh SQLite
metadata DB, one ``airflow triggerer``, the emulator holding the jobs until every trigger has polled)
for the provider's trigger and the ``TimeDeltaTrigger`` baseline, with ``benchmarks.slow_steps``
installed in the triggerer's processes: every event-loop step is timed, every slow step and busy
stretch is recorded with where the main thread's stack samples were.

Results go to stdout and ``docs/benchmarks-loop-blocks.md`` (raw: ``.run/bench-loop-blocks/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import code_version, machine_info, servers, start_png_server
from benchmarks.real_triggerer import LABELS, REPO_ROOT, run_matrix
from benchmarks.slow_steps import BUSY_S, SAMPLE_S, SLOW_S

RUN_ROOT = REPO_ROOT / ".run" / "bench-loop-blocks"
OUT = REPO_ROOT / "docs" / "benchmarks-loop-blocks.md"
VARIANTS = ("ours", "timedelta")
LONG_S = 1.0  # the bar: no loop block over 1 s caused by provider code


def bench(n: int, quick: bool = False) -> dict[str, Any]:
    png = start_png_server()
    with servers(png):
        result = run_matrix(
            [n],
            png_url=png.url,
            budget_s=3 * 3600,
            quick=quick,
            variants=VARIANTS,
            root=RUN_ROOT,
            slow_steps=True,
        )
    result["code"], result["machine"] = code_version(), machine_info()
    return result


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    """One variant's blocks: the watchdog's count, then the recorded steps and stretches by owner."""
    records = row.get("slow_steps", [])
    long_steps = [r for r in records if r.get("kind") == "step" and r["s"] >= LONG_S]
    causes = Counter(cause(r) for r in long_steps)
    stretches = [r for r in records if r.get("kind") == "busy"]
    samples = sum(r["samples"] for r in stretches)
    spots: Counter[str] = Counter()
    for r in stretches:
        spots.update({spot: count for spot, count in r["top"]})
    return {
        "variant": row["variant"],
        "watchdog_over_1s": row.get("blocked_over_1s"),
        "watchdog_max_s": row.get("blocked_max_s"),
        "long_steps": len(long_steps),
        "long_steps_max_s": max((r["s"] for r in long_steps), default=0.0),
        "long_steps_with_provider": sum(1 for r in long_steps if r["provider_samples"] > 0),
        "long_step_causes": dict(causes),
        "long_step_spots": Counter(spot for r in long_steps for spot, _ in r["top"][:1]).most_common(3),
        "stretches": len(stretches),
        "stretch_s": round(sum(r["s"] for r in stretches), 1),
        "stretch_max_s": max((r["s"] for r in stretches), default=0.0),
        "stretch_provider_share": (sum(r["provider_samples"] for r in stretches) / samples)
        if samples
        else 0.0,
        "stretch_spots": spots.most_common(4),
        "released": row.get("released"),
        "n": row.get("n"),
        "error": row.get("error"),
    }


def cause(step: dict[str, Any]) -> str:
    """Whose a long step was: the GC's when it paused for most of it, else the majority of its samples.

    A collection holds the GIL, so the sampler takes no sample while it runs; its cost grows with
    every tracked object in the process (Airflow's and the provider's alike), and it starts in
    whichever code allocated last.
    """
    if step.get("gc_s", 0.0) >= step["s"] / 2:
        return "garbage collection"
    if step["samples"] and step["provider_samples"] * 2 >= step["samples"]:
        return "provider"
    return "Airflow or other"


def provider_blocks(summary: dict[str, Any]) -> int:
    """Long steps whose samples were mostly provider code: what the issue's loop-block target counts."""
    return int(summary["long_step_causes"].get("provider", 0))


def verdict_text(ours: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """The loop-block verdict and its reasons; shared by this page and section 6 of benchmarks.md."""
    provider = provider_blocks(ours)
    collections = ours["long_step_causes"].get("garbage collection", 0)
    text = (
        ("met" if provider == 0 else "**missed**")
        + f": of {ours['long_steps']} steps of 1 s or more while the provider's triggers ran, {provider} "
        "had provider code on the stack in most of their samples "
        f"({ours['long_steps_with_provider']} in any sample). "
    )
    if collections:
        base = "not run" if baseline is None else baseline["long_step_causes"].get("garbage collection", 0)
        text += (
            f"{collections} were pauses of Python's garbage collector (generation 2: a full collection with "
            "the GIL held), which starts in whichever step allocates last and lasts as long as the whole heap "
            f"takes to scan; the TimeDelta baseline, whose idle triggers allocate nothing once started, had "
            f"{base}. "
        )
    return text + (
        "The busy stretches are shared work (Airflow starting triggers and writing their logs, the polls, the "
        f"loop itself); provider code was on the stack in {100 * ours['stretch_provider_share']:.0f}% of their "
        "samples."
    )


def _causes(causes: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(causes.items())) or "-"


def _spots(pairs: list[tuple[str, int]] | list[list[Any]]) -> str:
    return ", ".join(f"`{spot}` ({count})" for spot, count in pairs) or "-"


def render(result: dict[str, Any], command: str) -> str:
    machine = result["machine"]
    rows = [summarize(r) for r in result["rows"]]
    ours = next((r for r in rows if r["variant"] == "ours"), None)
    lines = [
        "# Benchmark: whose code held the real triggerer's event loop",
        "",
        "Generated by `benchmarks/loop_blocks.py`; do not edit by hand. Regenerate with "
        "`uv run --frozen python -m benchmarks.loop_blocks` (also part of `make bench`).",
        "",
        f"- Command: `{result.get('command', command)}`",
        f"- Code measured: `{result['code']}`",
        f"- Machine: {machine['nproc']} CPUs, {machine['ram_gib']} GiB RAM, Python {machine['python']}, "
        f"Airflow {result.get('airflow', machine['airflow'])}",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- Ran on: one real `airflow triggerer` per row, as section 6 of [benchmarks.md](benchmarks.md) "
        "runs it (SQLite metadata DB, emulator holding every job until all were polled, then letting them "
        "run), with `benchmarks/slow_steps.py` loaded into the triggerer's processes.",
        "",
        "How it attributes: every asyncio callback is timed (one uninterrupted step of one task: the only "
        "thing that can hold a loop). A **long step** (>= 1 s) is one piece of code holding the loop; a "
        f"**busy stretch** (>= {BUSY_S:g} s of steps back to back, none of them long, the loop never "
        "waiting for I/O between them) is a loop with more ready work than time. Airflow's watchdog "
        "warns for both: its 0.1 s sleep waits behind either. A side thread samples the loop thread's "
        f"stack every {SAMPLE_S * 1000:.0f} ms; a sample counts for the provider when any frame of it is "
        "`airflow_provider_nanobanana` code, and its spot is the innermost frame outside the standard "
        f"library (or the asyncio loop's own code). Steps of {SLOW_S:g} s or more are kept in the raw data.",
        "",
        "| trigger | N | released | watchdog: blocked > 1 s (longest) | long steps >= 1 s (longest) | "
        "long steps by cause (provider code on the stack) | where the long steps were | busy stretches >= 1 s "
        "(total s, longest) | provider code's share of the stretches' samples | where the stretches were |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = LABELS.get(row["variant"], row["variant"])
        if row["error"]:
            lines.append(f"| {label} | {row['n']:,} | error: {row['error']} |  |  |  |  |  |  |  |")
            continue
        released = "held (not released)" if row["released"] is None else f"{row['released']:,}"
        lines.append(
            f"| {label} | {row['n']:,} | {released} | {row['watchdog_over_1s']} ({row['watchdog_max_s']} s) "
            f"| {row['long_steps']} ({row['long_steps_max_s']:.2f} s) | {_causes(row['long_step_causes'])} "
            f"({row['long_steps_with_provider']}) "
            f"| {_spots(row['long_step_spots'])} | {row['stretches']} ({row['stretch_s']} s, "
            f"{row['stretch_max_s']:.2f} s) | {100 * row['stretch_provider_share']:.0f}% | {_spots(row['stretch_spots'])} |"
        )
    if ours is not None and not ours["error"]:
        baseline = next((r for r in rows if r["variant"] == "timedelta" and not r["error"]), None)
        verdict = verdict_text(ours, baseline)
        lines += ["", f"**Target: no event-loop block over 1 s caused by provider code** — {verdict}"]
    return "\n".join(lines) + "\n"


def measure_and_write(n: int, out: Path, command: str, quick: bool = False) -> dict[str, Any]:
    """Entry point for ``benchmarks/run.py`` (``make bench``) too: runs, writes its own doc and raw JSON."""
    result = {**bench(n, quick), "command": command}
    (RUN_ROOT / "results.json").write_text(json.dumps(result, default=str))
    out.write_text(render(result, command))
    return {"doc": str(out), "rows": [summarize(r) for r in result["rows"]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000, help="deferred task instances")
    parser.add_argument("--quick", action="store_true", help="section 6's quick time bounds")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--render-from", help="rewrite the page from a run's results.json")
    args = parser.parse_args(argv)
    given = list(argv if argv is not None else sys.argv[1:])
    command = " ".join(["uv run --frozen python -m benchmarks.loop_blocks", *given])
    if args.render_from:
        Path(args.out).write_text(render(json.loads(Path(args.render_from).read_text()), command))
    else:
        measure_and_write(args.n, Path(args.out), command, args.quick)
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
