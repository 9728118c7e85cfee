"""Structured pruning of Keras models: the channel graph and physical removal of filters, neurons and heads."""

from prunekit.keras.structured.prune import channel_groups, prune_channels, remove_channels

__all__ = ["channel_groups", "prune_channels", "remove_channels"]
