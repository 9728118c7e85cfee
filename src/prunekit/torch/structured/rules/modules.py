"""The built-in layers, written against the public rule interface (:mod:`.base`).

Their forward is traced op by op (the op rules in ``layers``/``pointwise``/``shape`` find the
couplings), so each is a :class:`TracedRule` whose ``shrink`` says which size attributes follow
the sliced tensors. A user's rule for the same class (or a subclass) takes precedence.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from prunekit.torch.structured.rules.base import ChannelRule, Shrink, TracedRule, rule_for


class LinearRule(TracedRule):
    """``nn.Linear``: ``in_features``/``out_features`` from the weight."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        out_features, in_features = ctx.shape("weight")
        return {"out_features": out_features, "in_features": in_features}


class ConvRule(TracedRule):
    """Convolutions (plain, grouped, depthwise, transposed): channels and ``groups``."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        assert isinstance(module, nn.modules.conv._ConvNd)
        w = ctx.shape("weight")
        groups = module.groups
        if module.transposed:
            if groups > 1:
                groups = w[0] // (module.in_channels // module.groups)
            return {"groups": groups, "in_channels": w[0], "out_channels": w[1] * groups}
        if groups > 1 and module.in_channels // module.groups == 1:
            groups = w[0] // (module.out_channels // module.groups)
        return {"groups": groups, "out_channels": w[0], "in_channels": w[1] * groups}


class BatchNormRule(TracedRule):
    """Batch and instance norms: ``num_features`` from the affine weight or the running mean."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        for name in ("weight", "running_mean"):
            if ctx.has(name):
                return {"num_features": ctx.shape(name)[0]}
        return {}


class LayerNormRule(TracedRule):
    """``nn.LayerNorm``/``nn.RMSNorm``: ``normalized_shape`` from the weight."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        return {"normalized_shape": ctx.shape("weight")} if ctx.has("weight") else {}


class GroupNormRule(TracedRule):
    """``nn.GroupNorm``: channels, and groups (whole groups are removed)."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        assert isinstance(module, nn.GroupNorm)
        if not ctx.has("weight"):
            return {}
        channels = ctx.shape("weight")[0]
        groups = module.num_groups
        return {"num_channels": channels, "num_groups": 1 if groups == 1 else channels // (module.num_channels // groups)}


class EmbeddingRule(TracedRule):
    """``nn.Embedding``: ``embedding_dim``."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        return {"embedding_dim": ctx.shape("weight")[1]}


class PReLURule(TracedRule):
    """``nn.PReLU``: ``num_parameters``."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        return {"num_parameters": ctx.shape("weight")[0]}


class RecurrentRule(TracedRule):
    """``nn.LSTM``/``nn.GRU``/``nn.RNN``: ``input_size`` and ``hidden_size``."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        return {"input_size": ctx.shape("weight_ih_l0")[1], "hidden_size": ctx.shape("weight_hh_l0")[1]}


class MultiheadAttentionRule(TracedRule):
    """``nn.MultiheadAttention``: embedding widths and heads (each head keeps ``head_dim``)."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        assert isinstance(module, nn.MultiheadAttention)
        if module._qkv_same_embed_dim:
            embed = ctx.shape("in_proj_weight")[1]
            kdim = vdim = embed
        else:
            embed = ctx.shape("q_proj_weight")[1]
            kdim, vdim = ctx.shape("k_proj_weight")[1], ctx.shape("v_proj_weight")[1]
        return {"embed_dim": embed, "kdim": kdim, "vdim": vdim, "num_heads": embed // module.head_dim}


class TransposedLinearRule(TracedRule):
    """A linear layer storing its weight as (in, out) with sizes ``nx``/``nf`` (GPT-2's ``Conv1D``)."""

    def shrink(self, module: nn.Module, ctx: Shrink) -> dict[str, Any]:
        nx, nf = ctx.shape("weight")
        return {"nx": nx, "nf": nf}


BUILTIN_RULES: dict[type, ChannelRule] = {
    nn.Linear: LinearRule(),
    nn.modules.conv._ConvNd: ConvRule(),
    nn.modules.batchnorm._NormBase: BatchNormRule(),
    nn.LayerNorm: LayerNormRule(),
    nn.GroupNorm: GroupNormRule(),
    nn.Embedding: EmbeddingRule(),
    nn.PReLU: PReLURule(),
    nn.RNNBase: RecurrentRule(),
    nn.MultiheadAttention: MultiheadAttentionRule(),
}
if hasattr(nn, "RMSNorm"):
    BUILTIN_RULES[nn.RMSNorm] = LayerNormRule()


def _is_transposed_linear(module: nn.Module) -> bool:
    weight = module._parameters.get("weight")
    return (
        weight is not None
        and weight.dim() == 2
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(getattr(module, "nx", None), int)
        and tuple(weight.shape) == (module.nx, module.nf)
    )


def module_rule(module: nn.Module, user_rules: dict[type, ChannelRule]) -> ChannelRule | None:
    """The rule shrinking ``module``: the user's by class, else a built-in one, else a structural match."""
    rule = rule_for(module, user_rules) or rule_for(module, BUILTIN_RULES)
    if rule is None and _is_transposed_linear(module):
        rule = TransposedLinearRule()
    return rule


__all__ = [
    "BUILTIN_RULES",
    "BatchNormRule",
    "ConvRule",
    "EmbeddingRule",
    "GroupNormRule",
    "LayerNormRule",
    "LinearRule",
    "MultiheadAttentionRule",
    "PReLURule",
    "RecurrentRule",
    "TransposedLinearRule",
    "module_rule",
]
