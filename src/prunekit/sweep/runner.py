"""Run a grid of pruning trials in parallel processes, resumable from an append-only trial log.

Every finished trial (succeeded or failed) is one JSON line in ``OUT/trials.jsonl``. Running the
same sweep again on the same directory skips the trials the log already holds, so a sweep killed
midway finishes without redoing any. ``results.json`` and ``results.csv`` are rewritten
atomically after every trial.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from prunekit.core.atomic import atomic_write_text
from prunekit.core.debris import remove_stale_temps
from prunekit.core.pool import check_workers, run_jobs
from prunekit.core.progress import progress as progress_bar
from prunekit.core.results import Candidate, results_block
from prunekit.errors import ConfigError
from prunekit.tradeoffs.pareto import pareto_front

LOG_NAME = "trials.jsonl"
COSTS = ("gzip_bytes", "sparse_macs", "macs", "nonzeros", "latency_ms")


@dataclass(frozen=True)
class Trial:
    """One point of a sweep: a method at a sparsity, with optional extra options for the objective."""

    method: str
    sparsity: float
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Stable identifier, the key of the trial log: ``"method@sparsity"`` (plus ``+recover`` when the trial
        recovers the pruned model, and the seed when not 0)."""
        recover = self.options.get("recover")
        return f"{self.method}{f'+{recover}' if recover else ''}@{self.sparsity:g}" + (f"#seed{self.seed}" if self.seed else "")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self), "options": dict(self.options)}


Objective = Callable[[Trial], Mapping[str, float]]


def objective_fingerprint(objective: Any) -> dict[str, Any]:
    """What determines an objective's results, as plain JSON data: its ``fingerprint()`` if it has one.

    Otherwise the objective's qualified class/function name and, for dataclasses, its fields. Give
    your own objectives a ``fingerprint()`` returning everything its results depend on (data,
    model, epochs), so a resumed sweep never reuses trials measured under another configuration.

    Example::

        objective_fingerprint(DigitsObjective.train(epochs=2))["finetune_epochs"]
    """
    own = getattr(objective, "fingerprint", None)
    if callable(own):
        return dict(own())
    kind = objective if callable(objective) and hasattr(objective, "__qualname__") else type(objective)
    fingerprint: dict[str, Any] = {"objective": f"{kind.__module__}.{kind.__qualname__}"}
    if is_dataclass(objective) and not isinstance(objective, type):
        fingerprint["fields"] = json.loads(json.dumps(asdict(objective), default=repr, sort_keys=True))
    return fingerprint


def trial_key(trial: Trial, fingerprint: Mapping[str, Any]) -> str:
    """A hash of everything that determines a trial's result: the trial itself and the objective's fingerprint.

    Example::

        trial_key(Trial("one-shot", 0.5), {"objective": "mine"})   # 16 hex digits
    """
    payload = {"trial": {k: v for k, v in trial.to_dict().items() if k != "id"}, "objective": dict(fingerprint)}
    text = json.dumps(payload, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    if old is None:
        return ["the logged trial has no configuration record (written by an older prunekit)"]
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)] or ["trial options differ"]


def grid(
    methods: Sequence[str], sparsities: Sequence[float], seeds: Sequence[int] = (0,), recoveries: Sequence[str | None] = (None,)
) -> list[Trial]:
    """Every method at every sparsity (and seed, and recovery method: None for none), methods outermost.

    Example::

        grid(["one-shot", "gradual"], [0.5, 0.9])  # 4 trials
    """
    if not methods or not sparsities:
        raise ConfigError(f"a sweep needs at least one method and one sparsity, got {list(methods)} and {list(sparsities)}")
    for sparsity in sparsities:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise ConfigError(f"sweep sparsities should be numbers in [0, 1), got {sparsity!r}")
    trials = [
        Trial(m, float(s), seed, {"recover": r} if r else {})
        for m in methods
        for r in recoveries
        for s in sparsities
        for seed in seeds
    ]
    ids = [t.id for t in trials]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"the grid repeats trials {duplicates}; list each method and sparsity once")
    return trials


