"""Filter pruning in a CNN: SimpleCNN's conv1 has 64 filters feeding fc1; the half with the
smallest L1 norm is removed, and fc1 loses the matching input features, so the model is
physically smaller (not masked).

Run: python examples/structured_cnn.py
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.data import load_digits
from prunekit.torch import evaluate, fit, load_pruned, make_loader, prune_channels, save_pruned


class SimpleCNN(nn.Module):
    """conv1 (64 filters, 3x3) -> ReLU -> 2x2 max-pool -> flatten -> fc1 (10 classes)."""

    def __init__(self, filters: int = 64, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, filters, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(filters * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(torch.flatten(self.pool(torch.relu(self.conv1(x))), 1))


def main(epochs: int = 8, finetune_epochs: int = 3, ratio: float = 0.5, save_to: str | None = None, verbose: bool = True) -> dict:
    """Train, prune ``ratio`` of conv1's filters by L1 norm, fine-tune, optionally save and reload."""
    torch.manual_seed(0)
    split = load_digits()
    train = make_loader(split.x_train, split.y_train, batch_size=64)
    test = make_loader(split.x_test, split.y_test, batch_size=256, shuffle=False)

    model = SimpleCNN()
    fit(model, train, epochs=epochs, lr=3e-3, progress=False)
    dense_accuracy = evaluate(model, test)

    result = prune_channels(model, torch.from_numpy(split.x_train[:32]), ratio, importance="l1")
    pruned = result.model
    fit(pruned, train, epochs=finetune_epochs, lr=1e-3, progress=False)
    finetuned_accuracy = evaluate(pruned, test)

    numbers = {
        "filters_before": model.conv1.out_channels,
        "filters_after": pruned.conv1.out_channels,
        "fc1_inputs_after": pruned.fc1.in_features,
        "removed_filters": result.removed["conv1"],
        "macs_ratio": result.report.macs_ratio,
        "dense_accuracy": dense_accuracy,
        "finetuned_accuracy": finetuned_accuracy,
    }
    if save_to is not None:
        save_pruned(pruned, save_to)  # weights + plan in one safetensors file
        reloaded = load_pruned(save_to, SimpleCNN)  # rebuilt from the original architecture
        numbers["reloaded_accuracy"] = evaluate(reloaded, test)
    if verbose:
        print(result.report)
        print(
            f"conv1 filters {numbers['filters_before']} -> {numbers['filters_after']} "
            f"(fc1 inputs {model.fc1.in_features} -> {numbers['fc1_inputs_after']}); "
            f"accuracy dense {dense_accuracy:.2%}, pruned + fine-tuned {finetuned_accuracy:.2%}"
        )
    return numbers


if __name__ == "__main__":
    main()
