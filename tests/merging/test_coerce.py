"""The shared typed coercer and KEY=VALUE parser."""

import math
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from pactmerge.coerce import coerce, finite_float, parse_key_values


def test_scalars():
    assert coerce(3, int, "x") == 3
    assert coerce(3, float, "x") == 3.0 and isinstance(coerce(3, float, "x"), float)
    assert coerce("1e-5", float, "x") == 1e-5  # YAML 1.1 reads 1e-5 as a string
    assert coerce(True, bool, "x") is True
    assert coerce("a", str, "x") == "a"
    assert coerce({"a": [1]}, Any, "x") == {"a": [1]}


@pytest.mark.parametrize(
    "value, hint, needle",
    [
        (True, int, "expects an integer"),
        (1.5, int, "expects an integer"),
        ("3", int, "expects an integer"),
        (True, float, "expects a number"),
        ("abc", float, "expects a number"),
        (1, bool, "expects true or false"),
        (3, str, "expects a string"),
        ("fp7", Literal["32", "bf16-mixed"], "must be one of"),
        (1, Literal[True], "must be one of"),
    ],
)
def test_rejections_name_where(value, hint, needle):
    with pytest.raises(ValueError) as exc:
        coerce(value, hint, "config.yaml: key 'recipe.x'")
    assert str(exc.value).startswith("config.yaml: key 'recipe.x'") and needle in str(exc.value)


def test_containers_and_optional():
    assert coerce([1, 2], list[float], "x") == [1.0, 2.0]
    assert coerce([1, 2], tuple[int, ...], "x") == (1, 2)
    assert coerce([1, "a"], tuple[int, str], "x") == (1, "a")
    assert coerce(None, int | None, "x") is None
    assert coerce(4, int | None, "x") == 4
    assert coerce({"a": 1}, dict[str, float], "x") == {"a": 1.0}
    with pytest.raises(ValueError, match=r"x\[1\]: expects an integer"):
        coerce([1, "b"], list[int], "x")
    with pytest.raises(ValueError, match=r"x\.b: expects a number"):
        coerce({"a": 1, "b": "z"}, dict[str, float], "x")
    with pytest.raises(ValueError, match="expects int | None"):
        coerce("z", int | None, "x")
    with pytest.raises(ValueError, match="expects a list"):
        coerce(3, list[int], "x")
    with pytest.raises(ValueError, match="expects 2 items"):
        coerce([1], tuple[int, str], "x")


def test_dataclass_hook():
    @dataclass
    class Inner:
        a: int = 0

    hook = lambda cls, value, where: cls(**{k: coerce(v, int, f"{where}.{k}") for k, v in value.items()})
    assert coerce([{"a": 2}], list[Inner], "x", dataclass_hook=hook) == [Inner(2)]
    with pytest.raises(ValueError, match="expects a Inner"):
        coerce({"a": 2}, Inner, "x")


def test_finite_float():
    assert finite_float(2, "lr") == 2.0
    for bad in (math.nan, math.inf, -math.inf, ".nan"):
        with pytest.raises(ValueError, match="lr"):
            finite_float(bad, "lr")


def test_parse_key_values():
    assert parse_key_values(["K=15", "protect=self", "tau = 0.9", "x=[1, 2]", "y="], "--pact-param") == {
        "K": 15, "protect": "self", "tau": 0.9, "x": [1, 2], "y": None,
    }
    for bad, needle in (("K", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"), ("a=[1", "not valid YAML")):
        with pytest.raises(ValueError) as exc:
            parse_key_values([bad], "--pact-param")
        assert "--pact-param" in str(exc.value) and repr(bad) in str(exc.value) and needle in str(exc.value)
    with pytest.raises(ValueError, match="given twice"):
        parse_key_values(["K=1", "K=2"], "--pact-param")