@dataclass
class SweepResult:
    """All trial records (in grid order), which ran now, and the Pareto fronts per cost."""

    records: list[dict[str, Any]]
    ran: list[str]
    out_dir: Path
    #: metrics of the unpruned model, from the objective's ``baseline()`` when it has one
    baseline: dict[str, Any] | None = None

    @property
    def succeeded(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "ok"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "failed"]

    def rows(self) -> list[dict[str, Any]]:
        """Flat rows: trial fields (``target`` is the trial's sparsity) plus metrics, failed trials with their error."""
        dense = [{"id": "dense", "method": "dense", "target": 0.0, "status": "ok", **self.baseline}] if self.baseline else []
        return dense + [_flat(record) for record in self.records]

    def fronts(self, maximize: str = "accuracy") -> dict[str, list[str]]:
        """Trial ids on the Pareto front of ``maximize`` against each cost the trials reported."""
        rows = self.rows()
        return {
            cost: [rows[i]["id"] for i in pareto_front(rows, maximize, cost)]
            for cost in COSTS
            if any(cost in row for row in rows)
        }

    def to_dict(self) -> dict[str, Any]:
        """The dense model's metrics, trials and fronts, plus the ``prunekit gate`` schema (the dense model its baseline)."""
        candidates = [_candidate(record) for record in self.succeeded]
        baseline = _candidate({"id": "dense", "metrics": self.baseline}) if self.baseline else None
        return {
            "dense": self.baseline,
            "trials": self.records,
            "pareto": self.fronts(),
            **results_block("sweep", baseline, candidates),
        }


def _candidate(record: Mapping[str, Any]) -> Candidate:
    metrics = record.get("metrics") or {}
    return Candidate(
        record["id"],
        accuracy=metrics.get("accuracy"),
        size_bytes=metrics.get("raw_bytes"),
        gzip_bytes=metrics.get("gzip_bytes"),
        latency_ms=metrics.get("latency_ms"),
        latency_batch=metrics.get("latency_batch"),
    )


def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    row = {
        "id": record["id"],
        "method": record["trial"]["method"],
        "target": record["trial"]["sparsity"],
        "seed": record["trial"]["seed"],
        "status": record["status"],
        "seconds": record.get("seconds"),
    }
    row.update(record.get("metrics") or {})
    if record.get("error"):
        row["error"] = record["error"]
    return row


