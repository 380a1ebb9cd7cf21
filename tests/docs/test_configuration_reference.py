"""docs/configuration.md is generated from the code; it must equal a fresh rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import gen_docs

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_committed_reference_matches_the_code() -> None:
    committed = REFERENCE.read_text(encoding="utf-8")
    assert committed == gen_docs.render(), (
        "docs/configuration.md is stale: run `uv run --frozen python -m devstack.gen_docs`"
    )


@pytest.mark.parametrize("cls", gen_docs.OPERATORS, ids=lambda cls: cls.__name__)
def test_every_init_parameter_is_documented(cls: type) -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    section = text.split(f"## `{cls.__name__}`", 1)[1].split("\n## ", 1)[0]
    names = [p.name for p in gen_docs.init_parameters(cls)]
    assert names, f"{cls.__name__} has no parameters?"
    missing = [name for name in names if f"| `{name}` |" not in section]
    assert not missing, f"{cls.__name__} parameters missing from docs/configuration.md: {missing}"
    for field in cls.template_fields:  # type: ignore[attr-defined]
        assert f"`{field}`" in section


def test_every_connection_setting_is_documented() -> None:
    import dataclasses

    from airflow_provider_nanobanana.get_provider_info import get_provider_info
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfySettings

    text = REFERENCE.read_text(encoding="utf-8").split("## Connection", 1)[1]
    form = get_provider_info()["connection-types"][0]["conn-fields"]
    settings = {f.name for f in dataclasses.fields(RunComfySettings)}
    assert set(form) <= settings, "a UI form field is not a RunComfySettings field"
    for name in settings:
        assert f"| `{name}` |" in text


def test_docstring_param_parser() -> None:
    class Example:
        """Summary.

        :param a: first line
            continues here.
        :param b: one line.

        Returns something.
        """

    assert gen_docs.docstring_params(Example) == {"a": "first line continues here.", "b": "one line."}


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n", encoding="utf-8")
    assert gen_docs.main(["--check", "--output", str(stale)]) == 1
    assert gen_docs.main(["--output", str(stale)]) == 0
    assert gen_docs.main(["--check", "--output", str(stale)]) == 0
