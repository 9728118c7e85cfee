"""Train a PyTorch model sparse from its first step with RigL: 95% of the weights zero throughout,
the mask moving towards the largest gradients, in your own training loop.

Run: python examples/dynamic_sparse_training.py
"""

import torch
from torch import nn

from prunekit.data import load_digits
from prunekit.torch import DynamicPruner, evaluate, make_loader

torch.manual_seed(0)
split = load_digits()
train = make_loader(split.x_train, split.y_train, batch_size=64)
test = make_loader(split.x_test, split.y_test, batch_size=256, shuffle=False)

model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
epochs = 20
total_steps = epochs * len(train)
pruner = DynamicPruner(
    model, 0.95, regrow="rigl", end_step=int(0.75 * total_steps), update_interval=len(train) // 2, optimizer=optimizer
)
pruner.prune()  # sparse before the first step
kept = {name: int(mask.sum()) for name, mask in pruner.masks.items()}

for _epoch in range(epochs):
    for x, y in train:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()  # drops and regrows on update steps

assert all(record["nonzeros"] == kept for record in pruner.history)  # the mask moved, its size never changed
last = pruner.history[-1]
model = pruner.strip()  # a plain nn.Sequential with exact zeros
print(f"{len(pruner.history)} updates; final mask turnover: {last['turnover']:.1%} of the first mask moved")
print(f"active weights per layer: {kept}; test accuracy: {evaluate(model, test):.2%}")
