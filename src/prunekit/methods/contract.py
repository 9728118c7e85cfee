"""The backend contract: what a training-kind handler receives and returns, and the verbs both backends share.

A handler of kind ``unstructured``, ``structured`` or ``dynamic`` is ``handler(job: TrainJob) ->
PruningRun``: it prunes ``job.model`` (a trained model of the handler's framework) by
``job.amount`` while training on ``job.x``/``job.y`` with ``job.options`` (the method's defaults
merged with the caller's overrides), and returns the plain pruned model. Other kinds define their
calling convention beside their code (``llm`` in :mod:`prunekit.torch.llm`, ``recover`` in the
backends' ``recover`` packages).

:class:`Backend` lists the verbs ``prunekit.torch.backend`` and ``prunekit.keras.backend`` both
implement with the same names, parameters and return types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class TrainJob:
    """The inputs of a training-kind handler.

    ``x``/``y`` are the training arrays (numpy, the layout the framework's model expects);
    ``options`` are complete (defaults merged, see :meth:`Method.options`).

    Example::

        job = TrainJob(model, split.x_train, split.y_train, 0.8, method.options("torch", epochs=2))
        run = method.handler("torch")(job)
    """

    model: Any
    x: Any
    y: Any
    amount: float
    options: dict[str, Any]
    seed: int = 0
    batch_size: int = 64
    progress: bool = False
    description: str = ""
    device: str | None = None
    #: where a handler that trains epoch by epoch checkpoints and resumes (``prunekit.torch.checkpoint.EpochCheckpoint``);
    #: handlers that cannot checkpoint ignore it
    checkpoint: Any = None


@dataclass
class PruningRun:
    """What pruning returns in both backends: the plain pruned model and how it got there.

    ``history`` holds one dict of metrics per epoch; ``sparsity`` is the achieved fraction of
    zeros over the pruned weights (for channel removal: the ratio removed); ``plan`` is the
    structured plan when channels were removed.
    """

    model: Any
    schedule: Any = None
    history: list[dict[str, float]] = field(default_factory=list)
    sparsity: float = 0.0
    plan: dict[str, Any] | None = None


@runtime_checkable
class Backend(Protocol):
    """The verbs both backends implement, with one name, one parameter list and one return type each.

    ``prunekit.torch.backend`` and ``prunekit.keras.backend`` are modules that satisfy this protocol
    (a test checks that both have every verb with the same parameter names). Arrays in, records out:
    a front end written against this protocol runs either framework.
    """

    name: str

    def is_model(self, obj: Any) -> bool: ...

    def clone(self, model: Any) -> Any: ...

    def fit(
        self, model: Any, x: Any, y: Any, *, epochs: int, lr: float, batch_size: int = 64, seed: int = 0, progress: bool = False
    ) -> list[dict[str, float]]: ...

    def predict(self, model: Any, x: Any) -> Any: ...

    def accuracy(self, model: Any, x: Any, y: Any) -> float: ...

    def summarize(self, model: Any, x: Any) -> Any: ...

    def measure(self, model: Any, x: Any) -> dict[str, Any]: ...

    def measure_latency(
        self, model: Any, sample_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 32), *, warmup: int = 5, repeats: int = 30
    ) -> list[Any]: ...

    def measure_sparse_runtime(self, model: Any, x: Any, batch_size: int = 1) -> dict[str, Any] | None: ...

    def export(self, model: Any, x: Any, path: Any, *, int8: bool = False, calibration: Any = None) -> dict[str, str]: ...

    def load_weights(self, path: str, factory: Any) -> Any: ...

    def save(self, model: Any, path: Any) -> str: ...

    def layers(self, model: Any) -> list[str]: ...

    def serialized_size(self, model: Any) -> dict[str, int]: ...

    def measure_peak_memory(self, model: Any, x: Any, batch_size: int = 1) -> Any: ...

    def prune_channels(self, model: Any, x: Any, ratio: float) -> Any: ...

    def analyze_sensitivity(
        self,
        model: Any,
        metric: Any,
        ratios: Sequence[float] = (0.25, 0.5, 0.75, 0.9),
        *,
        layers: Sequence[str] | None = None,
        method: str | None = None,
        prune: Any = None,
        example_inputs: Any = None,
        workers: int = 1,
        metric_name: str = "metric",
    ) -> Any: ...
