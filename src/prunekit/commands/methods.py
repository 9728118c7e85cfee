"""``prunekit methods``: the method registry as a table, or as JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
from typing import Any


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from prunekit.methods import FRAMEWORKS, KINDS

    parser.add_argument("--kind", choices=KINDS, help="only methods of this kind")
    parser.add_argument("--framework", choices=FRAMEWORKS, help="only methods with a handler for this framework")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of {name, kind, frameworks, summary, defaults, ...}"
    )


def _defaults(method: Any, framework: str | None) -> dict[str, Any]:
    """Defaults for ``framework``; without one, an option that differs by framework shows ``{framework: default}``."""
    if framework is not None:
        return method.options(framework)
    return {**method.defaults, **method.by_framework()}


def run(args: argparse.Namespace) -> int:
    from prunekit.methods import list_methods

    methods = list_methods(kind=args.kind, framework=args.framework)
    if args.json:
        print(json.dumps([{**m.to_dict(), "defaults": _defaults(m, args.framework)} for m in methods], indent=2, default=list))
        return 0
    for m in methods:
        aliases = f" (also {', '.join(m.aliases)})" if m.aliases else ""
        print(f"{m.name}{aliases}  [{m.kind}; {', '.join(m.frameworks)}; amount: {m.amount}]")
        print(f"    {m.summary}")
        if m.defaults:
            print("    defaults: " + ", ".join(f"{k}={v!r}" for k, v in _defaults(m, args.framework).items()))
    return 0
