"""``_lazy.py``: package names resolve from their module on first access, and only then."""

from __future__ import annotations

import re

import pytest

import airflow_provider_nanobanana.media as media
import airflow_provider_nanobanana.report as report
from airflow_provider_nanobanana.media.hook import S3MediaHook
from airflow_provider_nanobanana.report.link import ContactSheetLink
from tests.fakes import fresh_interpreter_prints


def test_names_resolve_to_the_objects_of_their_home_module() -> None:
    assert media.S3MediaHook is S3MediaHook
    assert report.ContactSheetLink is ContactSheetLink
    assert {"S3MediaHook", "render_key"} <= set(dir(media))
    assert set(report.__all__) <= set(dir(report))


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    expected = "module 'airflow_provider_nanobanana.media' has no attribute 'nope'"
    with pytest.raises(AttributeError, match=re.escape(expected)):
        media.nope  # noqa: B018


def test_importing_a_pure_rule_loads_neither_boto3_nor_pillow() -> None:
    code = (
        "import sys; from airflow_provider_nanobanana.media import render_key; "
        "import airflow_provider_nanobanana.report; "
        "print(sorted(m for m in ('boto3', 'PIL.Image') if m in sys.modules))"
    )
    assert fresh_interpreter_prints(code) == "[]"
