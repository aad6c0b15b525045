"""fedtune: federated hyperparameter tuning and fine-tuning, from Python.

The samplers (grid, random, TPE, GP, "bayes+rl"), pruners and studies run in Rust; Python
supplies the objective::

    import fedtune

    space = fedtune.SearchSpace({
        "learning_rate": "loguniform(1e-5, 1e-2)",
        "batch_size": "choice(16, 32, 64, 128)",
        "optimizer": "choice(adam, sgd)",
    })

    def train_model(config, trial):
        for epoch in range(10):
            accuracy = ...  # train one epoch with config["learning_rate"], ...
            trial.report(epoch, accuracy)
            if trial.should_prune():
                raise fedtune.TrialPruned()
        return accuracy

    tuner = fedtune.Tuner(model_fn=train_model, search_space=space, max_trials=50,
                          strategy="bayes+rl", directions=["maximize"], pruner="asha",
                          storage="study.db")
    best_config = tuner.run()

Or Optuna's ask/tell: ``study = fedtune.create_study(space, direction="maximize")``,
``trial = study.ask()``, ``study.tell(trial, value)``.

Agents whose training step is Python join a federation as ``fedtune-agent`` does::

    def fit(params, config, ctx):          # params: {tensor name: float32 numpy array}
        ...                                # train with config["learning_rate"], ...
        return new_params, len(x_train), {"loss": loss, "accuracy": accuracy}

    fedtune.Agent("agent.toml", fit=fit, evaluate=evaluate, train_samples=len(x_train)).run()
"""

from ._native import (
    Agent,
    Context,
    DuplicatedStudyError,
    FedtuneError,
    FrozenTrial,
    SearchSpace,
    StorageError,
    Study,
    Trial,
    TrialPruned,
    __version__,
    create_study,
    simulate,
    split,
)
from ._safetensors import load_safetensors, save_safetensors
from ._tuner import Tuner

__all__ = [
    "Agent",
    "Context",
    "DuplicatedStudyError",
    "FedtuneError",
    "FrozenTrial",
    "SearchSpace",
    "StorageError",
    "Study",
    "Trial",
    "TrialPruned",
    "Tuner",
    "__version__",
    "create_study",
    "load_safetensors",
    "save_safetensors",
    "simulate",
    "split",
]
