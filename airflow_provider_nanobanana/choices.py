"""Operator options whose values form a closed set (``on_bad_output``, ``on_budget_exhausted``)."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


def parse_choice(choices: type[E], value: object, field: str) -> E:
    """``value`` (a member or its value) as a member of ``choices``, or a ValueError naming the field
    and every allowed value, raised at DAG-parse time, before anything is sent."""
    try:
        return choices(value.value if isinstance(value, Enum) else value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in choices)
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}") from None
