"""Turn the results of one run into ``docs/benchmarks.md`` (and the same text on stdout)."""

from __future__ import annotations

from typing import Any

from benchmarks import report_polls, report_triggerer
from benchmarks.report_polls import polls_section, transport_section
from benchmarks.run_table import table

IN_PROCESS = "one event loop, in-process harness"
SIMULATION = "simulation"

TARGET_RSS_MB, TARGET_LAG_MS, TARGET_ARCHIVE_MB = 600.0, 100.0, 100.0


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def density_section(res: dict[str, Any], command: str) -> list[str]:
    rows = [{**r, "ran_on": IN_PROCESS} for r in res["rows"]]
    cols = [
        ("impl", "trigger"),
        ("n", "N"),
        ("ran_on", "ran on"),
        ("completed", "done"),
        ("errors", "errors"),
        ("wall_s", "wall s"),
        ("peak_rss_mb", "peak RSS MB"),
        ("rss_per_trigger_kb", "RSS/trigger KB"),
        ("cpu_ms_per_job", "CPU ms/job"),
        ("cpu_ms_per_poll", "CPU ms/poll"),
        ("lag_p99_ms", "loop lag p99 ms (steady)"),
        ("lag_max_ms", "loop lag max ms"),
        ("polls_per_job", "polls/job"),
        ("polls_per_s", "polls/s"),
        ("emulator_cpu_pct", "emulator CPU %"),
        ("error_kinds", "non-success"),
        ("error", "child error"),
    ]
    return [
        f"## 1. Trigger density ({IN_PROCESS}, not a real triggerer)",
        "",
        f"`{command}`",
        "",
        f"N jobs submitted first (not measured), then N triggers driven concurrently on one event loop in a fresh "
        f"process; each job queues {res['queue_s']:.0f} s then runs {res['run_s']:.0f} s (real time, emulator in "
        "its own process, `max_running` unlimited). RSS/trigger = (peak RSS during the trigger phase - RSS "
        "before it) / N. Loop lag = overshoot of a 50 ms `asyncio.sleep`, p99 after the first 5 s. "
        "Polls/job counts status + result GETs at the emulator. Airflow's own baseline: a triggerer runs at most "
        "`[triggerer] capacity` = 1000 triggers by default. The naive trigger is capped in N and wall time "
        "(a watchdog aborts it above 3 GB RSS).",
        "",
        table(rows, cols),
        "",
        "This harness runs the triggers' `run()` coroutines on one bare event loop: no Airflow triggerer, no "
        "supervisor, no metadata DB, no per-trigger logging. It measures the provider's own cost per trigger; "
        "what a real `airflow triggerer` does with the same N is in section 6.",
        "",
    ]


def workers_section(res: dict[str, Any], command: str) -> list[str]:
    cols = [
        ("variant", "variant"),
        ("jobs", "jobs"),
        ("worker_s", "worker-slot s (measured, accelerated clock)"),
        ("worker_s_realtime", "worker-slot s per job at real-time clock"),
        ("job_wall_s_emulated", "job wall s (emulated)"),
    ]
    scale = res.get("time_scale", 20.0)
    return [
        "## 2. Worker-slot seconds per job",
        "",
        f"`{command}`",
        "",
        f"One job that queues 60 s and runs 10 s of emulated time, on an emulator with `time_scale={scale:g}` "
        f"(60 s = {60 / scale:g} s real). Every poll interval is divided by the same factor (operator "
        f"`poll_interval={2 / scale:g}`, `poll_max_interval={30 / scale:g}`; naive `time.sleep({5 / scale:g})` "
        "for 5 s), so the schedule relative to the job is the real-time one. Waiting variants hold the slot for "
        f"the whole job, so their real-time figure is measured x {scale:g}; the deferrable operator's worker time "
        "(submit, one status look, defer; then `execute_complete` fetching the result) is real work and is not "
        "scaled. Not included: Airflow's per-task process start-up, which the deferrable task pays twice.",
        "",
        table(res.get("rows", []), cols) if "rows" in res else f"error: {res.get('error')}",
        "",
    ]


