"""The shared config shapes: the strict base and bounded fields, as the JSON schema shows them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from training.config_fields import StrictConfig, chance, up_to


class Example(StrictConfig):
    p: float = chance("probability of x")
    q: float = chance("probability of y", default=0.5)
    s: float = up_to(0.3, 0.9, "strength of x")


def test_bounds_defaults_and_descriptions_reach_the_schema() -> None:
    props = Example.model_json_schema()["properties"]
    assert props["p"] == {
        "default": 0.0, "description": "probability of x", "maximum": 1.0, "minimum": 0.0,
        "title": "P", "type": "number",
    }  # fmt: skip
    assert props["q"]["default"] == 0.5 and props["q"]["maximum"] == 1.0
    assert (props["s"]["default"], props["s"]["minimum"], props["s"]["maximum"]) == (0.3, 0.0, 0.9)
    assert props["s"]["description"] == "strength of x"


@pytest.mark.parametrize(
    "values", [{"p": 1.5}, {"p": -0.1}, {"s": 0.95}, {"p": "0.5"}, {"unknown": 1}]
)
def test_out_of_bounds_coerced_or_unknown_values_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Example.model_validate(values)
