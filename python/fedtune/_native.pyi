"""Type stubs of fedtune's native module (the classes `fedtune` re-exports)."""

from os import PathLike
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

Value = Union[float, int, bool, str]
Params = dict[str, Value]
Objectives = Union[float, Sequence[float], Mapping[str, float]]
Tensors = dict[str, npt.NDArray[np.float32]]

class FedtuneError(Exception): ...
class DuplicatedStudyError(FedtuneError): ...
class StorageError(FedtuneError): ...
class TrialPruned(FedtuneError): ...

class SearchSpace:
    """Named hyperparameters and their distributions (see the class docstring)."""

    def __init__(self, params: Mapping[str, Union[str, Sequence[Value], Mapping[str, Any]]]) -> None: ...
    @staticmethod
    def from_toml(path: Union[str, PathLike[str]]) -> SearchSpace: ...
    @property
    def names(self) -> list[str]: ...
    @property
    def adaptive(self) -> list[str]: ...
    def to_dict(self) -> dict[str, Union[str, dict[str, Any]]]: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: str) -> bool: ...

class FrozenTrial:
    number: int
    state: str
    params: Params
    values: Optional[list[float]]
    value: Optional[float]
    intermediate_values: dict[int, Union[float, list[float]]]
    fail_reason: Optional[str]
    feasible: bool

class Trial:
    @property
    def number(self) -> int: ...
    @property
    def params(self) -> Params: ...
    @property
    def suggested_params(self) -> Params: ...
    @property
    def policy_best(self) -> Params: ...
    @property
    def study(self) -> Study: ...
    def report(self, step: int, value: Objectives) -> bool: ...
    def should_prune(self) -> bool: ...

class Study:
    def ask(self) -> Trial: ...
    def tell(
        self,
        trial: Union[Trial, int],
        values: Optional[Objectives] = None,
        state: Optional[str] = None,
        fail_reason: Optional[str] = None,
    ) -> FrozenTrial: ...
    def optimize(
        self,
        func: Callable[[Trial], Optional[Objectives]],
        n_trials: Optional[int] = None,
        timeout: Optional[float] = None,
        catch: Union[type[BaseException], Tuple[type[BaseException], ...], None] = None,
        callbacks: Optional[Sequence[Callable[[Study, FrozenTrial], None]]] = None,
    ) -> None: ...
    def enqueue_trial(self, params: Mapping[str, Value]) -> None: ...
    @property
    def trials(self) -> list[FrozenTrial]: ...
    @property
    def best_trial(self) -> FrozenTrial: ...
    @property
    def best_params(self) -> Params: ...
    @property
    def best_value(self) -> float: ...
    @property
    def best_trials(self) -> list[FrozenTrial]: ...
    def pareto_front(self) -> list[FrozenTrial]: ...
    @property
    def study_name(self) -> str: ...
    @property
    def directions(self) -> list[str]: ...
    @property
    def objective_names(self) -> list[str]: ...
    @property
    def search_space(self) -> SearchSpace: ...
    @property
    def sampler(self) -> str: ...
    @property
    def pruner(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def run_id(self) -> Optional[int]: ...
    def close(self, status: str = "finished") -> None: ...
    def trials_dataframe(self) -> Any: ...
    def __enter__(self) -> Study: ...
    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool: ...

def create_study(
    search_space: Union[SearchSpace, Mapping[str, Any]],
    *,
    direction: Optional[str] = None,
    directions: Union[Sequence[str], Mapping[str, str], None] = None,
    sampler: str = "tpe",
    pruner: str = "none",
    storage: Optional[str] = None,
    study_name: Optional[str] = None,
    load_if_exists: bool = False,
    seed: Optional[int] = None,
    objective_names: Optional[Sequence[str]] = None,
    n_startup_trials: Optional[int] = None,
) -> Study: ...

class Context:
    trial: int
    round: int
    seed: int
    frozen: Tensors
    def cancelled(self) -> bool: ...
    def time_left(self) -> Optional[float]: ...

FitResult = Union[Tuple[Tensors, int], Tuple[Tensors, int, Mapping[str, float]]]

class Agent:
    def __init__(
        self,
        config: Union[str, PathLike[str]],
        fit: Callable[[Tensors, dict[str, Any], Context], FitResult],
        evaluate: Optional[Callable[[Tensors], Tuple[float, float, int]]] = None,
        *,
        train_samples: int = 0,
        validation_samples: int = 0,
        name: Optional[str] = None,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    def run(self) -> str: ...

def simulate(
    aggregator: Union[str, PathLike[str]],
    agents: Iterable[Any],
    *,
    rounds: Optional[int] = None,
) -> dict[str, Any]: ...

def split(
    labels: npt.NDArray[np.int64],
    clients: int,
    partition: str = "dirichlet:0.5",
    seed: int = 0,
) -> dict[str, Any]: ...
