"""The search-space language from Python, and its errors."""

import pytest

import fedtune
from conftest import ROOT


def test_every_textual_form_parses_and_prints_back():
    forms = {
        "lr": "loguniform(1e-05, 0.01)",
        "dropout": "uniform(0.0, 0.5)",
        "grid": "uniform(0.0, 1.0, step=0.25)",
        "epochs": "int(1, 5)",
        "width": "int(16, 512, step=16)",
        "batch": "intlog(16, 512)",
        "size": "choice(16, 32, 64, 128)",
        "optimizer": "choice(adam, sgd)",
    }
    space = fedtune.SearchSpace(forms)
    assert space.names == list(forms)
    assert len(space) == len(forms) and "lr" in space and "nope" not in space
    assert fedtune.SearchSpace(space.to_dict()) == space


def test_lists_and_tables_are_the_other_forms():
    space = fedtune.SearchSpace(
        {
            "optimizer": ["adam", "sgd"],
            "batch": (16, 32),
            "lr": {"spec": "loguniform(1e-4, 1e-1)", "adaptive": True},
            "momentum": {"type": "float", "low": 0.0, "high": 0.99},
        }
    )
    assert space.adaptive == ["lr"]
    assert space.to_dict()["optimizer"] == "choice(adam, sgd)"
    assert space.to_dict()["lr"] == {"spec": "loguniform(0.0001, 0.1)", "adaptive": True}


@pytest.mark.parametrize(
    "value, words",
    [
        ("uniform(5, 1)", "parameter `x`: low (5) must be below high (1)"),
        ("loguniform(0, 1)", "parameter `x`"),
        ("uniform(0, 1", "parameter `x`"),
        ("gaussian(0, 1)", "parameter `x`"),
        ([], "parameter `x`"),
        ({"type": "float", "low": 1}, "needs `high`"),
        ({"spec": "int(1, 5)", "colour": "red"}, "unknown field `colour`"),
        (3.5, "expected a distribution"),
    ],
)
def test_a_bad_space_is_a_value_error_naming_the_parameter(value, words):
    with pytest.raises(ValueError) as refused:
        fedtune.SearchSpace({"x": value})
    assert words in str(refused.value)


def test_a_space_reads_from_the_toml_presets():
    space = fedtune.SearchSpace.from_toml(ROOT / "presets" / "tabular.toml")
    assert len(space) > 0
    with pytest.raises(OSError):
        fedtune.SearchSpace.from_toml(ROOT / "presets" / "missing.toml")
