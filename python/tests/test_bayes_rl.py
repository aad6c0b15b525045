""""bayes+rl" outside a federation: a GP between trials, and within each trial a FedEx
policy over the adaptive parameters, rewarded by the values the objective reports."""

import math

import fedtune

SPACE = {
    "lr": {"spec": "loguniform(1e-4, 1e-1)", "adaptive": True},
    "width": "int(8, 64)",
}


def test_the_policy_moves_adaptive_values_towards_what_improves_the_reports():
    study = fedtune.create_study(SPACE, direction="maximize", sampler="bayes+rl", seed=4)
    study.enqueue_trial({"lr": 1e-3, "width": 32})
    trial = study.ask()
    assert trial.suggested_params == {"lr": 1e-3, "width": 32}
    # Progress per step is fastest at lr = 2e-3, the highest of the five arms spread
    # around 1e-3 (x 2^-1 ... x 2^1): the policy should come to favour it.
    target = 2e-3
    seen = set()
    total = 0.0
    for step in range(60):
        lr = trial.params["lr"]
        assert trial.params["width"] == 32, "only adaptive parameters move"
        seen.add(lr)
        total += 1.0 - abs(math.log2(lr / target))
        trial.report(step, total)
    assert len(seen) > 1, "the policy never drew another value"
    assert min(seen) >= 1e-4 and max(seen) <= 1e-1
    assert math.isclose(trial.policy_best["lr"], target, rel_tol=1e-9), trial.policy_best
    study.tell(trial, total)
    # The study records what the sampler proposed; the policy's values are the trial's own.
    assert study.trials[0].params == {"lr": 1e-3, "width": 32}


def test_without_adaptive_parameters_bayes_rl_is_the_gp_alone():
    fixed = {"lr": "loguniform(1e-4, 1e-1)", "width": "int(8, 64)"}
    runs = []
    for sampler in ["bayes+rl", "gp"]:
        study = fedtune.create_study(fixed, sampler=sampler, seed=6)
        study.optimize(lambda t: (math.log10(t.params["lr"]) + 2.5) ** 2 + t.params["width"] / 64, n_trials=14)
        runs.append([t.params for t in study.trials])
        trial = study.ask()
        trial.report(0, 1.0)
        assert trial.params == trial.suggested_params
    assert runs[0] == runs[1]


def test_the_tuner_hands_the_policys_values_to_the_training_function():
    drawn = []

    def train(config, trial):
        value = 0.0
        for step in range(8):
            drawn.append(trial.params["lr"])
            value += -abs(math.log10(trial.params["lr"]) + 2.0)
            trial.report(step, value)
        return value

    best = fedtune.Tuner(train, SPACE, max_trials=4, strategy="bayes+rl", seed=2).run()
    assert set(best) == {"lr", "width"}
    assert len(set(drawn)) > 4