def archive_section(res: dict[str, Any], command: str) -> list[str]:
    ran_on = res.get("ran_on", "moto server on loopback")
    rows = [{**r, "ran_on": ran_on} for r in res["rows"]]
    cols = [
        ("variant", "variant"),
        ("size_mb", "output MB"),
        ("ran_on", "ran on"),
        ("wall_s", "wall s (warm, median)"),
        ("cold_wall_s", "first copy in the process s"),
        ("speed_vs_naive", "speed vs naive (naive s / ours s)"),
        ("mb_per_s", "MB/s"),
        ("base_rss_mb", "RSS before MB"),
        ("peak_rss_mb", "peak RSS MB"),
        ("peak_above_base_mb", "peak above baseline MB"),
        ("error", "error"),
    ]
    repeats = res.get("repeats", 1)
    return [
        "## 4. Archive path: output -> S3",
        "",
        f"`{command}`",
        "",
        f"Ran on: {ran_on} (moto and the emulator serving the padded output each in their own process). Each "
        f"variant ran {repeats} times per size in a fresh child, alternating with the other; the run with the "
        "median warm wall time is shown. Each child copies the output twice and the second (warm) copy is "
        "compared: the first pays one-time costs (boto3 loading operation models, lazy imports) and is shown "
        "apart. Wall time is the copy alone, after imports and client creation: for ours "
        "the existence check (a LIST, sent beside the GET), the streamed GET, the upload (one `PutObject` up "
        "to 16 MiB, else a multipart upload whose parts go up in a background thread while the next is "
        "read), S3 SHA-256 checksums on every part, and the manifest; no `CopyObject`. Naive: "
        "`requests.get().content` then one `put_object`, nothing else.",
        "",
        table(rows, cols),
        "",
        "What each side sends: ours, up to 16 MiB, a LIST (is it archived already? it runs while the GET "
        "is answered), the GET and one `PutObject`, then the manifest `PutObject`; above 16 MiB "
        "`CreateMultipartUpload`, one `UploadPart` per 16 MiB, a `ListMultipartUploads` for an interrupted "
        "run's leftovers (on the part thread) and `CompleteMultipartUpload` instead of the one `PutObject`. "
        "Naive: the GET and one `PutObject`, holding the whole output in memory. At 1 MB the copy is a "
        "few round trips on loopback, so the manifest `PutObject` (written last: its presence means the "
        "archive is complete) is a large share of ours; moto handles every request in Python and "
        "re-assembles a multipart object in memory, so each extra request and each part costs more here "
        "than on S3. A speed ratio under 1 is that cost: the price of idempotency, integrity checks and flat "
        "memory on this emulated S3.",
        "",
    ]


def reuse_section(res: dict[str, Any], command: str) -> list[str]:
    hashing, batch = res.get("hash", {}), res.get("batch", {})
    hash_cols = [
        ("input_mb", "input MB"),
        ("plain_get_s", "plain streamed GET s"),
        ("hash_s", "fingerprint hashing s"),
        ("hash_vs_get", "hashing / GET"),
        ("get_requests_per_input", "GETs per input"),
        ("peak_above_base_mb", "peak RSS above baseline MB (both paths)"),
    ]
    batch_cols = [
        ("run", "run"),
        ("items", "items"),
        ("paid_requests", "paid requests (POSTs at the emulator)"),
        ("reused", "reused"),
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("wall_s", "wall s"),
    ]
    return [
        "## 7. Content-addressed reuse (`reuse_outputs`)",
        "",
        f"`{command}`",
        "",
        f"Ran on: {res.get('ran_on', 'loopback')}. Hash cost: the fingerprint streams each input once; "
        "compared with a plain streamed GET of the same `s3://` object (boto3, 1 MiB reads), median of 5, "
        "so the single-edit path costs at most one extra GET per input. Re-run: one batch over N distinct "
        "images with `reuse_outputs=True`, then the same batch in another DAG run; worker and trigger in "
        "one process, emulator jobs instant, so the first run's seconds are mostly archiving.",
        "",
        table(hashing["rows"], hash_cols) if "rows" in hashing else f"error: {hashing.get('error')}",
        "",
        table(batch["rows"], batch_cols) if "rows" in batch else f"error: {batch.get('error')}",
        "",
    ]


