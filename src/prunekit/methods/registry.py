"""The method registry: one frozen record per pruning/recovery method, with one handler per framework.

Every front end (the Python API, recipes, the CLI, sweeps, sensitivity, the demos) finds a method
here by name; no other module keeps a list of method names. A record says what the method is
(kind, summary, what its amount means), its hyperparameters' defaults in one place, the recipe
cross-checks it needs, and where each framework's handler lives. Handlers given as
``"module:attribute"`` strings are imported on first use, so listing methods imports no framework.

Example::

    from prunekit.methods import Method, register

    register(Method(name="my-method", kind="unstructured", summary="prune my way",
                    handlers={"torch": "my_package.pruning:handler"}, defaults={"epochs": 4, "lr": 1e-3}))
"""

from __future__ import annotations

import difflib
import threading

from prunekit.errors import ConfigError
from prunekit.methods.builtin import BUILTIN_METHODS
from prunekit.methods.record import Method

_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}
_LOCK = threading.RLock()
_LOADED = False
ENTRY_POINT_GROUP = "prunekit.methods"


def _load() -> None:
    """Register the built-in methods, then those of installed packages' ``prunekit.methods`` entry points."""
    global _LOADED
    with _LOCK:
        if _LOADED:
            return
        _LOADED = True
        for method in BUILTIN_METHODS:
            register(method)
        from importlib.metadata import entry_points

        for point in entry_points(group=ENTRY_POINT_GROUP):
            loaded = point.load()  # a module registers on import; a callable returns its methods
            if callable(loaded):
                for method in loaded() or ():
                    register(method, replace=True)


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry; every front end can then run it by name. Returns the method.

    A name or alias already taken is an error unless ``replace=True``.

    Example::

        register(Method(name="toy", kind="unstructured", summary="...", handlers={"torch": toy_handler}))
    """
    if not isinstance(method, Method):
        raise ConfigError(f"register() takes a prunekit.methods.Method, got {type(method).__name__}")
    with _LOCK:
        _load()
        taken = [n for n in (method.name, *method.aliases) if n in _METHODS or n in _ALIASES]
        if replace:
            for name in {_ALIASES.get(name, name) for name in taken}:
                unregister(name)
        elif taken:
            raise ConfigError(f"method name {taken[0]!r} is already registered; choose another name or pass replace=True")
        _METHODS[method.name] = method
        for alias in method.aliases:
            _ALIASES[alias] = method.name
    return method


def unregister(name: str) -> None:
    """Remove a method (by name or alias) and its aliases; unknown names are an error."""
    with _LOCK:
        method = get_method(name)
        del _METHODS[method.name]
        for alias in method.aliases:
            _ALIASES.pop(alias, None)


def get_method(name: str, *, kind: str | tuple[str, ...] | None = None, framework: str | None = None) -> Method:
    """The method called ``name`` (or with that alias), optionally required to be of ``kind`` and run on ``framework``.

    Example::

        get_method("structured").name   # "channels"
    """
    _load()
    kinds = (kind,) if isinstance(kind, str) else kind
    method = _METHODS.get(_ALIASES.get(name, name)) if isinstance(name, str) else None
    if method is None or (kinds and method.kind not in kinds) or (framework and framework not in method.frameworks):
        choices = method_names(kind=kind, framework=framework, aliases=True)
        what = " ".join(filter(None, [framework, "/".join(kinds or ()), "method"]))
        close = difflib.get_close_matches(str(name), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {what} {name!r}{hint}; choose from {choices} (`prunekit methods` lists them)")
    return method


def list_methods(kind: str | tuple[str, ...] | None = None, framework: str | None = None) -> list[Method]:
    """The registered methods, in registration order, optionally of ``kind`` and running on ``framework``.

    Example::

        [m.name for m in list_methods(kind="unstructured", framework="keras")]
    """
    _load()
    kinds = (kind,) if isinstance(kind, str) else kind
    return [m for m in _METHODS.values() if (not kinds or m.kind in kinds) and (not framework or framework in m.frameworks)]


def method_names(kind: str | tuple[str, ...] | None = None, framework: str | None = None, aliases: bool = False) -> list[str]:
    """The names (and, with ``aliases``, the aliases) of :func:`list_methods`."""
    names = []
    for method in list_methods(kind, framework):
        names.append(method.name)
        if aliases:
            names.extend(method.aliases)
    return names


def default_method(kind: str = "unstructured", framework: str | None = None) -> Method:
    """The method front ends use when none is named: the first registered of ``kind`` (for ``framework``).

    Example::

        default_method().name   # the built-in gradual schedule
    """
    methods = list_methods(kind, framework)
    if not methods:
        raise ConfigError(f"no {kind} method is registered{f' for {framework}' if framework else ''}")
    return methods[0]
