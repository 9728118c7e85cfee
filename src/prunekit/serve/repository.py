"""The model directory: models with numbered versions, loaded, swapped and retired on disk changes.

Layout (as TensorFlow Serving's)::

    MODEL_DIR/<name>/<version>/model.onnx        (or model.tflite, optionally metadata.json and
                                                  profile.json or model.onnx.profile.json, the reference profile
                                                  for drift monitoring)

:meth:`ModelRepository.sync` scans the directory and makes the loaded set match it: the
``keep_versions`` highest versions of each model are loaded (0 keeps every version). A new version
is loaded only once its files have stayed unchanged between two scans (so a half-copied file is not
read), is warmed up with one inference, and only then replaces the old one. A version that fails to
load is refused, its error shows in the model's status, and the versions already loaded keep
serving; it is tried again when its files change. Requests hold the :class:`LoadedModel` they
started with, so a swap never interrupts them.

Example::

    repo = ModelRepository(Path("models"), keep_versions=1)
    repo.sync(initial=True)
    model = repo.get("mlp")          # the latest loaded version
    model.runtime.run({"x": batch})
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prunekit.artifacts.profile import PROFILE_FILE, ReferenceProfile, profile_path_for
from prunekit.errors import ConfigError
from prunekit.serve.drift import check_profile
from prunekit.serve.guard import ArtifactGuard
from prunekit.serve.model_info import METADATA_FILE, ModelInfo, inspect_model
from prunekit.serve.runtimes import MODEL_FILES, Runtime, RuntimeOptions, load_runtime, model_format

log = logging.getLogger("prunekit.serve")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VERSION = re.compile(r"^[0-9]{1,18}$")
Fingerprint = tuple[tuple[str, int, int], ...]


class ModelNotFoundError(ConfigError, KeyError):
    """No loaded model has this name, or the model has no loaded version of this number."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(eq=False)
class LoadedModel:
    """One loaded version of a model: its runtime, file facts and where it came from."""

    name: str
    version: int
    path: Path
    format: str
    runtime: Runtime
    info: ModelInfo
    fingerprint: Fingerprint
    loaded_at: float = field(default_factory=time.time)
    profile: ReferenceProfile | None = None  # from profile.json beside the model, checked against its signature


@dataclass(frozen=True)
class VersionStatus:
    """A version's state in TensorFlow Serving's terms: ``START`` (waiting for its files),
    ``LOADING``, ``AVAILABLE`` or ``END`` (unloaded, or refused with ``error`` set)."""

    version: int
    state: str
    error: str = ""
    message: str = ""

    def to_json(self) -> dict[str, object]:
        """TensorFlow Serving's ``model_version_status`` entry."""
        return {
            "version": str(self.version),
            "state": self.state,
            "status": {"error_code": "UNKNOWN" if self.error else "OK", "error_message": self.error or self.message},
        }


@dataclass
class SyncReport:
    """What one :meth:`ModelRepository.sync` changed."""

    loaded: list[LoadedModel] = field(default_factory=list)
    unloaded: list[LoadedModel] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _VersionDir:
    path: Path
    model_file: Path | None
    problem: str
    fingerprint: Fingerprint


