"""Win back what pruning costs: distil a channel-pruned CNN from its dense teacher, then take a 90%-sparse
copy to int8 with sparsity-preserving QAT and check the int8 ONNX file in ONNX Runtime.

Run: ``python examples/recover_after_pruning.py`` (about 30 s on 2 CPU cores, bundled digits, no downloads).
"""

import copy
import tempfile
from pathlib import Path

import torch

from prunekit.artifacts.onnx_artifact import onnx_accuracy
from prunekit.data import load_digits
from prunekit.torch import DigitsCNN, Pruner, evaluate, fit, make_loader, prune_channels
from prunekit.torch.recover import distill, pqat

torch.manual_seed(0)
torch.set_num_threads(1)
split = load_digits(seed=0)
train = make_loader(split.x_train, split.y_train, batch_size=64, seed=0)
test = make_loader(split.x_test, split.y_test, shuffle=False)

dense = DigitsCNN()
fit(dense, train, epochs=6, lr=3e-3, progress=False)
print(f"dense: test accuracy {evaluate(dense, test):.2%}")

# 1. structured pruning removes half the channels; the dense model teaches the smaller one back
student = prune_channels(copy.deepcopy(dense), torch.as_tensor(split.x_val[:2]), ratio=0.5).model
print(f"half the channels removed: {evaluate(student, test):.2%}")
distill(student, dense, train, epochs=2, temperature=2.0, alpha=0.5, progress=False)
print(f"after distillation: {evaluate(student, test):.2%}")

# 2. 90% unstructured sparsity, then PQAT: int8 with exactly the pruned zeros
sparse = copy.deepcopy(dense)
pruner = Pruner(sparse, 0.9, scope="global")
pruner.prune()
fit(sparse, train, epochs=2, lr=1e-3, pruner=pruner, progress=False)
pruner.strip()
zeros = sum(int((p == 0).sum()) for n, p in sparse.named_parameters() if n.endswith("weight") and p.dim() > 1)
controller = pqat(sparse, train, epochs=1, lr=1e-4, progress=False)
with tempfile.TemporaryDirectory() as tmp:
    result = controller.export_onnx(torch.as_tensor(split.x_val[:128]), Path(tmp) / "sparse.int8.onnx")
    accuracy = onnx_accuracy(result.path, split.x_test, split.y_test)
controller.close()
print(f"int8 zeros: {sum(result.zeros.values())} of {zeros} pruned weights; SQNR vs PyTorch {result.sqnr_db:.1f} dB")
print(f"int8 ONNX Runtime test accuracy: {accuracy:.2%}")
