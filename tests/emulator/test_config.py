from __future__ import annotations

import pytest
from pydantic import ValidationError

from airflow_provider_nanobanana.emulator import EmulatorConfig, FaultConfig
from airflow_provider_nanobanana.models import DEFAULT_MODEL_ID, MAX_INPUT_IMAGE_BYTES


def test_defaults() -> None:
    config = EmulatorConfig()
    assert (config.token, config.queue_s, config.run_s, config.max_running) == ("emulator-token", 0.5, 1.0, 4)
    assert (config.failure_rate, config.seed, config.time_scale, config.output_ttl_s) == (0.0, 0, 1.0, 3600.0)
    assert config.run_s_max is None
    assert config.models == frozenset({DEFAULT_MODEL_ID})
    assert config.max_input_bytes == MAX_INPUT_IMAGE_BYTES
    assert config.faults.endpoints == frozenset({"submit", "status", "result", "cancel"})
    assert not config.faults.any_rate


def test_lists_may_be_given_as_comma_separated_text() -> None:
    config = EmulatorConfig(models="a/b, c/d", faults=FaultConfig(endpoints="status,files"))  # type: ignore[arg-type]
    assert config.models == frozenset({"a/b", "c/d"})
    assert config.faults.endpoints == frozenset({"status", "files"})


@pytest.mark.parametrize(
    "bad",
    [
        {"failure_rate": 1.5},
        {"time_scale": 0},
        {"max_running": -1},
        {"faults": {"rate_429": -0.1}},
        {"faults": {"endpoints": ["status", "webhooks"]}},
        {"faults": {"status_5xx": 404}},
        {"surprise": 1},
        {"run_s": 2.0, "run_s_max": 1.0},
        {"run_s_max": -1.0},
    ],
)
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        EmulatorConfig.model_validate(bad)


def test_public_view_hides_the_token_and_round_trips() -> None:
    config = EmulatorConfig(token="s3cret", time_scale=4.0, run_s_max=3.0, faults=FaultConfig(rate_5xx=0.25))
    view = config.public_view()
    assert "token" not in view
    assert "s3cret" not in repr(view)
    assert "s3cret" not in repr(config)
    assert view["faults"]["endpoints"] == ["cancel", "result", "status", "submit"]  # type: ignore[index]
    assert EmulatorConfig.model_validate({**view, "token": "s3cret"}) == config
    assert config.scaled(2.0) == 0.5