def _fingerprint(directory: Path) -> Fingerprint:
    entries = []
    for child in sorted(directory.iterdir()):
        if child.is_file():
            stat = child.stat()
            entries.append((child.name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def _version_dir(path: Path) -> _VersionDir:
    present = [path / name for name in MODEL_FILES if (path / name).is_file()]
    problem = ""
    if len(present) > 1:
        problem = f"{path} holds both {present[0].name} and {present[1].name}; keep one"
    return _VersionDir(path, present[0] if len(present) == 1 else None, problem, _fingerprint(path))


def _warm_up(runtime: Runtime) -> None:
    """Run one row of zeros when every input's shape is known apart from the batch dimension."""
    feeds = {}
    for spec in runtime.inputs:
        if spec.shape is None or any(dim is None for dim in spec.shape[1:]):
            return
        shape = tuple(1 if dim is None else dim for dim in spec.shape)
        feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    runtime.run(feeds)


class ModelRepository:
    """Loads the models of a directory and keeps them in step with it (see the module docstring).

    Example::

        repo = ModelRepository(Path("models"), keep_versions=0)   # serve every version
        report = repo.sync(initial=True)
        [m.version for m in report.loaded]
    """

    def __init__(
        self,
        root: Path | str,
        keep_versions: int = 1,
        runtime_options: RuntimeOptions = RuntimeOptions(),
        guard: ArtifactGuard = ArtifactGuard(),
    ) -> None:
        if keep_versions < 0:
            raise ConfigError(f"keep_versions should be >= 0 (0 keeps every version), got {keep_versions}")
        self.root = Path(root)
        self.keep_versions = keep_versions
        self.runtime_options = runtime_options
        self.guard = guard
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._failures: dict[tuple[str, int], tuple[Fingerprint, str]] = {}
        self._seen: dict[tuple[str, int], Fingerprint] = {}
        self._sync_lock = threading.Lock()

    # -- lookups (any thread) --------------------------------------------------------------
    def names(self) -> list[str]:
        """Names of the models with at least one loaded version, sorted."""
        return sorted(name for name, versions in self._models.items() if versions)

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded ``version`` of model ``name`` (the highest loaded one when ``version`` is None).

        Raises :class:`ModelNotFoundError` naming what is available.
        """
        versions = self._models.get(name)
        if not versions:
            known = self.names()
            raise ModelNotFoundError(f"model {name!r} not found; loaded models: {known}")
        if version is None:
            return versions[max(versions)]
        loaded = versions.get(version)
        if loaded is None:
            raise ModelNotFoundError(f"model {name!r} has no loaded version {version}; loaded versions: {sorted(versions)}")
        return loaded

    def loaded(self) -> list[LoadedModel]:
        """Every loaded version of every model."""
        return [m for versions in self._models.values() for m in versions.values()]

    def status(self, name: str) -> list[VersionStatus]:
        """The status of each version of ``name`` the server knows about, highest first."""
        statuses = self._status.get(name)
        if not statuses:
            raise ModelNotFoundError(f"model {name!r} not found; known models: {sorted(self._status)}")
        return [statuses[v] for v in sorted(statuses, reverse=True)]

    # -- changes (one sync at a time) --------------------------------------------------------
    def sync(self, initial: bool = False) -> SyncReport:
        """Scan the directory and load, swap or unload versions to match it.

        ``initial`` loads new versions at once instead of waiting for their files to settle.
        Raises :class:`~prunekit.errors.ConfigError` when the directory itself is missing.
        """
        with self._sync_lock:
            if not self.root.is_dir():
                raise ConfigError(f"model directory {self.root} does not exist; expected {self.root}/<name>/<version>/model.onnx")
            report = SyncReport()
            on_disk = self._scan()
            models: dict[str, dict[int, LoadedModel]] = {}
            statuses: dict[str, dict[int, VersionStatus]] = {}
            for name, versions in on_disk.items():
                models[name], statuses[name] = self._sync_model(name, versions, initial, report)
            for name, current in self._models.items():
                kept = models.get(name, {})
                report.unloaded.extend(m for v, m in current.items() if kept.get(v) is not m)
            for name, old in self._status.items():  # versions once loaded and now gone stay as END
                for version, status in old.items():
                    if status.state in ("AVAILABLE", "END") and version not in statuses.setdefault(name, {}):
                        statuses[name][version] = VersionStatus(version, "END", status.error)
            self._models = models  # one assignment: readers see the old or the new set, never a mix
            self._status = {name: s for name, s in statuses.items() if s}
            for name, version in list(self._seen):
                if version not in on_disk.get(name, {}):
                    del self._seen[(name, version)]
            for model in report.unloaded:
                log.info("unloaded model", extra={"model": model.name, "version": model.version})
            return report

    def _scan(self) -> dict[str, dict[int, _VersionDir]]:
        found: dict[str, dict[int, _VersionDir]] = {}
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or not _NAME.match(model_dir.name):
                continue
            versions: dict[int, _VersionDir] = {}
            try:
                for version_dir in model_dir.iterdir():
                    if version_dir.is_dir() and _VERSION.match(version_dir.name):
                        versions[int(version_dir.name)] = _version_dir(version_dir)
            except OSError as exc:  # removed while scanning: picked up by the next scan
                log.warning("cannot scan model directory", extra={"path": str(model_dir), "error": str(exc)})
                continue
            found[model_dir.name] = versions
        return found

    def _sync_model(
        self, name: str, versions: dict[int, _VersionDir], initial: bool, report: SyncReport
    ) -> tuple[dict[int, LoadedModel], dict[int, VersionStatus]]:
        current = self._models.get(name, {})
        loaded: dict[int, LoadedModel] = {}
        statuses: dict[int, VersionStatus] = {}
        settled = {v: initial or self._seen.get((name, v)) == e.fingerprint for v, e in versions.items()}
        self._seen.update(((name, v), e.fingerprint) for v, e in versions.items())
        for version in sorted(versions, reverse=True):
            if self.keep_versions and len(loaded) >= self.keep_versions:
                break
            entry = versions[version]
            key = (name, version)
            if version in current:  # versions are immutable once loaded: edits need a new number
                loaded[version] = current[version]
                statuses[version] = VersionStatus(version, "AVAILABLE")
                continue
            failure = self._failures.get(key)
            if failure is not None and failure[0] == entry.fingerprint:
                statuses[version] = VersionStatus(version, "END", failure[1])
                continue
            if entry.model_file is None and not entry.problem:
                statuses[version] = VersionStatus(
                    version, "START", message=f"waiting for {' or '.join(MODEL_FILES)} in {entry.path}"
                )
                continue
            if not settled[version]:
                statuses[version] = VersionStatus(version, "LOADING", message="waiting for the files to settle")
                continue
            try:
                model = self._load(name, version, entry)
            except Exception as exc:  # any failure refuses this version; the others keep serving
                message = f"model {name!r} version {version} refused: {exc}"
                self._failures[key] = (entry.fingerprint, message)
                statuses[version] = VersionStatus(version, "END", message)
                report.failed.append((name, version, message))
                log.error("model version refused", extra={"model": name, "version": version, "error": str(exc)})
                continue
            self._failures.pop(key, None)
            loaded[version] = model
            statuses[version] = VersionStatus(version, "AVAILABLE")
            report.loaded.append(model)
            log.info(
                "loaded model",
                extra={"model": name, "version": version, "format": model.format, "path": str(model.path)},
            )
        return loaded, statuses

    def _load(self, name: str, version: int, entry: _VersionDir) -> LoadedModel:
        if entry.problem:
            raise ConfigError(entry.problem)
        assert entry.model_file is not None
        fmt = model_format(entry.model_file)
        content = self.guard.read(entry.model_file)  # verified / decrypted in memory, or None
        runtime = load_runtime(entry.model_file, self.runtime_options, content)
        try:
            _warm_up(runtime)
        except Exception as exc:
            raise ConfigError(f"{entry.model_file}: a warm-up inference on zeros failed: {exc}") from exc
        info = inspect_model(entry.model_file, fmt, content)
        profile = None
        for profile_path in (entry.path / PROFILE_FILE, profile_path_for(entry.model_file)):
            if profile_path.is_file():
                profile = ReferenceProfile.load(profile_path)
                check_profile(profile, runtime.inputs, runtime.outputs, profile_path)
                break
        return LoadedModel(name, version, entry.model_file, fmt, runtime, info, entry.fingerprint, profile=profile)


__all__ = ["METADATA_FILE", "LoadedModel", "ModelNotFoundError", "ModelRepository", "SyncReport", "VersionStatus"]
