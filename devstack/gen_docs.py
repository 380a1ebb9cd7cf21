"""Generate ``docs/configuration.md`` from the code, so the reference cannot drift from it.

    uv run --frozen python -m devstack.gen_docs           # write docs/configuration.md
    uv run --frozen python -m devstack.gen_docs --check   # exit 1 if the committed file is stale

Sources: each operator's ``__init__`` signature (name, annotation, default), the ``:param x:`` text of
its class docstring, its ``template_fields``; the ``runcomfy`` connection form from
``get_provider_info()`` and the settings a connection is read into (:class:`RunComfySettings`).
``tests/docs/test_configuration_reference.py`` regenerates it in memory and compares.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_nanobanana.get_provider_info import get_provider_info
from airflow_provider_nanobanana.hooks.runcomfy import RunComfySettings
from airflow_provider_nanobanana.models import EditRequest
from airflow_provider_nanobanana.operators.batch import NanoBananaBatchEditOperator
from airflow_provider_nanobanana.operators.nano_banana import NanoBananaEditOperator
from airflow_provider_nanobanana.report.fleet import NanoBananaContactSheetOperator
from airflow_provider_nanobanana.sensors.runcomfy import RunComfyJobSensor

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
OPERATORS: tuple[type, ...] = (
    NanoBananaEditOperator,
    NanoBananaBatchEditOperator,
    RunComfyJobSensor,
    NanoBananaContactSheetOperator,
)
#: Settings that are not connection extras, and the connection field they come from instead.
SETTING_SOURCES = {"token": "password", "base_url": "host"}

_PARAM = re.compile(r"^:param\s+(\w+):\s*(.*)$")


def docstring_params(obj: object) -> dict[str, str]:
    """``{name: text}`` of the ``:param name: text`` entries (continuation lines joined)."""
    params: dict[str, str] = {}
    current: str | None = None
    for raw in inspect.cleandoc(obj.__doc__ or "").splitlines():
        line = raw.strip()
        match = _PARAM.match(line)
        if match:
            current = match.group(1)
            params[current] = match.group(2)
        elif current and line and raw.startswith((" ", "\t")):
            params[current] += " " + line
        else:
            current = None
    return params


def provider_classes(cls: type) -> list[type]:
    """``cls`` and the provider's own base classes it inherits parameters from, nearest first."""
    return [c for c in cls.__mro__ if c.__module__.startswith("airflow_provider_nanobanana.")]


def init_parameters(cls: type) -> list[inspect.Parameter]:
    """The keyword parameters of ``cls.__init__`` and of the provider's base classes' (without
    ``self`` and ``**kwargs``); a subclass's own parameter wins over a base's of the same name."""
    seen: dict[str, inspect.Parameter] = {}
    for klass in provider_classes(cls):
        for p in inspect.signature(klass.__init__).parameters.values():  # type: ignore[misc]
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                seen.setdefault(p.name, p)
    return list(seen.values())


def all_docstring_params(cls: type) -> dict[str, str]:
    params: dict[str, str] = {}
    for klass in provider_classes(cls):
        for name, text in docstring_params(klass).items():
            params.setdefault(name, text)
    return params


def model_input_text(name: str) -> str:
    """For an operator parameter that is a model input: the allowed values, read from EditRequest."""
    field = EditRequest.model_fields[name]
    limits = []
    for meta in field.metadata:
        for attr, word in (
            ("ge", ">="),
            ("le", "<="),
            ("min_length", "min length"),
            ("max_length", "max length"),
        ):
            value = getattr(meta, attr, None)
            if value is not None:
                limits.append(f"{word} {value}")
    choices = (
        typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
    )
    if choices:
        limits.append("one of " + ", ".join(f"`{c}`" for c in choices))
    return "Model input" + (f" ({'; '.join(limits)})" if limits else "") + "."


def _cell(text: str) -> str:
    """Markdown table cell: reST literals become Markdown code, pipes are escaped."""
    return text.replace("``", "`").replace("|", "\\|").replace("\n", " ")


def _code(value: str) -> str:
    return f"`{_cell(value)}`"


def _annotation(param: inspect.Parameter) -> str:
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return ""
    return _code(annotation if isinstance(annotation, str) else inspect.formatannotation(annotation))


def _default(param: inspect.Parameter) -> str:
    return "required" if param.default is inspect.Parameter.empty else _code(repr(param.default))


