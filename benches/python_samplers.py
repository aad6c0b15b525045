#!/usr/bin/env python3
"""fedtune's GP and TPE samplers driven from Python, side by side with Optuna's.

Runs fedtune's ``gp`` and ``tpe`` samplers (through the ``fedtune`` Python package)
and Optuna 5's ``GPSampler`` and ``TPESampler`` on the six public HPO objectives of
``data/hpo/`` (imported from ``objectives_public.py``), with the protocol of
``data/hpo/README.md``: one sequential ask/tell study of 50 trials per sampler,
objective and seed (seeds 0..9, as ``optuna_public_results.json``), minimised. Every
sampler gets its seed and the default number of random start-up trials (10).

It reports, per sampler:

* the median over seeds of the best value after the last trial, per objective;
* the mean over objectives of the normalised regret of ``data/hpo/score.py``:
  ``NR = (median best - optimum) / (median optuna/random best - optimum)``
  (0 = optimum found, 1 = no better than random search), the random reference being
  Optuna's ``RandomSampler`` runs in ``optuna_public_results.json`` at the same trial;
* the time per trial including the Python boundary: wall time of the whole trial
  loop (ask, suggest, the objective call, tell) divided by the number of trials,
  summed over all studies; each sampler first runs one untimed study so that lazy
  imports (torch for Optuna's GP) are not counted;

and the time ratios fedtune-gp / optuna-gp and fedtune-tpe / optuna-tpe. Optuna is
only needed for the ``optuna-*`` samplers and is not a dependency of fedtune or CI.
Times are only meaningful with fedtune built with the release profile (what
``pip install ./python`` does): the dev-profile build that ``.ci/python`` installs in
``target/python-venv`` leaves fedtune's own crates unoptimised. Optuna's GP uses torch
with its default number of threads; fedtune's samplers use one.

Setup, in a fresh virtual environment. Optuna's GPSampler needs torch and scipy, and
greenlet for its batched L-BFGS-B (without it, it warns and optimises sequentially, more
slowly; the reference runs had it). The PyPI torch wheel is large (a few minutes):

    python3 -m venv /tmp/bench
    /tmp/bench/bin/pip install ./python "optuna==5.*" scipy torch greenlet

Usage (from the repository root):

    /tmp/bench/bin/python benches/python_samplers.py --summary out.json
    /tmp/bench/bin/python benches/python_samplers.py --seeds 3 --objectives branin,hp_mlp \\
        --samplers fedtune-gp,optuna-gp

``--summary PATH`` writes the figures as JSON; ``--results PATH`` writes every run in
the ``hpo-bench-results/1`` schema, which ``data/hpo/score.py`` scores:

    python3 data/hpo/score.py results.json data/hpo/optuna_public_results.json

Not run by ``cargo bench`` or CI.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HPO_DIR = Path(__file__).resolve().parent.parent / "data" / "hpo"
sys.dont_write_bytecode = True  # no __pycache__ in data/hpo
sys.path.insert(0, str(HPO_DIR))
import objectives_public as objectives  # noqa: E402

REFERENCE = HPO_DIR / "optuna_public_results.json"
SAMPLERS = ("fedtune-gp", "fedtune-tpe", "optuna-gp", "optuna-tpe")
RATIOS = (("fedtune-gp", "optuna-gp"), ("fedtune-tpe", "optuna-tpe"))
CHECKPOINTS = (10, 20, 32, 50)


# --------------------------------------------------------------------------- samplers


def fedtune_space(spec: dict) -> dict:
    """The objective's space in fedtune's textual forms ("uniform(0, 1)", ...)."""

    def text(param: dict) -> str:
        if param["type"] == "categorical":
            return f"choice({', '.join(param['choices'])})"
        if param["type"] == "int":
            kind = "intlog" if param["log"] else "int"
            return f"{kind}({param['low']}, {param['high']})"
        kind = "loguniform" if param["log"] else "uniform"
        return f"{kind}({param['low']!r}, {param['high']!r})"

    return {param["name"]: text(param) for param in spec["params"]}


def suggest(trial, param: dict):
    """One parameter of the spec drawn through Optuna's ``trial.suggest_*``."""
    name = param["name"]
    if param["type"] == "categorical":
        return trial.suggest_categorical(name, param["choices"])
    if param["type"] == "int":
        return trial.suggest_int(name, param["low"], param["high"], log=param["log"])
    return trial.suggest_float(name, param["low"], param["high"], log=param["log"])


