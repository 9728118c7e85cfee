"""What the structured engine reads from a module's code: the attributes and literals at each size argument."""

from __future__ import annotations

import textwrap

from prunekit.torch.structured.sources import literal_at, names_at

SOURCE = textwrap.dedent(
    """
    class Gated:
        def forward(self, x):
            per_head = x.view(x.shape[:-1] + (self.num_heads, -1))
            gate = self.gate(per_head).view(per_head.shape[:-1] + (2, 4))
            d = self.embed_dim // self.num_heads
            return x.view(x.shape[0], x.shape[1], self.num_heads, d)
    """
)


def test_names_at_reads_the_tail_of_a_shape_plus_tuple_and_follows_local_variables():
    assert names_at(SOURCE, "view", 5, 4) == frozenset()  # the literal 4 (and -1) read no attribute
    assert names_at(SOURCE, "view", 5, 3) == frozenset({"num_heads"})
    assert names_at(SOURCE, "view", 4, 3) >= {"embed_dim", "num_heads"}
    assert names_at(SOURCE, "expand", 4, 3) is None  # no such call


def test_literal_at_matches_the_call_by_the_traced_sizes():
    attributes = {"num_heads": 4, "embed_dim": 32}
    assert literal_at(SOURCE, "view", (2, 6, 4, 2, 4), 4, attributes)  # the gate: (2, 4) agrees
    assert not literal_at(SOURCE, "view", (2, 6, 4, 4, 8), 4, attributes)  # per_head: num_heads, -1
    assert not literal_at(SOURCE, "view", (2, 6, 4, 8), 2, attributes)


LOCALS = textwrap.dedent(
    """
    class Merged:
        def forward(self, x):
            hidden_shape = (*x.shape[:-1], -1, self.head_dim)
            y = x.reshape(hidden_shape)
            new_shape = y.size()[:-2] + (self.num_heads * self.head_dim,)
            return y.view(*new_shape)
    """
)


def test_sizes_held_in_a_local_tuple_are_read_from_its_assignment():
    assert names_at(LOCALS, "reshape", 4, 3) == frozenset({"head_dim"})  # (*x.shape[:-1], -1, self.head_dim)
    assert names_at(LOCALS, "reshape", 4, 2) == frozenset()  # the -1
    assert names_at(LOCALS, "view", 3, 2) == frozenset({"num_heads", "head_dim"})  # *new_shape
