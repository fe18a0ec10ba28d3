"""The generic params loader (`owdfa.core.config.load_section`): a dataclass declares its own schema.

Toy dataclasses stand in for the stage configs, so each rule (types, bounds, choices, key paths,
unknown keys, optional keys, custom readers, cross-field checks) is tested once, by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from helpers.params_edit import DELETE, changed

from owdfa.core.config import Param, Section, check_keys, load_section, param, param_keys, read_params
from owdfa.core.errors import ConfigError


def _upper(section: Section, key: str) -> str:
    return section.str(key).upper()


@dataclass(frozen=True)
class Inner:
    rate: float = param(0.5, min=0.0, max=1.0)
    steps: int = param(3, min=1)


@dataclass(frozen=True)
class Plain:
    """No param metadata at all: read by type, bounds can come from `specs`."""

    rate: float = 0.5
    label: str = "a"


@dataclass(frozen=True)
class Toy:
    count: int = param(min=0, max=10)
    ratio: float = param(min=0.0, max=1.0)
    flag: bool = param()
    mode: str = param(choices=("fast", "exact"))
    note: str | None = param()
    sizes: tuple[int, int] = param(min=1, max=100)
    noise: tuple[float, float] = param(min=0.0, max=0.5)
    names: tuple[str, ...] = param()
    tags: list[str] = param()
    inner: Inner = param()
    real: int = param(min=1, key="budgets.real")
    novel: int = param(min=1, key="budgets.novel")
    shout: str = param(read=_upper)
    workers: int = param(0, min=0, optional=True)
    window: int = param(8, min=1, key="maps.window", optional=True)

    def validate(self, section: Section) -> None:
        if self.novel > self.real:
            raise ConfigError(section.key("budgets.novel"), f"must be <= budgets.real ({self.real}), got {self.novel}")


GOOD = {
    "count": 4,
    "ratio": 1,  # an integer is a number: read as 1.0
    "flag": True,
    "mode": "fast",
    "note": None,
    "sizes": [2, 8],
    "noise": [0, 0.25],
    "names": ["x", "y"],
    "tags": ["t"],
    "inner": {"rate": 0.25, "steps": 2},
    "budgets": {"real": 10, "novel": 4},
    "shout": "hey",
}


def load(data: dict, **kwargs) -> Toy:
    return load_section(Toy, Section(data, "stage"), **kwargs)


def expect_key(key: str, data: dict, problem: str = "", **kwargs) -> ConfigError:
    """Loading `data` fails with one line naming the dotted `key` (and saying `problem`)."""
    with pytest.raises(ConfigError) as info:
        load(data, **kwargs)
    assert info.value.key == key and "\n" not in str(info.value)
    assert problem in str(info.value)
    return info.value


def with_value(path: str, value: object) -> dict:
    """GOOD with the dotted `path` set to `value` (or removed when value is DELETE)."""
    return changed(GOOD, path, value)


def test_every_type_is_read_to_its_annotated_form():
    toy = load(GOOD)
    assert toy == Toy(
        count=4,
        ratio=1.0,
        flag=True,
        mode="fast",
        note=None,
        sizes=(2, 8),
        noise=(0.0, 0.25),
        names=("x", "y"),
        tags=["t"],
        inner=Inner(rate=0.25, steps=2),
        real=10,
        novel=4,
        shout="HEY",
        workers=0,
        window=8,
    )
    assert isinstance(toy.ratio, float) and isinstance(toy.noise[0], float)
    assert isinstance(toy.names, tuple) and isinstance(toy.tags, list)


@pytest.mark.parametrize(
    ("path", "value", "key", "problem"),
    [
        ("count", "4", "stage.count", "expected an integer"),
        ("count", 4.0, "stage.count", "expected an integer"),
        ("count", True, "stage.count", "expected an integer"),  # a bool is no integer here
        ("ratio", "0.5", "stage.ratio", "expected a number"),
        ("flag", "yes", "stage.flag", "expected true or false"),
        ("mode", 1, "stage.mode", "expected a string"),
        ("note", 3, "stage.note", "expected a string or null"),
        ("sizes", [1], "stage.sizes", "expected a list of two integers"),
        ("sizes", [1, 2.5], "stage.sizes", "expected a list of two integers"),
        ("noise", [0.1, "x"], "stage.noise", "expected a list of two numbers"),
        ("names", "x", "stage.names", "expected a list of strings"),
        ("tags", ["t", 1], "stage.tags", "expected a list of strings"),
        ("inner", [1], "stage.inner", "expected a mapping"),
        ("inner.steps", 1.5, "stage.inner.steps", "expected an integer"),
        ("budgets", 10, "stage.budgets", "expected a mapping"),
        ("budgets.real", "10", "stage.budgets.real", "expected an integer"),
        ("shout", 5, "stage.shout", "expected a string"),
        ("workers", -1, "stage.workers", "must be >= 0"),
    ],
)
def test_wrong_types_name_the_dotted_key(path, value, key, problem):
    expect_key(key, with_value(path, value), problem)


@pytest.mark.parametrize(
    ("path", "value", "key", "problem"),
    [
        ("count", -1, "stage.count", "must be >= 0, got -1"),
        ("count", 11, "stage.count", "must be <= 10, got 11"),
        ("ratio", 1.5, "stage.ratio", "must be <= 1.0, got 1.5"),
        ("sizes", [0, 8], "stage.sizes", "must be >= 1, got 0"),
        ("sizes", [8, 2], "stage.sizes", "low 8 is larger than high 2"),
        ("noise", [0.0, 0.6], "stage.noise", "must be <= 0.5, got 0.6"),
        ("inner.rate", -0.1, "stage.inner.rate", "must be >= 0.0, got -0.1"),
        ("budgets.real", 0, "stage.budgets.real", "must be >= 1, got 0"),
        ("maps", {"window": 0}, "stage.maps.window", "must be >= 1, got 0"),
    ],
)
def test_bounds_name_the_dotted_key(path, value, key, problem):
    expect_key(key, with_value(path, value), problem)


def test_choices():
    expect_key("stage.mode", with_value("mode", "slow"), "unknown value 'slow'; choose one of fast, exact")
    assert load(with_value("mode", "exact")).mode == "exact"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("path", "key"), [("ratio", "stage.ratio"), ("inner.rate", "stage.inner.rate"), ("noise", "stage.noise")]
)
def test_non_finite_numbers_are_rejected(path, key, value):
    bad = [0.0, value] if path == "noise" else value
    expect_key(key, with_value(path, bad), "must be a finite number")


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_yaml_nan_and_inf_are_rejected(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(f"stage:\n  inner:\n    rate: {text}\n    steps: 1\n")
    section = Section.from_file("stage", path)
    with pytest.raises(ConfigError, match="must be a finite number") as info:
        load_section(Inner, section.section("inner"))
    assert info.value.key == "stage.inner.rate"


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        ("cuont", 1, "stage.cuont"),  # top level
        ("inner.stpes", 1, "stage.inner.stpes"),  # a nested dataclass
        ("budgets.knwon", 1, "stage.budgets.knwon"),  # a mapping that key paths go through
        ("maps", {"widow": 4}, "stage.maps.widow"),  # an optional mapping, when given
    ],
)
def test_unknown_keys_are_typos(path, value, key):
    expect_key(key, with_value(path, value), "unknown key (typo?)")


def test_extra_keys_are_allowed_beside_the_fields():
    data = {**GOOD, "loss": "cal"}
    expect_key("stage.loss", data, "unknown key")
    assert load(data, extra_keys=("loss",)) == load(GOOD)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("count", "stage.count"),
        ("note", "stage.note"),  # str | None must still be given (null is a value)
        ("inner", "stage.inner"),
        ("inner.steps", "stage.inner.steps"),  # the code's default does not make a key optional
        ("budgets", "stage.budgets"),  # a missing mapping is named, not the key inside it
        ("budgets.novel", "stage.budgets.novel"),
    ],
)
def test_missing_keys(path, key):
    expect_key(key, with_value(path, DELETE), "missing key")


def test_optional_keys_take_the_field_default_even_below_a_missing_mapping():
    assert (load(GOOD).workers, load(GOOD).window) == (0, 8)
    given = load({**GOOD, "workers": 3, "maps": {"window": 16}})
    assert (given.workers, given.window) == (3, 16)
    assert load({**GOOD, "maps": {}}).window == 8


def test_validate_runs_after_the_fields_with_the_section():
    err = expect_key("stage.budgets.novel", with_value("budgets.novel", 11), "must be <= budgets.real (10), got 11")
    assert str(err).startswith("params.yaml: stage.budgets.novel:")


def test_specs_give_bounds_to_a_class_declared_without_them():
    section = Section({"rate": 2.0, "label": "b"}, "plain")
    assert load_section(Plain, section) == Plain(rate=2.0, label="b")  # read by type alone
    with pytest.raises(ConfigError, match="must be <= 1.0") as info:
        load_section(Plain, section, specs={"rate": Param(min=0.0, max=1.0)})
    assert info.value.key == "plain.rate"


def test_field_metadata_wins_over_specs():
    section = Section({"rate": 0.9, "steps": 2}, "inner")
    assert load_section(Inner, section, specs={"rate": Param(max=0.1)}).rate == 0.9


def test_read_params_reads_only_the_named_fields():
    section = Section({"count": 3, "ratio": 0.5}, "override")
    assert read_params(Toy, section, ["count", "ratio"]) == {"count": 3, "ratio": 0.5}
    with pytest.raises(ConfigError) as info:
        read_params(Toy, Section({"count": 30}, "override"), ["count"])
    assert info.value.key == "override.count"


def test_param_keys_and_check_keys():
    assert param_keys(Toy) == (
        "count",
        "ratio",
        "flag",
        "mode",
        "note",
        "sizes",
        "noise",
        "names",
        "tags",
        "inner",
        "budgets",
        "shout",
        "workers",
        "maps",
    )
    check_keys(Toy, Section(GOOD, "stage"))
    with pytest.raises(ConfigError) as info:
        check_keys(Toy, Section({"budgets": {"real": 1, "novle": 2}}, "stage"))
    assert info.value.key == "stage.budgets.novle"


@dataclass(frozen=True)
class Unreadable:
    when: complex = param()


def test_programming_errors_are_type_errors():
    with pytest.raises(TypeError, match="no params reader"):
        load_section(Unreadable, Section({"when": 1}, "s"))
    with pytest.raises(TypeError, match="needs a default"):
        param(optional=True)
    with pytest.raises(TypeError, match="not a dataclass"):
        load_section(dict, Section({}, "s"))


@dataclass(frozen=True)
class Nullable:
    """Fields typed `X | None`: null is None, any other value is read as `X` (bounds, choices, readers)."""

    seed: int | None = param(None, optional=True, min=0)
    mode: str | None = param(None, optional=True, choices=("fast", "exact"))
    shout: str | None = param(None, optional=True, read=_upper)


def test_a_nullable_field_reads_null_as_none_and_anything_else_as_its_type():
    assert load_section(Nullable, Section({}, "s")) == Nullable()
    assert load_section(Nullable, Section({"seed": None, "mode": None, "shout": None}, "s")) == Nullable()
    assert load_section(Nullable, Section({"seed": 3, "mode": "fast", "shout": "hi"}, "s")) == Nullable(3, "fast", "HI")
    for raw, key, problem in [
        ({"seed": -1}, "s.seed", "must be >= 0, got -1"),
        ({"seed": "3"}, "s.seed", "expected an integer, got '3'"),
        ({"mode": "slow"}, "s.mode", "unknown value 'slow'; choose one of fast, exact"),
        ({"mode": 3}, "s.mode", "expected a string or null, got 3"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_section(Nullable, Section(raw, "s"))
        assert (info.value.key, info.value.problem) == (key, problem)