def operator_section(cls: type) -> list[str]:
    docs = all_docstring_params(cls)
    templated = set(getattr(cls, "template_fields", ()))
    summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n", 1)[0].replace("\n", " ")
    lines = [
        f"## `{cls.__name__}`",
        "",
        f"`{cls.__module__}.{cls.__name__}`: {_cell(summary)}",
        "",
        "Templated fields: " + ", ".join(f"`{name}`" for name in cls.template_fields) + ".",  # type: ignore[attr-defined]
        "",
        "| parameter | type | default | templated | description |",
        "|---|---|---|---|---|",
    ]
    for param in init_parameters(cls):
        text = docs.get(param.name, "")
        if not text and param.name in EditRequest.model_fields:
            text = model_input_text(param.name)
        lines.append(
            f"| `{param.name}` | {_annotation(param)} | {_default(param)} | "
            f"{'yes' if param.name in templated else ''} | {_cell(text)} |"
        )
    base = next(c for c in cls.__mro__[1:] if c not in provider_classes(cls)).__name__
    lines += ["", f"Other keyword arguments go to `{base}` (`task_id`, `retries`, `pool`, ...).", ""]
    return lines


def connection_section() -> list[str]:
    conn_type = get_provider_info()["connection-types"][0]
    form: dict[str, Any] = conn_type["conn-fields"]
    behaviour: dict[str, Any] = conn_type["ui-field-behaviour"]
    relabel: dict[str, str] = behaviour["relabeling"]
    placeholders: dict[str, str] = behaviour.get("placeholders", {})
    lines = [
        f"## Connection `{conn_type['connection-type']}`",
        "",
        f"Hook: `{conn_type['hook-class-name']}`. UI form: "
        + ", ".join(f"`{field}` is labelled *{label}*" for field, label in relabel.items())
        + "; hidden: "
        + ", ".join(f"`{f}`" for f in behaviour["hidden-fields"])
        + ".",
        "",
        "Every setting below is read by `RunComfySettings.from_connection`. Extras not in the UI form can",
        "still be set in the connection's extra JSON.",
        "",
        "| setting | from | type | default | in UI form | description |",
        "|---|---|---|---|---|---|",
    ]
    for field in dataclasses.fields(RunComfySettings):
        source = SETTING_SOURCES.get(field.name)
        entry = form.get(field.name, {})
        default = "required" if field.default is dataclasses.MISSING else _code(repr(field.default))
        if field.name == "token":
            default = "required"
        parts = (entry.get("label", ""), entry.get("description", ""), placeholders.get(source or "", ""))
        text = ". ".join(part.rstrip(".") for part in parts if part) + ("." if any(parts) else "")
        lines.append(
            f"| `{field.name}` | {'connection ' + source if source else 'extra'} | {_code(str(field.type))} | "
            f"{default} | {'yes' if entry or source else 'no'} | {_cell(text)} |"
        )
    lines += [
        "",
        "Keys saved by the UI form with the `extra__runcomfy__` prefix are read the same as plain keys.",
        "",
    ]
    return lines


def options_section() -> list[str]:
    """The ``[nanobanana]`` options of ``airflow.cfg`` (``AIRFLOW__NANOBANANA__<OPTION>``)."""
    section = get_provider_info()["config"]["nanobanana"]
    lines = [
        "## `[nanobanana]` options",
        "",
        f"{section['description']} Each is also an environment variable, `AIRFLOW__NANOBANANA__<OPTION>`;",
        "an unreadable value falls back to the default. How the poll options interact:",
        "[trigger](trigger.md#poll-budget).",
        "",
        "| option | type | default | description |",
        "|---|---|---|---|",
    ]
    for name, option in section["options"].items():
        lines.append(
            f"| `{name}` | {option['type']} | `{option['default']}` | {_cell(option['description'])} |"
        )
    return [*lines, ""]


def render() -> str:
    lines = [
        "<!-- Generated by `uv run --frozen python -m devstack.gen_docs` from the code. Do not edit. -->",
        "",
        "# Configuration reference",
        "",
        "Generated from the operators' signatures and docstrings and from `get_provider_info()`;",
        "`tests/docs/test_configuration_reference.py` fails when this file is stale. Guides:",
        "[connection](connection.md), [operator](operator.md), [batch](batch.md), [trigger](trigger.md).",
        "",
    ]
    for cls in OPERATORS:
        lines += operator_section(cls)
    lines += connection_section()
    lines += options_section()
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m devstack.gen_docs", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
