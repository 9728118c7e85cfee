"""Neuron pruning in a dense network: the 64 -> 128 -> 64 -> 10 MLP on digits loses half of its
hidden neurons (by L2 norm), then a short fine-tune recovers the accuracy.

Run: python examples/structured_mlp.py
"""

from __future__ import annotations

import torch

from prunekit.data import load_digits
from prunekit.torch import DigitsMLP, evaluate, fit, make_loader, prune_channels


def main(epochs: int = 15, finetune_epochs: int = 5, ratio: float = 0.5, verbose: bool = True) -> dict:
    """Train, prune ``ratio`` of the hidden neurons, fine-tune; returns the measured numbers."""
    torch.manual_seed(0)
    split = load_digits()
    train = make_loader(split.x_train, split.y_train, batch_size=64)
    test = make_loader(split.x_test, split.y_test, batch_size=256, shuffle=False)

    model = DigitsMLP()  # fc1: 64 -> 128, fc2: 128 -> 64, fc3: 64 -> 10
    fit(model, train, epochs=epochs, lr=3e-3, progress=False)
    dense_accuracy = evaluate(model, test)

    # Hidden neurons are ranked by the L2 norm of their incoming row and outgoing column together;
    # the classifier's 10 outputs are protected because they are the model's output.
    result = prune_channels(model, torch.from_numpy(split.x_train[:32]), ratio, importance="l2")
    pruned = result.model
    pruned_accuracy = evaluate(pruned, test)
    fit(pruned, train, epochs=finetune_epochs, lr=1e-3, progress=False)
    finetuned_accuracy = evaluate(pruned, test)

    numbers = {
        "hidden_before": (model.fc1.out_features, model.fc2.out_features),
        "hidden_after": (pruned.fc1.out_features, pruned.fc2.out_features),
        "params_before": result.report.params_before,
        "params_after": result.report.params_after,
        "dense_accuracy": dense_accuracy,
        "pruned_accuracy": pruned_accuracy,
        "finetuned_accuracy": finetuned_accuracy,
    }
    if verbose:
        print(result.report)
        print(
            f"hidden neurons {numbers['hidden_before']} -> {numbers['hidden_after']}; "
            f"accuracy dense {dense_accuracy:.2%}, pruned {pruned_accuracy:.2%}, "
            f"fine-tuned {finetuned_accuracy:.2%}"
        )
    return numbers


if __name__ == "__main__":
    main()