def batch_section(res: dict[str, Any], command: str) -> list[str]:
    cols = [
        ("mode", "mode"),
        ("n", "items"),
        ("event", "outcome"),
        ("wall_s", "wall s"),
        ("submit_phase_s", "of which worker submits s"),
        ("wall_s_emulated", "wall s (emulated)"),
        ("cpu_s", "CPU s"),
        ("cpu_ms_per_item", "CPU ms/item"),
        ("rss_growth_mb", "RSS growth MB"),
        ("lag_p99_ms", "loop lag p99 ms"),
        ("submits", "submits"),
        ("status_polls_per_item", "status polls/item"),
        ("result_polls_per_item", "result polls/item"),
        ("peak_running", "peak running at emulator"),
        ("error", "error"),
    ]
    scale = res["time_scale"]
    return [
        "## 5. Batch: one batch trigger vs individual triggers",
        "",
        f"`{command}`",
        "",
        f"Emulator: queue 60 s, run 10 s, `time_scale={scale:g}`; poll intervals and the poll budget scaled by "
        f"the same factor; batch `rate_per_s` = 10 x {scale:g}. The batch trigger checkpoints to moto (own "
        "process) and submits itself; the individual path's submits are done up front through the hook (in a "
        "deployment: one worker slot and one task instance each). A real-scheduler run of 1,000 mapped tasks "
        "does not fit this machine's time budget and was not attempted.",
        "",
        table(res["rows"], cols),
        "",
    ]


def targets_section(results: dict[str, Any]) -> list[str]:
    rows: list[dict[str, Any]] = []
    dens = results.get("density")
    if dens:
        shared = [
            r for r in dens["rows"] if r.get("impl", "").startswith("RunComfyJobTrigger") and "error" not in r
        ]
        if shared:
            big = max(shared, key=lambda r: r["n"])
            rows.append(
                {
                    "target": f"{IN_PROCESS}: largest N ({big['n']:,}) under {TARGET_RSS_MB:.0f} MB RSS",
                    "measured": f"{big['peak_rss_mb']} MB",
                    "verdict": _verdict(big["peak_rss_mb"] < TARGET_RSS_MB),
                }
            )
            rows.append(
                {
                    "target": f"{IN_PROCESS}: steady p99 loop lag < {TARGET_LAG_MS:.0f} ms at every N",
                    "measured": ", ".join(f"N={r['n']:,}: {r['lag_p99_ms']} ms" for r in shared),
                    "verdict": _verdict(all(r["lag_p99_ms"] < TARGET_LAG_MS for r in shared)),
                }
            )
            rows.append(
                {
                    "target": f"{IN_PROCESS}: no collapse, errors = 0 at every N",
                    "measured": ", ".join(f"N={r['n']:,}: {r['errors']}" for r in shared),
                    "verdict": _verdict(all(r["errors"] == 0 for r in shared)),
                }
            )
            rows.append(
                {
                    "target": f"{IN_PROCESS}: >= 10,000 concurrent jobs on one event loop (not a real "
                    "triggerer: see the real-triggerer rows)",
                    "measured": f"{big['n']:,}",
                    "verdict": _verdict(big["n"] >= 10_000),
                }
            )
    pol = results.get("polls")
    if pol:
        rows += report_polls.target_rows(pol)
    arc = results.get("archive")
    if arc:
        streamed = [r for r in arc["rows"] if r["variant"].startswith("S3MediaHook") and "error" not in r]
        if streamed:
            worst = max(r["peak_above_base_mb"] for r in streamed)
            rows.append(
                {
                    "target": "archive at least as fast as download-then-put at every size (moto on loopback)",
                    "measured": ", ".join(
                        f"{r['size_mb']} MB: {r.get('speed_vs_naive', '?')}x" for r in streamed
                    ),
                    "verdict": _verdict(all(r.get("speed_vs_naive", 0) >= 1.0 for r in streamed)),
                }
            )
            rows.append(
                {
                    "target": f"archive peak RSS < {TARGET_ARCHIVE_MB:.0f} MB above baseline, any size",
                    "measured": ", ".join(
                        f"{r['size_mb']} MB: +{r['peak_above_base_mb']} MB" for r in streamed
                    ),
                    "verdict": _verdict(worst < TARGET_ARCHIVE_MB),
                }
            )
    reuse = results.get("reuse", {})
    rerun = [r for r in reuse.get("batch", {}).get("rows", []) if r["run"].startswith("re-run")]
    if rerun:
        rows.append(
            {
                "target": f"a re-run of a {rerun[0]['items']:,}-image batch with reuse_outputs pays 0 requests",
                "measured": f"{rerun[0]['paid_requests']} paid, {rerun[0]['wall_s']} s",
                "verdict": _verdict(rerun[0]["paid_requests"] == 0),
            }
        )
    hashed = reuse.get("hash", {}).get("rows", [])
    if hashed:
        rows.append(
            {
                "target": "fingerprint hashing costs one extra streamed GET per input (flat memory)",
                "measured": ", ".join(
                    f"{r['input_mb']} MB: {r.get('get_requests_per_input', '?')} GET, {r['hash_vs_get']}x "
                    "a plain GET's time (SHA-256 CPU on top)"
                    for r in hashed
                ),
                "verdict": _verdict(all(r.get("get_requests_per_input") == 1 for r in hashed)),
            }
        )
    why: list[str] = []
    trig = results.get("triggerer")
    if trig and "rows" in trig:
        real_rows, why = report_triggerer.targets(trig, results.get("loop_blocks"))
        rows = real_rows + rows
    lines = [
        "## Targets",
        "",
        "Real-triggerer targets first (section 6), then the in-process harness and simulation ones.",
        "",
        table(rows, [("target", "target"), ("measured", "measured"), ("verdict", "verdict")]),
        "",
    ]
    if why:
        lines += ["Why the missed real-triggerer targets are missed:", ""]
        lines += [f"- {reason}" for reason in why]
        lines += [""]
    return lines


