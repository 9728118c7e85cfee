"""``prunekit sweep``: prune over a grid of methods × sparsities, in parallel processes, resumable.

By default the objective is the built-in digits CNN (:class:`prunekit.sweep.digits.DigitsObjective`);
``--objective module:callable`` names a zero-argument factory returning your own objective
(a picklable callable ``(trial) -> {"accuracy": ..., "gzip_bytes": ..., ...}``).
Running the same command on the same ``--out`` resumes: finished trials are not run again.
``--ray`` runs the trials as Ray tasks (``--workers`` at a time) on the cluster ``RAY_ADDRESS``
names, else on a local Ray instance started for the sweep.

Example::

    prunekit sweep --methods one-shot,gradual --sparsities 0.5,0.8,0.9 --workers 2 --out sweep-out
"""

from __future__ import annotations

import argparse

from prunekit.commands import directory


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.5,0.8, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        type=_names,
        help="comma-separated training methods of the registry (`prunekit methods`; default: every unstructured one)",
    )
    parser.add_argument(
        "--recover",
        type=_names,
        default=[],
        help="comma-separated recover methods (`prunekit methods --kind recover`) each trial is also run with after "
        "pruning, e.g. none,distill (none: no recovery)",
    )
    parser.add_argument("--sparsities", type=_floats, default=[0.5, 0.7, 0.8, 0.9], help="default: 0.5,0.7,0.8,0.9")
    parser.add_argument(
        "--workers", type=int, default=1, help="trials at a time: worker processes, or Ray tasks with --ray (default: 1)"
    )
    parser.add_argument(
        "--out",
        default="sweep-out",
        metavar="DIR",
        type=directory,
        help="results, trial log, plots and report (default: sweep-out)",
    )
    parser.add_argument("--objective", metavar="MODULE:CALLABLE", help="factory of your own objective instead of the digits CNN")
    parser.add_argument("--epochs", type=int, default=8, help="dense training epochs of the digits CNN (default: 8)")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs per trial (default: 2)")
    parser.add_argument("--quick", action="store_true", help="a smaller CNN and fewer epochs, for a smoke test")
    parser.add_argument(
        "--ray",
        action="store_true",
        help="run trials as Ray tasks on the cluster RAY_ADDRESS names, else on a local Ray instance (needs the 'ray' extra)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="run trials the log holds as failed again")
    parser.add_argument(
        "--rerun-mismatched",
        action="store_true",
        help="rerun trials the log holds under another configuration (default: refuse to mix them)",
    )


def run(args: argparse.Namespace) -> int:
    from prunekit.commands.export import import_factory
    from prunekit.methods import TRAINING_KINDS, get_method, method_names
    from prunekit.sweep.report import sweep_report, trials_table
    from prunekit.sweep.runner import grid, run_sweep

    methods = args.methods or method_names(kind="unstructured", framework="torch")
    for method in methods if not args.objective else ():
        get_method(method, kind=TRAINING_KINDS, framework="torch")  # an unknown name fails before any training
    recoveries = [None if name == "none" else get_method(name, kind="recover", framework="torch").name for name in args.recover]
    trials = grid(methods, args.sparsities, recoveries=recoveries or [None])
    if args.objective:
        objective = import_factory(args.objective)()
    else:
        from prunekit.sweep.digits import DigitsObjective

        if args.quick:
            objective = DigitsObjective.train(
                epochs=2, model_options={"channels": (8, 16), "hidden": 32}, finetune_epochs=1, latency_repeats=3
            )
        else:
            objective = DigitsObjective.train(epochs=args.epochs, finetune_epochs=args.finetune_epochs)

    def show(record: dict) -> None:
        metrics = record.get("metrics") or {}
        detail = f"accuracy {metrics['accuracy']:.4f}" if "accuracy" in metrics else record.get("error", "")
        print(f"[{record['status']}] {record['id']}: {detail}", flush=True)

    if args.ray:
        print(
            f"running trials as Ray tasks, {args.workers} at a time; their output goes to Ray's logs "
            "(/tmp/ray/session_latest/logs)",
            flush=True,
        )
    result = run_sweep(
        objective,
        trials,
        args.out,
        workers=args.workers,
        retry_failed=args.retry_failed,
        backend="ray" if args.ray else "processes",
        on_trial=show,
        on_mismatch="rerun" if args.rerun_mismatched else "refuse",
    )
    paths = sweep_report(result, title=f"prunekit sweep: {', '.join(methods)}")
    trials_table(result).print()
    print(
        f"{len(result.ran)} trial(s) run now, {len(result.records) - len(result.ran)} reused from the log, "
        f"{len(result.failed)} failed; report: {paths['html']}"
    )
    return 0 if not result.failed else 1
