"""``choices.py``: a closed-set option is parsed from its value or member, or refused by name."""

from __future__ import annotations

import re
from enum import Enum

import pytest

from airflow_provider_nanobanana.choices import parse_choice


class Colour(str, Enum):
    RED = "red"
    BLUE = "blue"


class Other(str, Enum):
    RED = "red"


@pytest.mark.parametrize("value", ["red", Colour.RED, Other.RED])
def test_a_value_or_a_member_with_that_value_parses(value: object) -> None:
    assert parse_choice(Colour, value, "colour") is Colour.RED


@pytest.mark.parametrize("value", ["green", None, 3, "RED"])
def test_anything_else_names_the_field_and_every_allowed_value(value: object) -> None:
    expected = f"colour must be one of 'red', 'blue', got {value!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        parse_choice(Colour, value, "colour")