SECTIONS = {
    "transport": transport_section,
    "density": density_section,
    "workers": workers_section,
    "polls": polls_section,
    "archive": archive_section,
    "batch": batch_section,
    "triggerer": report_triggerer.section,
    "reuse": reuse_section,
}


def render(
    results: dict[str, Any],
    machine: dict[str, str],
    command: str,
    mode: str,
    elapsed_s: float,
    reused: list[str] | None = None,
    reused_from: str | None = None,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run.py`; do not edit by hand. Regenerate with `make bench` or "
        "`uv run --frozen python -m benchmarks.run` (full, default) / `--quick`. The raw results are in "
        "`docs/benchmarks.json`; refresh one section with `--only NAME --reuse docs/benchmarks.json`.",
        "",
        f"- Command: `{command}` ({mode} mode, {elapsed_s / 60:.1f} min)",
        f"- Machine: {machine['nproc']} CPUs, {machine['ram_gib']} GiB RAM, Python {machine['python']}, "
        f"Airflow {machine['airflow']}, {machine['platform']}",
        f"- Date: {machine['date']}",
        "- Everything on 127.0.0.1; emulator, input-image server and moto each in their own process; fixed seeds. "
        "The machine is shared and noisy: compare rows of one run with each other, not with other runs.",
        "",
    ]
    if reused:
        lines += [
            f"> Sections {', '.join(reused)} are reused from an earlier run's results (`--reuse`"
            + (f"; that run: `{reused_from}`" if reused_from else "")
            + "); the rest ran in this one.",
            "",
        ]
    if mode == "quick":
        lines += ["> Quick mode: small N and short jobs. The full mode (default) is the one to quote.", ""]
    lines += targets_section(results)
    for name, section in SECTIONS.items():
        if name in results:
            res = results[name]
            measured_by = str(res.get("measured_by") or command)
            if set(res) <= {"error", "measured_by"}:
                lines += [f"## {name}", "", f"`{measured_by}`", "", f"error: {res['error']}", ""]
            else:
                lines += _with_code(section(res, measured_by), measured_by, res.get("code"))
    return "\n".join(lines)


def _with_code(lines: list[str], measured_by: str, code: str | None) -> list[str]:
    """Say under a section's command which commit it measured: reused sections can predate the code."""
    if not code:
        return lines
    at = lines.index(f"`{measured_by}`") + 1 if f"`{measured_by}`" in lines else 1
    return [*lines[:at], "", f"Code measured: `{code}`.", *lines[at:]]
