"""Prune your own PyTorch model from your own training loop: gradual 80% sparsity, then strip.

Run: python examples/prune_in_your_loop.py
"""

import torch
from torch import nn

from prunekit import PolynomialDecay
from prunekit.data import load_digits
from prunekit.torch import Pruner, evaluate, make_loader, print_sparsity_table

torch.manual_seed(0)
split = load_digits()
train = make_loader(split.x_train, split.y_train, batch_size=64)
test = make_loader(split.x_test, split.y_test, batch_size=256, shuffle=False)

model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
steps_per_epoch = len(train)
schedule = PolynomialDecay(0.0, 0.8, begin_step=2 * steps_per_epoch, end_step=8 * steps_per_epoch, frequency=steps_per_epoch)
pruner = Pruner(model, schedule, scope="global", exclude=["5"], optimizer=optimizer)  # keep the classifier dense

for _epoch in range(12):
    for x, y in train:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()  # one call per optimizer step

pruned = list(pruner.params.values())
zeros = sum(int((p == 0).sum()) for p in pruned) / sum(p.numel() for p in pruned)
model = pruner.strip()  # a plain nn.Sequential again, with exact zeros
print_sparsity_table(model)  # global scope: layers end at different sparsities, 80% overall
print(f"pruned weights: {zeros:.2%} zeros; test accuracy: {evaluate(model, test):.2%}")
