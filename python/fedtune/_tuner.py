"""``fedtune.Tuner``: a study run over a training function, Ray Tune's shape."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ._native import SearchSpace, Study, Trial, create_study


class Tuner:
    """Tunes ``model_fn(config, trial)`` over ``search_space``.

    ``model_fn`` trains with ``config`` (the trial's parameters, a dict) and returns its
    result: a number, or a dict with one entry per objective. It may call
    ``trial.report(step, value)`` after each epoch and raise ``fedtune.TrialPruned``
    when ``trial.should_prune()`` says the pruner would stop it.

    Strategies: ``"random"``, ``"grid"``, ``"tpe"``, ``"gp"`` and ``"bayes+rl"`` (the
    default). ``"bayes+rl"`` chooses each trial's values with Gaussian-process Bayesian
    optimisation and, within the trial, moves the parameters the space marks
    ``adaptive`` with a FedEx policy: after every ``trial.report(step, value)`` the
    values in use are rewarded with the improvement of ``value`` since the previous
    report, and the next step's values are drawn from the updated distribution
    (``trial.params`` gives them; ``config`` holds the trial's starting values). Without
    adaptive parameters it is the GP sampler alone.

    With ``storage`` the study is kept in a SQLite file, a PostgreSQL database or a
    JSON-lines journal; running the same ``Tuner`` again goes on with the stored study
    until it holds ``max_trials`` trials, never repeating finished trials' parameters.
    """

    def __init__(
        self,
        model_fn: Callable[[dict, Trial], Union[float, Mapping[str, float], Sequence[float]]],
        search_space: Union[SearchSpace, Mapping[str, Any]],
        max_trials: int = 50,
        strategy: str = "bayes+rl",
        directions: Union[Sequence[str], Mapping[str, str]] = ("maximize",),
        pruner: str = "none",
        storage: Optional[str] = None,
        study_name: str = "tune",
        seed: Optional[int] = None,
        timeout: Optional[float] = None,
        objective_names: Optional[Sequence[str]] = None,
        n_startup_trials: Optional[int] = None,
    ) -> None:
        if max_trials < 1:
            raise ValueError(f"max_trials must be at least 1, got {max_trials}")
        self.model_fn = model_fn
        self.max_trials = max_trials
        self.timeout = timeout
        if not isinstance(directions, Mapping):
            directions = list(directions)
        self.study: Study = create_study(
            search_space,
            directions=directions,
            sampler=strategy,
            pruner=pruner,
            storage=storage,
            study_name=study_name,
            load_if_exists=True,
            seed=seed,
            objective_names=list(objective_names) if objective_names is not None else None,
            n_startup_trials=n_startup_trials,
        )

    def run(self) -> dict:
        """Runs trials until the study holds ``max_trials`` (or ``timeout`` passes) and
        returns the best trial's parameters."""
        remaining = self.max_trials - len(self.study.trials)
        if remaining > 0:
            self.study.optimize(
                lambda trial: self.model_fn(dict(trial.params), trial),
                n_trials=remaining,
                timeout=self.timeout,
            )
        self.study.close()
        return dict(self.study.best_params)

    @property
    def best_trial(self):
        """The best complete trial."""
        return self.study.best_trial

    @property
    def trials(self):
        """Every trial of the study."""
        return self.study.trials