def run_fedtune(sampler: str, spec: dict, seed: int, trials: int):
    """The values of one fedtune study, in trial order, and the loop's wall time."""
    import fedtune

    space = fedtune.SearchSpace(fedtune_space(spec))
    study = fedtune.create_study(space, direction="minimize", sampler=sampler, seed=seed)
    values = []
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        value = objectives.evaluate(spec["name"], trial.params)
        study.tell(trial, value)
        values.append(value)
    return values, time.perf_counter() - start


def run_optuna(sampler: str, spec: dict, seed: int, trials: int):
    """The values of one Optuna study, in trial order, and the loop's wall time."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=getattr(optuna.samplers, sampler)(seed=seed))
    values = []
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        value = objectives.evaluate(spec["name"], {p["name"]: suggest(trial, p) for p in spec["params"]})
        study.tell(trial, value)
        values.append(value)
    return values, time.perf_counter() - start


RUNNERS = {
    "fedtune-gp": functools.partial(run_fedtune, "gp"),
    "fedtune-tpe": functools.partial(run_fedtune, "tpe"),
    "optuna-gp": functools.partial(run_optuna, "GPSampler"),
    "optuna-tpe": functools.partial(run_optuna, "TPESampler"),
}


# --------------------------------------------------------------------------- runs and figures


def run_all(samplers, names, seeds, trials) -> dict:
    """``runs[sampler][objective]``: one ``{"seed", "best_so_far", "seconds"}`` per seed."""
    runs = {}
    for sampler in samplers:
        runner = RUNNERS[sampler]
        runner(objectives.SPEC_BY_NAME[names[0]], 0, trials)  # untimed warm-up
        runs[sampler] = {}
        for name in names:
            spec = objectives.SPEC_BY_NAME[name]
            runs[sampler][name] = []
            for seed in seeds:
                values, seconds = runner(spec, seed, trials)
                best = list(itertools.accumulate(values, min))
                runs[sampler][name].append({"seed": seed, "best_so_far": best, "seconds": seconds})
            per_trial = sum(r["seconds"] for r in runs[sampler][name]) / (len(seeds) * trials)
            print(f"  {sampler:12} {name:15} {per_trial * 1e3:9.2f} ms/trial", file=sys.stderr, flush=True)
    return runs


def random_medians(names, trials) -> dict:
    """Median over seeds of Optuna random search's best after ``trials`` trials."""
    with open(REFERENCE) as fh:
        results = json.load(fh)["results"]
    return {
        name: statistics.median(r["best_so_far"][trials - 1] for r in results[name]["random"]["seeds"].values())
        for name in names
    }


def normalised_regret(best: float, optimum: float, random_best: float) -> float:
    """score.py's NR: 0 at the optimum, 1 as good as random search."""
    span = random_best - optimum
    if span > 0:
        return (best - optimum) / span
    return 0.0 if best <= optimum else float("inf")


def summarise(runs: dict, names, trials) -> dict:
    """The figures of every sampler, and the time ratios of fedtune's to Optuna's."""
    reference = random_medians(names, trials)
    samplers = []
    for sampler, per_objective in runs.items():
        median_best = {
            name: statistics.median(r["best_so_far"][-1] for r in per_objective[name]) for name in names
        }
        regret = {
            name: normalised_regret(median_best[name], objectives.SPEC_BY_NAME[name]["optimum"], reference[name])
            for name in names
        }
        seconds = {
            name: sum(r["seconds"] for r in per_objective[name]) / (len(per_objective[name]) * trials)
            for name in names
        }
        samplers.append({
            "name": sampler,
            "seconds_per_trial": statistics.mean(seconds.values()),
            "mean_normalised_regret": statistics.mean(regret.values()),
            "median_best": median_best,
            "normalised_regret": regret,
            "seconds_per_trial_by_objective": seconds,
        })
    by_name = {s["name"]: s for s in samplers}
    ratios = {
        f"{ours}/{theirs}": by_name[ours]["seconds_per_trial"] / by_name[theirs]["seconds_per_trial"]
        for ours, theirs in RATIOS
        if ours in by_name and theirs in by_name
    }
    return {"samplers": samplers, "ratios": ratios}


