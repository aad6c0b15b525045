"""Studies kept in SQLite files and journals: resume, duplicates, interrupts, and the
dashboard reading a Python study."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

import fedtune

SPACE = {"x": "uniform(-3, 3)", "lr": "loguniform(1e-4, 1e-1)", "opt": "choice(adam, sgd)"}


def objective(trial):
    return (trial.params["x"] - 0.5) ** 2 + (0.0 if trial.params["opt"] == "adam" else 0.3)


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random"])
@pytest.mark.parametrize("suffix", [".db", ".jsonl"])
def test_a_resumed_study_keeps_its_trials_and_never_repeats_them(tmp_path, sampler, suffix):
    storage = str(tmp_path / f"study{suffix}")
    first = fedtune.create_study(SPACE, sampler=sampler, storage=storage, study_name="s", seed=7)
    first.optimize(objective, n_trials=12)
    first.close()
    earlier = [t.params for t in first.trials]
    del first

    again = fedtune.create_study(
        SPACE, sampler=sampler, storage=storage, study_name="s", seed=7, load_if_exists=True
    )
    assert [t.params for t in again.trials] == earlier
    again.optimize(objective, n_trials=12)
    later = [t.params for t in again.trials][12:]
    assert len(again.trials) == 24
    assert not [p for p in later if p in earlier], "a resumed study proposed a finished trial's parameters again"


@pytest.mark.parametrize("suffix", [".db", ".jsonl"])
def test_an_existing_study_is_refused_unless_loaded(tmp_path, suffix):
    storage = str(tmp_path / f"study{suffix}")
    study = fedtune.create_study(SPACE, storage=storage, study_name="s")
    study.optimize(objective, n_trials=2)
    with pytest.raises(fedtune.DuplicatedStudyError, match="load_if_exists"):
        fedtune.create_study(SPACE, storage=storage, study_name="s")


def test_a_study_with_another_space_under_the_same_name_is_refused(tmp_path):
    storage = str(tmp_path / "study.db")
    fedtune.create_study(SPACE, storage=storage, study_name="s").optimize(objective, n_trials=1)
    with pytest.raises(fedtune.StorageError, match="another search space"):
        fedtune.create_study({"y": "uniform(0, 1)"}, storage=storage, study_name="s", load_if_exists=True)


def test_a_sqlite_url_and_a_path_name_the_same_store(tmp_path):
    path = tmp_path / "study.db"
    fedtune.create_study(SPACE, storage=str(path), study_name="s").optimize(objective, n_trials=3)
    again = fedtune.create_study(SPACE, storage=f"sqlite:///{path}", study_name="s", load_if_exists=True)
    assert len(again.trials) == 3


def run_status(path, name):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT status FROM runs WHERE name = ? ORDER BY id DESC", (name,)).fetchone()[0]


def test_keyboard_interrupt_stops_the_study_with_every_finished_trial_stored(tmp_path):
    path = tmp_path / "study.db"

    def interrupted(trial):
        if trial.number == 3:
            raise KeyboardInterrupt
        return objective(trial)

    study = fedtune.create_study(SPACE, storage=str(path), study_name="s", seed=1)
    with pytest.raises(KeyboardInterrupt):
        study.optimize(interrupted, n_trials=10)
    assert run_status(path, "s") == "interrupted"
    again = fedtune.create_study(SPACE, storage=str(path), study_name="s", load_if_exists=True)
    assert [t.state for t in again.trials] == ["complete"] * 3 + ["failed"]
    assert again.trials[3].fail_reason == "interrupted by KeyboardInterrupt"


def test_ctrl_c_in_a_real_process_stores_every_finished_trial(tmp_path):
    path = tmp_path / "study.db"
    script = textwrap.dedent(
        f"""
        import time, fedtune
        def objective(trial):
            time.sleep(0.2)
            return trial.params["x"] ** 2
        study = fedtune.create_study({{"x": "uniform(-1, 1)"}}, storage={str(path)!r}, study_name="s")
        print("started", flush=True)
        study.optimize(objective, n_trials=1000)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"started"
    time.sleep(1.5)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode != 0
    assert b"KeyboardInterrupt" in stderr
    assert run_status(path, "s") == "interrupted"
    with sqlite3.connect(path) as db:
        states = [s for (s,) in db.execute("SELECT state FROM trials ORDER BY number")]
    assert states.count("complete") >= 3
    assert states[-1] == "failed" and "running" not in states


def test_the_tuner_goes_on_with_its_study_until_it_holds_max_trials(tmp_path):
    storage = str(tmp_path / "tune.db")
    calls = []

    def train(config, trial):
        calls.append(config)
        return -objective(trial)

    best = fedtune.Tuner(train, SPACE, max_trials=8, strategy="tpe", storage=storage, seed=3).run()
    assert len(calls) == 8 and set(best) == set(SPACE)
    tuner = fedtune.Tuner(train, SPACE, max_trials=13, strategy="tpe", storage=storage, seed=3)
    tuner.run()
    assert len(calls) == 13 and len(tuner.trials) == 13
    assert run_status(tmp_path / "tune.db", "tune") == "finished"


def test_the_dashboard_shows_a_python_study_as_it_runs(tmp_path, aggregator_bin):
    path = tmp_path / "study.db"
    study = fedtune.create_study(SPACE, storage=str(path), study_name="from-python", seed=2)
    study.optimize(objective, n_trials=5)
    dashboard = subprocess.Popen(
        [aggregator_bin, "dashboard", "--db", str(path), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = dashboard.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        base = line[line.index("http://") :].split()[0]

        def get(path):
            with urllib.request.urlopen(base + path, timeout=10) as response:
                return response.read().decode()

        runs = json.loads(get("/api/runs"))
        assert [(r["name"], r["kind"], r["status"]) for r in runs] == [("from-python", "study", "running")]
        run = runs[0]["id"]
        assert len(json.loads(get(f"/api/studies/{run}/trials"))) == 5
        study.optimize(objective, n_trials=3)
        trials = json.loads(get(f"/api/studies/{run}/trials"))
        assert [t["number"] for t in trials] == list(range(8))
        assert trials[7]["params"] == study.trials[7].params
        assert get(f"/studies/{run}").count('data-testid="trial-row"') == 8
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)


@pytest.mark.skipif(
    not os.environ.get("FEDTUNE_TEST_POSTGRES_URL"),
    reason="needs a PostgreSQL server: .ci/test starts one (FEDTUNE_TEST_POSTGRES_URL)",
)
def test_a_study_in_postgresql_resumes_like_one_in_sqlite():
    url = os.environ["FEDTUNE_TEST_POSTGRES_URL"]
    name = f"python-{os.getpid()}-{time.time_ns()}"
    first = fedtune.create_study(SPACE, storage=url, study_name=name, seed=5)
    first.optimize(objective, n_trials=6)
    first.close()
    again = fedtune.create_study(SPACE, storage=url, study_name=name, seed=5, load_if_exists=True)
    assert [t.params for t in again.trials] == [t.params for t in first.trials]
    again.optimize(objective, n_trials=4)
    assert len(again.trials) == 10
    assert not [t for t in again.trials[6:] if t.params in [f.params for f in first.trials]]
