"""The method registry and the backend contract: the shape every pruning and recovery method plugs into.

Example::

    from prunekit.methods import get_method, list_methods

    [m.name for m in list_methods(kind="unstructured")]
    run = get_method("gradual").handler("torch")(job)
"""

from prunekit.methods.contract import Backend, PruningRun, TrainJob
from prunekit.methods.record import FRAMEWORKS, KINDS, Method
from prunekit.methods.recover import RecoverJob, RecoveryRun
from prunekit.methods.registry import (
    ENTRY_POINT_GROUP,
    default_method,
    get_method,
    list_methods,
    method_names,
    register,
    unregister,
)
from prunekit.methods.run import TRAINING_KINDS, load_backend, run_method, run_recovery

__all__ = [
    "Backend",
    "ENTRY_POINT_GROUP",
    "FRAMEWORKS",
    "KINDS",
    "Method",
    "PruningRun",
    "RecoverJob",
    "RecoveryRun",
    "TRAINING_KINDS",
    "TrainJob",
    "default_method",
    "get_method",
    "list_methods",
    "load_backend",
    "method_names",
    "register",
    "run_method",
    "run_recovery",
    "unregister",
]
