"""Studies from Python: ask/tell, optimize, pruning, failures and Pareto fronts."""

import math

import pytest

import fedtune

SPACE = {"x": "uniform(-3, 3)", "y": "uniform(-3, 3)"}


def quadratic(trial):
    p = trial.params
    return (p["x"] - 1.0) ** 2 + (p["y"] + 0.5) ** 2


def test_ask_and_tell_minimise_a_quadratic_with_each_sampler():
    for sampler in ["random", "tpe", "gp", "grid"]:
        study = fedtune.create_study(SPACE, direction="minimize", sampler=sampler, seed=3)
        for _ in range(25):
            trial = study.ask()
            study.tell(trial, quadratic(trial))
        assert len(study.trials) == 25
        assert all(t.state == "complete" for t in study.trials)
        assert study.best_value == min(t.value for t in study.trials)
        assert study.best_trial.params == study.best_params
    # The model-based samplers beat random search on 25 trials of a smooth bowl.
    best = {}
    for sampler in ["random", "gp"]:
        study = fedtune.create_study(SPACE, sampler=sampler, seed=11)
        study.optimize(quadratic, n_trials=25)
        best[sampler] = study.best_value
    assert best["gp"] < best["random"]


def test_the_same_seed_gives_the_same_trials():
    runs = []
    for _ in range(2):
        study = fedtune.create_study(SPACE, sampler="tpe", seed=5)
        study.optimize(quadratic, n_trials=15)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]


def test_tell_refuses_what_does_not_fit_the_study():
    study = fedtune.create_study(SPACE, directions=["minimize", "maximize"])
    trial = study.ask()
    with pytest.raises(ValueError, match="expected 2 value"):
        study.tell(trial, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        study.tell(trial, [1.0, math.inf])
    with pytest.raises(ValueError, match="no `objective_1`"):
        study.tell(trial, {"objective_0": 1.0})
    with pytest.raises(ValueError, match="not one of complete, pruned, fail"):
        study.tell(trial, state="done")
    study.tell(trial, [1.0, 2.0])
    with pytest.raises(fedtune.FedtuneError, match="already"):
        study.tell(trial, [1.0, 2.0])
    with pytest.raises(fedtune.FedtuneError, match="no trial 7"):
        study.tell(7, [1.0, 2.0])


def test_several_objectives_give_a_pareto_front():
    study = fedtune.create_study(
        {"x": "uniform(0, 1)"}, directions={"accuracy": "maximize", "bytes": "minimize"}, seed=2
    )
    assert study.objective_names == ["accuracy", "bytes"]
    study.optimize(lambda t: {"accuracy": t.params["x"], "bytes": t.params["x"] ** 2 + 0.1}, n_trials=12)
    front = study.pareto_front()
    # Both objectives trade off monotonically: every complete trial is on the front.
    assert len(front) == 12
    assert [t.number for t in study.best_trials] == [t.number for t in front]


def test_enqueued_parameters_run_first():
    study = fedtune.create_study(SPACE, seed=1)
    study.enqueue_trial({"x": 1.0, "y": -0.5})
    trial = study.ask()
    assert trial.params == {"x": 1.0, "y": -0.5}
    with pytest.raises(ValueError, match="outside its distribution"):
        study.enqueue_trial({"x": 9.0, "y": 0.0})
    with pytest.raises(ValueError, match="lack `y`"):
        study.enqueue_trial({"x": 0.0})


def test_a_failing_objective_fails_its_trial_and_the_study_goes_on():
    def objective(trial):
        if trial.number == 1:
            raise RuntimeError("out of memory on the device")
        if trial.number == 2:
            return float("nan")
        if trial.number == 3:
            return None
        return quadratic(trial)

    study = fedtune.create_study(SPACE, seed=4)
    study.optimize(objective, n_trials=6)
    states = [t.state for t in study.trials]
    assert states == ["complete", "failed", "failed", "failed", "complete", "complete"]
    assert study.trials[1].fail_reason == "RuntimeError: out of memory on the device"
    assert "NaN" in study.trials[2].fail_reason
    assert "None" in study.trials[3].fail_reason


def test_an_exception_outside_catch_fails_the_trial_and_is_raised():
    def objective(trial):
        raise KeyError("missing column")

    study = fedtune.create_study(SPACE)
    with pytest.raises(KeyError):
        study.optimize(objective, n_trials=3, catch=(ValueError,))
    assert [t.state for t in study.trials] == ["failed"]


def test_asha_prunes_trials_whose_curves_trail():
    def objective(trial):
        # Curves ordered by x: the worse x, the lower the whole curve.
        quality = 1.0 - abs(trial.params["x"])
        for step in range(1, 28):
            trial.report(step, quality * step / 27)
            if trial.should_prune():
                raise fedtune.TrialPruned()
        return quality

    study = fedtune.create_study({"x": "uniform(-1, 1)"}, direction="maximize", pruner="asha", seed=9)
    study.optimize(objective, n_trials=30)
    pruned = [t for t in study.trials if t.state == "pruned"]
    complete = [t for t in study.trials if t.state == "complete"]
    assert len(pruned) >= 10, [t.state for t in study.trials]
    assert complete and pruned
    # A pruned trial kept the curve it reported up to the rung that stopped it.
    assert all(0 < len(t.intermediate_values) < 27 for t in pruned)
    assert max(t.value for t in complete) == study.best_value


def test_report_returns_the_pruners_decision_and_keeps_values():
    study = fedtune.create_study(SPACE, pruner="median")
    trial = study.ask()
    assert trial.report(0, 1.5) is False
    assert trial.should_prune() is False
    study.tell(trial, 1.0)
    assert study.trials[0].intermediate_values == {0: 1.5}


def test_optimize_needs_a_bound():
    study = fedtune.create_study(SPACE)
    with pytest.raises(ValueError, match="n_trials or timeout"):
        study.optimize(quadratic)
    study.optimize(quadratic, timeout=0.2)
    assert len(study.trials) >= 1


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="unknown sampler `cmaes`"):
        fedtune.create_study(SPACE, sampler="cmaes")
    with pytest.raises(ValueError, match="pruner"):
        fedtune.create_study(SPACE, pruner="hyperband")
    with pytest.raises(ValueError, match="neither"):
        fedtune.create_study(SPACE, direction="up")
    with pytest.raises(ValueError, match="not both"):
        fedtune.create_study(SPACE, direction="minimize", directions=["maximize"])


def test_trials_dataframe_has_optunas_columns():
    pandas = pytest.importorskip("pandas")
    study = fedtune.create_study(SPACE, seed=1)
    study.optimize(quadratic, n_trials=4)
    frame = study.trials_dataframe()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["number", "value", "params_x", "params_y", "state", "fail_reason"]
    assert list(frame["number"]) == [0, 1, 2, 3]


def test_the_tune_example_runs_and_resumes(tmp_path):
    import json
    import pathlib
    import subprocess
    import sys

    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "tune.py"
    command = [sys.executable, str(example), "--trials", "6", "--epochs", "4", "--storage", str(tmp_path / "s.db")]
    first = subprocess.run(command + ["--summary", str(tmp_path / "a.json")], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    summary = json.loads((tmp_path / "a.json").read_text())
    assert summary["trials"] == 6 and summary["best_value"] > 0.5
    assert set(summary["best_params"]) == {"learning_rate", "batch_size", "optimizer"}
    command[3] = "9"
    again = subprocess.run(command + ["--summary", str(tmp_path / "b.json")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "b.json").read_text())["trials"] == 9