def environment(load_before: float) -> dict:
    """Interpreter, packages and machine load (1-minute average) of the measurement."""
    found = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
    }
    for package in ("fedtune", "optuna", "torch", "scipy", "numpy"):
        try:
            found[package] = __import__(package).__version__
        except ImportError:
            pass
    return found


# --------------------------------------------------------------------------- output


def print_tables(summary: dict, names, seeds, trials) -> None:
    """Median best per objective, then regret and time per sampler, then the ratios."""
    samplers = summary["samplers"]
    width = max(15, *(len(s["name"]) for s in samplers))
    head = f"{'':16}" + "".join(f"  {s['name']:>{width}}" for s in samplers)

    print(f"median best@{trials} over {len(seeds)} seeds (normalised regret)")
    print(head)
    for name in names:
        cells = (f"{s['median_best'][name]:.4g} ({s['normalised_regret'][name]:.2f})" for s in samplers)
        print(f"{name:16}" + "".join(f"  {c:>{width}}" for c in cells))
    print()
    print("ms per trial (whole loop, Python boundary included)")
    print(head)
    for name in names:
        times = (s["seconds_per_trial_by_objective"][name] * 1e3 for s in samplers)
        print(f"{name:16}" + "".join(f"  {t:>{width}.3f}" for t in times))
    print()
    print(f"{'mean NR':16}" + "".join(f"  {s['mean_normalised_regret']:>{width}.3f}" for s in samplers))
    print(f"{'ms per trial':16}" + "".join(f"  {s['seconds_per_trial'] * 1e3:>{width}.3f}" for s in samplers))
    print()
    by_name = {s["name"]: s for s in samplers}
    for ratio, value in summary["ratios"].items():
        ours, theirs = (by_name[name]["mean_normalised_regret"] for name in ratio.split("/"))
        print(f"{ratio}: time {value:.4f} (1/{1 / value:.0f}), mean NR {ours:.3f} vs {theirs:.3f}")


def results_document(runs: dict, trials: int) -> dict:
    """The runs in data/hpo's ``hpo-bench-results/1`` schema (tuner "python-api")."""
    results = {}
    for sampler, per_objective in runs.items():
        for name, seed_runs in per_objective.items():
            results.setdefault(name, {})[sampler] = {"seeds": {
                str(r["seed"]): {
                    "best_so_far": r["best_so_far"],
                    "curve": {str(k): r["best_so_far"][k - 1] for k in CHECKPOINTS if k <= trials},
                    "overhead_ms_mean": r["seconds"] / trials * 1e3,
                }
                for r in seed_runs
            }}
    return {"schema": "hpo-bench-results/1", "tuner": "python-api", "budget": trials, "results": results}


def comma_list(allowed):
    """An argparse type: a comma-separated, non-empty subset of ``allowed``."""

    def parse(text: str):
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(allowed)}")
        return items

    return parse


def main(argv=None) -> int:
    names = [spec["name"] for spec in objectives.SPECS]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10, as the reference)")
    parser.add_argument("--trials", type=int, default=50, help="trials per study, 1..50 (default 50)")
    parser.add_argument("--objectives", type=comma_list(names), default=names, help="default: all six")
    parser.add_argument("--samplers", type=comma_list(SAMPLERS), default=list(SAMPLERS), help="default: all four")
    parser.add_argument("--summary", type=Path, help="write the figures here as JSON")
    parser.add_argument("--results", type=Path, help="write every run here (hpo-bench-results/1, for score.py)")
    args = parser.parse_args(argv)
    if not 1 <= args.trials <= 50:
        parser.error("--trials must be within 1..50 (the random-search reference has 50 trials)")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    seeds = list(range(args.seeds))
    load_before = os.getloadavg()[0]
    runs = run_all(args.samplers, args.objectives, seeds, args.trials)
    summary = summarise(runs, args.objectives, args.trials)
    print_tables(summary, args.objectives, seeds, args.trials)

    if args.summary:
        document = {"seeds": seeds, "trials": args.trials, "environment": environment(load_before), **summary}
        args.summary.write_text(json.dumps(document, indent=1) + "\n")
    if args.results:
        args.results.write_text(json.dumps(results_document(runs, args.trials)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
