"""Print, as JSON lines, everything structured pruning decides for named zoo models.

Run in a fresh interpreter by ``test_structured_determinism.py`` (once per hash seed)::

    python -m tests.torch.determinism_probe OUT.jsonl resnet_basic hf_bert gen:bert ...

Names are keys of ``tests.zoo.ZOO``, or ``gen:<model_type>`` for the generated transformers zoo.
Each line holds one model's groups (every member's tensor, dimension, channel index and role),
the ops left unpruned, the 50 % L1 plan exactly as serialised (or the error's text, for a model
the engine cannot prune), and a digest of the pruned weights, so two runs can be compared byte
for byte.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import torch

from prunekit.torch import analyze_dependencies, prune_channels


def build(name: str) -> tuple[torch.nn.Module, Any]:
    """The zoo model called ``name`` with its example inputs, from torch seed 0."""
    torch.manual_seed(0)
    if name.startswith("gen:"):
        from tests.zoo.generated import build_family

        return build_family(name[4:])
    from tests.zoo import ZOO

    return ZOO[name]()


def decisions(name: str) -> dict[str, Any]:
    """Groups, unsupported ops, plan and pruned-weight digest of one model, as plain data."""
    model, inputs = build(name)
    graph = analyze_dependencies(model, inputs)
    groups = [
        [g.name, g.kind, g.size, g.unit, g.exact, [[m.tensor, m.dim, m.index.tolist(), m.role] for m in g.members]]
        for g in graph.groups
    ]
    digest = hashlib.sha256()
    try:
        result = prune_channels(model, inputs, 0.5)
    except Exception as exc:  # a model the engine cannot prune must fail with the same words every run
        plan = f"error: {type(exc).__name__}: {exc}"
    else:
        plan = json.dumps(result.plan)
        for key, tensor in result.model.state_dict().items():
            digest.update(f"{key}{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return {
        "name": name,
        "groups": groups,
        "unsupported": [list(item) for item in graph.unsupported],
        "plan": plan,
        "weights": digest.hexdigest(),
    }


def main(argv: list[str]) -> None:
    """Write one JSON line per model named in ``argv[1:]`` to the file ``argv[0]``."""
    torch.set_num_threads(1)
    out, names = argv[0], argv[1:]
    with open(out, "w", encoding="utf-8") as handle:
        for name in names:
            handle.write(json.dumps(decisions(name)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
