from __future__ import annotations

import importlib
import json
from importlib.metadata import entry_points

from airflow_provider_nanobanana import __version__
from airflow_provider_nanobanana.get_provider_info import get_provider_info


def test_entry_point_is_registered():
    (ep,) = [
        e
        for e in entry_points(group="apache_airflow_provider")
        if e.value.startswith("airflow_provider_nanobanana")
    ]
    assert ep.load()() == get_provider_info()


def test_every_listed_module_and_class_imports():
    info = get_provider_info()
    modules = [
        m
        for section in ("hooks", "operators", "sensors", "triggers")
        for e in info[section]
        for m in e["python-modules"]
    ]
    for module in modules:
        importlib.import_module(module)
    for dotted in [*info["extra-links"], *(c["hook-class-name"] for c in info["connection-types"])]:
        module, _, name = dotted.rpartition(".")
        assert getattr(importlib.import_module(module), name)


def test_metadata_matches_the_package_and_schema():
    info = get_provider_info()
    assert info["versions"] == [__version__]
    assert info["package-name"] == "airflow-provider-nanobanana"
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == "runcomfy"
    assert conn["ui-field-behaviour"]["relabeling"]["password"] == "API Token"
    assert "allow_insecure_inputs" in conn["conn-fields"]
    json.dumps(info)  # must be plain JSON for the providers manager


def test_ui_form_extras_are_understood(monkeypatch):
    from airflow_provider_nanobanana.hooks.runcomfy import RunComfyHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_RC_UI",
        json.dumps(
            {
                "conn_type": "runcomfy",
                "password": "t",
                "host": "http://127.0.0.1:1",
                "extra": {"extra__runcomfy__allow_insecure_inputs": True, "extra__runcomfy__max_retries": 1},
            }
        ),
    )
    settings = RunComfyHook("rc_ui").settings
    assert settings.allow_insecure_inputs is True
    assert settings.max_retries == 1
