"""Small reference models used by the demo, the docs and the tests."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: two conv-BN-ReLU blocks, a pool, and a two-layer classifier.

    Example::

        logits = DigitsCNN()(torch.zeros(4, 1, 8, 8))  # shape (4, 10)
    """

    def __init__(self, channels: tuple[int, int] = (32, 64), hidden: int = 128, num_classes: int = 10):
        super().__init__()
        first, second = channels
        self.conv1 = nn.Conv2d(1, first, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(first)
        self.conv2 = nn.Conv2d(first, second, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(second)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(second * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


class DigitsMLP(nn.Module):
    """The classic 64 -> 128 -> 64 -> 10 multilayer perceptron on flattened 8x8 digits."""

    def __init__(self, hidden: tuple[int, int] = (128, 64), num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)
