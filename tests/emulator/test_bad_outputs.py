"""Bad outputs on demand: a prompt marker or a server setting gives a job the defect the quality gate
must catch, and each one is judged bad by the gate itself (``media/quality.py``)."""

from __future__ import annotations

import pytest

from airflow_provider_nanobanana.emulator import EmulatorServer
from airflow_provider_nanobanana.emulator.bad_outputs import BadOutputKind, kind_in_prompt
from airflow_provider_nanobanana.media.content import resolve_content_type
from airflow_provider_nanobanana.media.quality import inspect_output
from airflow_provider_nanobanana.models import output_urls
from tests.emulator.support import Api

FILE_DEFECTS = ["blank", "zero_bytes", "truncated", "undecodable", "bomb"]


def outputs(api: Api, **fields: object) -> tuple[list[str], list[bytes]]:
    rid = api.submit_id(**fields)
    body = api.wait(rid)
    raw = list(body["output"]["images"])
    return raw, [api.download(url).content for url in output_urls(body["output"])]


def verdict(data: bytes, url: str = "x.png") -> str | None:
    return inspect_output(data, resolve_content_type(data[:32], url=url, declared=None))


def test_the_marker_is_read_from_the_prompt() -> None:
    assert kind_in_prompt("make it purple [bad_output:blank]") is BadOutputKind.BLANK
    assert kind_in_prompt("make it purple") is None
    assert kind_in_prompt("[bad_output:nonsense]") is None


@pytest.mark.parametrize("kind", FILE_DEFECTS)
def test_a_marked_prompt_spoils_output_0_only(api: Api, kind: str) -> None:
    _, files = outputs(api, prompt=f"turn the sky purple [bad_output:{kind}]", num_images=2)
    assert len(files) == 2
    assert verdict(files[0]) is not None
    assert verdict(files[1]) is None  # the other output is untouched
    assert api.emu.counters()["faults_injected"] == {f"bad_output_{kind}": 1}


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_a_blank_comes_in_the_requested_format(api: Api, fmt: str) -> None:
    raw, files = outputs(api, prompt="x [bad_output:blank]", output_format=fmt)
    assert str(verdict(files[0], raw[0])).startswith("a uniform blank")


def test_wrong_count_and_empty_url(api: Api) -> None:
    raw, files = outputs(api, prompt="x [bad_output:wrong_count]", num_images=3)
    assert len(raw) == 2
    raw, files = outputs(api, prompt="x [bad_output:empty_url]", num_images=2)
    assert raw[0] == ""
    assert len(files) == 1  # the client's reading of the result drops the empty URL
    raw, _ = outputs(api, prompt="x [bad_output:wrong_count]")
    assert raw == []  # a single image that never came: Nano Banana's "no image" answer


def test_the_server_setting_spoils_the_next_n_jobs(api: Api, emu: EmulatorServer) -> None:
    emu.set_faults(bad_output="blank", bad_output_jobs=1)
    _, first = outputs(api)
    _, second = outputs(api)
    assert verdict(first[0]) is not None
    assert verdict(second[0]) is None
    emu.set_faults(bad_output="zero_bytes")  # no limit: every job
    assert [outputs(api)[1][0] for _ in range(2)] == [b"", b""]
    emu.set_faults()
    assert verdict(outputs(api)[1][0]) is None


def test_an_unknown_defect_is_refused_by_the_settings(emu: EmulatorServer) -> None:
    import httpx

    with pytest.raises(httpx.HTTPStatusError):
        emu.configure(faults={"bad_output": "mangled"})
