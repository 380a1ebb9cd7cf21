"""``runcomfy-emulator`` / ``python -m airflow_provider_nanobanana.emulator``: the emulator in the foreground.

Benchmarks and end-to-end DAG runs start it as a separate process. They read the address from the
first line of stdout (``listening on http://HOST:PORT``), printed only once connections are
accepted, and stop it with SIGTERM, which ends it cleanly with exit code 0. Every flag can also be
given as ``RUNCOMFY_EMULATOR_<FLAG>`` (``--queue-s`` → ``RUNCOMFY_EMULATOR_QUEUE_S``); flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from airflow_provider_nanobanana.emulator.app import create_app
from airflow_provider_nanobanana.emulator.config import EmulatorConfig, FaultConfig
from airflow_provider_nanobanana.emulator.server import (
    QuietServer,
    bind_socket,
    run_coroutine,
    url_for,
    uvicorn_config,
)

ENV_PREFIX = "RUNCOMFY_EMULATOR_"
_NONE = "none"

#: (flag, type, help) of the settings that go into EmulatorConfig, then into FaultConfig.
_CONFIG_FLAGS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("--token", str, "accepted bearer token (default: emulator-token)"),
    ("--queue-s", float, "minimum seconds a job stays in_queue (default 0.5)"),
    ("--run-s", float, "seconds a job stays in_progress (default 1.0)"),
    ("--run-s-max", float, "draw each job's run time uniformly from [run-s, run-s-max] (seeded)"),
    ("--max-running", int, "jobs running at once; the rest queue; 0 = nothing starts (default 4)"),
    ("--failure-rate", float, "share of jobs that end failed (default 0)"),
    ("--seed", int, "seed of every random choice (default 0)"),
    ("--time-scale", float, "divide every emulated duration by this (default 1)"),
    ("--output-ttl-s", float, "lifetime of output URLs (default 3600)"),
    ("--output-pad-bytes", int, "pad each output file to about this many bytes (default 0: no padding)"),
    ("--max-input-bytes", int, "largest accepted input image (default 50 MiB)"),
    ("--models", str, "comma-separated accepted model ids (default google/nano-banana-2/edit)"),
)
_FAULT_FLAGS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("--latency-s", float, "added delay per request"),
    ("--rate-429", float, "share of requests answered 429"),
    (
        "--retry-after-s",
        lambda text: _NONE if text.lower() in (_NONE, "") else float(text),
        "Retry-After sent with a 429 (default 1); 'none' omits the header",
    ),
    ("--rate-5xx", float, "share of requests answered 500/502/503/504"),
    ("--status-5xx", int, "always use this 5xx status"),
    ("--rate-drop", float, "share of requests whose connection is dropped"),
    ("--drop-mode", str, "mixed | no_response | truncated"),
    ("--rate-lost-response", float, "share of submits that create the job, then drop the connection"),
    ("--rate-malformed", float, "share of requests answered 200 with broken JSON"),
    ("--rate-html", float, "share of requests answered with a 502 HTML page"),
    ("--slow-body-s", float, "trickle every response body over this many seconds"),
    ("--fault-endpoints", str, "comma-separated subset of submit,status,result,cancel,files"),
    (
        "--bad-output",
        str,
        "give jobs a bad output: blank | zero_bytes | truncated | undecodable | bomb | wrong_count | empty_url",
    ),
    ("--bad-output-jobs", int, "only the next N jobs get --bad-output (default: every job)"),
)
_TRUE = frozenset({"1", "true", "yes", "on"})


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _env(flag: str) -> str | None:
    return os.environ.get(ENV_PREFIX + _dest(flag).upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runcomfy-emulator",
        description="Offline emulator of RunComfy's Model API (google/nano-banana-2/edit). "
        f"Every flag can also be set as {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}QUEUE_S; flags win.",
    )
    parser.add_argument("--host", default=_env("--host") or "127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=_env("--port") or "0", help="0 = pick a free port")
    parser.add_argument("--log-level", default=_env("--log-level") or "warning", help="default warning")
    for flag, kind, text in _CONFIG_FLAGS + _FAULT_FLAGS:
        # argparse runs string defaults (here: the environment) through ``type`` as well.
        parser.add_argument(flag, type=kind, default=_env(flag), help=text)
    env_expire = (_env("--expire-outputs") or "").lower() in _TRUE
    parser.add_argument(
        "--expire-outputs",
        action=argparse.BooleanOptionalAction,
        default=env_expire,
        help="hand out output URLs that have already expired",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Settings given on the command line or in the environment; the rest keep their defaults."""

    def given(flags: Sequence[tuple[str, Any, str]]) -> dict[str, Any]:
        values = {_dest(flag): getattr(args, _dest(flag)) for flag, _, _ in flags}
        return {
            key: (None if value == _NONE else value) for key, value in values.items() if value is not None
        }

    faults = given(_FAULT_FLAGS)
    if "fault_endpoints" in faults:
        faults["endpoints"] = faults.pop("fault_endpoints")
    faults["expire_outputs"] = args.expire_outputs
    return EmulatorConfig(**given(_CONFIG_FLAGS), faults=FaultConfig(**faults))


async def serve(
    config: EmulatorConfig,
    host: str,
    port: int,
    log_level: str,
    wrap: Callable[[Any], Any] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; announce the address on stdout once connections are accepted.

    ``wrap`` wraps the ASGI app (a benchmark's request tracker), so no caller copies this loop.
    """
    sock = bind_socket(host, port)
    app = create_app(config) if wrap is None else wrap(create_app(config))
    address = url_for(host, sock.getsockname()[1])

    def announce() -> None:
        sys.stdout.write(f"listening on {address}\n")
        sys.stdout.flush()

    server = QuietServer(uvicorn_config(app, log_level=log_level), on_started=announce)
    loop = asyncio.get_running_loop()

    def request_exit() -> None:
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_exit)
    await server.serve(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        print(f"runcomfy-emulator: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    run_coroutine(serve(config, args.host, args.port, args.log_level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