def read_log(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Finished-trial records of ``OUT/trials.jsonl`` in the order written (a torn last line is ignored).

    Example::

        [record["id"] for record in read_log("sweep-out")]
    """
    path = Path(out_dir) / LOG_NAME
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # a process killed mid-write leaves at most one torn line, the last
                break
            raise ConfigError(f"{path}:{number} is not a JSON trial record; remove that line or the file to start over") from None
    return records


def _append(path: Path, record: Mapping[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        if handle.tell() and not path.read_bytes().endswith(b"\n"):
            handle.write("\n")  # start after a torn line
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _run_trial(job: tuple[Objective, Trial]) -> dict[str, Any]:
    objective, trial = job
    started = time.perf_counter()
    try:
        metrics = dict(objective(trial))
        bad = {k: v for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
        if bad:
            raise ConfigError(f"the objective returned non-numeric metrics {bad}; return a dict of numbers")
    except Exception as exc:
        return {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8),
            "seconds": time.perf_counter() - started,
            "pid": os.getpid(),
        }
    return {"status": "ok", "metrics": metrics, "seconds": time.perf_counter() - started, "pid": os.getpid()}


def write_results(result: SweepResult) -> None:
    """Write ``results.json`` and ``results.csv`` of the records so far, atomically.

    Example::

        write_results(run_sweep(objective, trials, "out"))
    """
    atomic_write_text(result.out_dir / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    rows = result.rows()
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(result.out_dir / "results.csv", buffer.getvalue())


def run_sweep(
    objective: Objective,
    trials: Sequence[Trial],
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    retry_failed: bool = False,
    backend: str = "processes",
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    on_mismatch: str = "refuse",
    progress: bool = True,
) -> SweepResult:
    """Run every trial not yet in ``out_dir``'s trial log, ``workers`` at a time, and write the results.

    ``objective(trial)`` returns a dict of numbers (say ``accuracy``, ``gzip_bytes``,
    ``sparse_macs``, ``latency_ms``); with ``workers > 1`` it must be picklable. A trial that
    raises is logged as ``failed`` with its error and the sweep goes on; ``retry_failed=True``
    runs failed trials again. ``on_trial`` sees every record as it is logged. ``backend="ray"``
    runs trials as Ray tasks (the ``ray`` extra); the log and results are written here as usual.

    A logged trial is reused only when its key (:func:`trial_key`: a hash of the trial and of
    :func:`objective_fingerprint`) matches. When the log holds the same trial id measured under
    another configuration, ``on_mismatch="refuse"`` (the default) raises a :class:`ConfigError`
    naming the trial and what differs; ``on_mismatch="rerun"`` runs those trials again (the new
    records supersede the old ones in the log). ``progress`` shows trials done, elapsed time and ETA.

    Example::

        result = run_sweep(DigitsObjective.train(), grid(["one-shot"], [0.5, 0.9]), "sweep-out", workers=2)
        result.fronts()["gzip_bytes"]
    """
    check_workers(workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    log = out / LOG_NAME
    by_id = {trial.id: trial for trial in trials}
    if len(by_id) != len(trials):
        raise ConfigError("the sweep lists a trial twice; every method@sparsity must be unique")
    if on_mismatch not in ("refuse", "rerun"):
        raise ConfigError(f"on_mismatch should be 'refuse' or 'rerun', got {on_mismatch!r}")
    fingerprint = objective_fingerprint(objective)
    keys = {trial.id: trial_key(trial, fingerprint) for trial in trials}
    done: dict[str, dict[str, Any]] = {}
    stale: dict[str, dict[str, Any]] = {}
    for record in read_log(out):
        trial_id = record.get("id")
        if trial_id not in by_id:
            continue
        if record.get("key") != keys[trial_id]:
            stale[trial_id] = record
            continue
        stale.pop(trial_id, None)
        if record["status"] == "ok" or not retry_failed:
            done[trial_id] = record
    stale = {i: r for i, r in stale.items() if i not in done}
    if stale and on_mismatch == "refuse":
        first_id, first = next(iter(stale.items()))
        why = "; ".join(_differences(first.get("fingerprint"), fingerprint))
        raise ConfigError(
            f"{log} holds {len(stale)} trial(s) ({', '.join(stale)}) measured under another configuration "
            f"({first_id}: {why}); use another output folder, or rerun them (--rerun-mismatched / on_mismatch='rerun')"
        )
    todo = [trial for trial in trials if trial.id not in done]
    baseline = getattr(objective, "baseline", None)
    result = SweepResult([], [], out, dict(baseline()) if callable(baseline) else None)
    with progress_bar("sweep", len(todo), enabled=progress and bool(todo)) as advance:
        _run_todo(objective, todo, workers, backend, keys, fingerprint, log, done, result, trials, on_trial, advance)
    result.records = [done[t.id] for t in trials if t.id in done]
    write_results(result)
    return result


def _run_todo(
    objective: Objective,
    todo: list[Trial],
    workers: int,
    backend: str,
    keys: dict[str, str],
    fingerprint: dict[str, Any],
    log: Path,
    done: dict[str, dict[str, Any]],
    result: SweepResult,
    trials: Sequence[Trial],
    on_trial: Callable[[dict[str, Any]], None] | None,
    advance: Callable[..., None],
) -> None:
    """Run the trials not yet done, logging each record and rewriting the results as they come."""
    run_id = uuid.uuid4().hex[:8]
    for index, outcome, error in run_jobs(_run_trial, [(objective, t) for t in todo], workers, backend):
        trial = todo[index]
        if error is not None:  # the worker died or could not unpickle the job
            outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}", "seconds": None, "pid": None}
        record = {
            "id": trial.id,
            "key": keys[trial.id],
            "trial": trial.to_dict(),
            "fingerprint": fingerprint,
            "run": run_id,
            **outcome,
        }
        _append(log, record)
        done[trial.id] = record
        result.ran.append(trial.id)
        result.records = [done[t.id] for t in trials if t.id in done]
        write_results(result)
        advance(note=f"{trial.id} {record['status']}")
        if on_trial is not None:
            on_trial(record)
