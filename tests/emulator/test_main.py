from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from airflow_provider_nanobanana.emulator.__main__ import build_parser, config_from_args
from airflow_provider_nanobanana.emulator.config import DEFAULT_FAULT_ENDPOINTS, EmulatorConfig
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID


def _config(argv: list[str]) -> EmulatorConfig:
    return config_from_args(build_parser().parse_args(argv))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("RUNCOMFY_EMULATOR_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_flags_map_onto_the_config(clean_env: pytest.MonkeyPatch) -> None:
    config = _config(
        [
            "--token=abc",
            "--queue-s=0.2",
            "--run-s=3",
            "--run-s-max=4.5",
            "--max-running=0",
            "--failure-rate=0.1",
            "--seed=5",
            "--time-scale=10",
            "--output-ttl-s=60",
            "--latency-s=0.05",
            "--rate-429=0.2",
            "--retry-after-s=none",
            "--rate-5xx=0.1",
            "--rate-drop=0.05",
            "--rate-malformed=0.01",
            "--rate-html=0.02",
            "--slow-body-s=0.5",
            "--expire-outputs",
            "--fault-endpoints=status,files",
        ]
    )
    assert (config.token, config.queue_s, config.run_s, config.max_running) == ("abc", 0.2, 3.0, 0)
    assert config.run_s_max == 4.5
    assert (config.failure_rate, config.seed, config.time_scale, config.output_ttl_s) == (0.1, 5, 10.0, 60.0)
    faults = config.faults
    assert (faults.latency_s, faults.rate_429, faults.retry_after_s, faults.rate_5xx) == (
        0.05,
        0.2,
        None,
        0.1,
    )
    assert (faults.rate_drop, faults.rate_malformed, faults.rate_html, faults.slow_body_s) == (
        0.05,
        0.01,
        0.02,
        0.5,
    )
    assert faults.expire_outputs is True
    assert faults.endpoints == frozenset({"status", "files"})


def test_defaults_without_flags_or_environment(clean_env: pytest.MonkeyPatch) -> None:
    config = _config([])
    assert config.token == "emulator-token"
    assert config.models == frozenset({DEFAULT_MODEL_ID})
    assert config.faults.retry_after_s == 1.0
    assert config.faults.endpoints == DEFAULT_FAULT_ENDPOINTS
    assert config.faults.expire_outputs is False
    args = build_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 0)


def test_environment_variables_set_defaults_and_flags_win(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RUNCOMFY_EMULATOR_TOKEN", "from-env")
    clean_env.setenv("RUNCOMFY_EMULATOR_QUEUE_S", "0.25")
    clean_env.setenv("RUNCOMFY_EMULATOR_RATE_429", "0.5")
    clean_env.setenv("RUNCOMFY_EMULATOR_EXPIRE_OUTPUTS", "true")
    clean_env.setenv("RUNCOMFY_EMULATOR_FAULT_ENDPOINTS", "submit")
    clean_env.setenv("RUNCOMFY_EMULATOR_PORT", "8123")
    config = _config([])
    assert (config.token, config.queue_s, config.faults.rate_429) == ("from-env", 0.25, 0.5)
    assert config.faults.expire_outputs is True
    assert config.faults.endpoints == frozenset({"submit"})
    assert build_parser().parse_args([]).port == 8123
    config = _config(["--token=from-flag", "--rate-429=0.1", "--no-expire-outputs"])
    assert (config.token, config.queue_s, config.faults.rate_429) == ("from-flag", 0.25, 0.1)
    assert config.faults.expire_outputs is False


def test_invalid_settings_exit_2(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from airflow_provider_nanobanana.emulator.__main__ import main

    assert main(["--failure-rate=3"]) == 2
    assert "failure_rate" in capsys.readouterr().err


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_the_command_line_announces_its_address_and_stops_on_signals(stop_signal: signal.Signals) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNCOMFY_EMULATOR_")}
    env["RUNCOMFY_EMULATOR_TOKEN"] = "cli-token"
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_nanobanana.emulator", "--port", "0", "--queue-s", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))\n", first_line)
        assert match, first_line
        base_url = match.group(1)
        submit = httpx.post(
            f"{base_url}/v1/models/{DEFAULT_MODEL_ID}",
            json={"prompt": "p", "image_urls": ["http://127.0.0.1:9/a.png"]},
            headers={"Authorization": "Bearer cli-token"},
            trust_env=False,
        )
        assert submit.status_code == 200
        process.send_signal(stop_signal)
        assert process.wait(timeout=15) == 0
        _, stderr = process.communicate(timeout=5)
        assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
