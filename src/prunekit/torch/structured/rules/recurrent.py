"""How channel labels flow through ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (the ops ``lstm``,
``gru``, ``rnn_tanh`` and ``rnn_relu``).

Hidden unit ``j`` owns one row per gate (``j``, ``H+j``, ``2H+j`` ... of ``weight_ih_l{k}``,
``weight_hh_l{k}`` and both biases), column ``j`` of ``weight_hh_l{k}`` (its state read back at
the next step) and, past the last layer, the channel ``j`` of the output. ``hidden_size`` is one
attribute for every layer and both directions, so unit ``j`` of every layer and direction is one
channel: the module keeps the same units everywhere and stays a valid ``nn.LSTM``.
"""

from __future__ import annotations

import numpy as np

from prunekit.torch.structured.labels import LabelState, RecurrentRecord, tensor_refs, zeros_like_shape
from prunekit.torch.structured.rules.shape import Rule
from prunekit.torch.structured.tracing import OpRecord, TensorRef

#: Rows per hidden unit in each weight: LSTM gates i, f, g, o; GRU r, z, n; plain RNN one.
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def recurrent(st: LabelState, op: OpRecord) -> None:
    """``lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)``
    and its GRU/RNN forms: one channel per hidden unit, shared by every layer and direction.

    The output's last dimension is ``[forward units, backward units]``; ``h_n``/``c_n`` carry the
    units in their last dimension. An initial state built inside the module (zeros sized by
    ``hidden_size``) follows the units; one passed in by the caller ties its channels to them.
    """
    if isinstance(op.args[3], list):
        st.unsupported_op(op, "packed sequences are not followed")
        return
    x, hx, params = op.args[0], op.args[1], list(op.args[2])
    has_biases, num_layers, bidirectional = bool(op.args[3]), int(op.args[4]), bool(op.args[7])
    directions = 2 if bidirectional else 1
    per_direction = len(params) // (num_layers * directions)
    if per_direction != (4 if has_biases else 2):
        st.unsupported_op(op, "LSTM with proj_size: its projected state is not followed, so its units are kept")
        return
    if any(st.tensor_name(p) is None for p in params):
        st.unsupported_op(op, "recurrent weights that are not the module's parameters")
        return
    xl = st.get(x)
    units = _unit_atoms(st, params[:per_direction], GATES[op.name])
    inputs = xl[-1]
    for layer in range(num_layers):
        for direction in range(directions):
            start = (layer * directions + direction) * per_direction
            _tie_direction(st, params[start : start + per_direction], units, inputs)
        inputs = np.tile(units, directions)
    _initial_state(st, op, hx, units)
    outs = tensor_refs(op.outputs)
    st.set(outs[0], list(xl[:-1]) + [inputs])
    for state in outs[1:]:
        st.set(state, zeros_like_shape(st.shape(state))[:-1] + [units])
    st.recurrent.append(RecurrentRecord(op.index, op.module, units.copy()))


def _unit_atoms(st: LabelState, weights: list[TensorRef], gates: int) -> np.ndarray:
    """Tie each unit's gate rows of the first ``weight_ih``; one atom per hidden unit."""
    rows = st.get(weights[0])[0]
    return st.coarsen(rows.reshape(gates, -1).T)


def _tie_direction(st: LabelState, weights: list[TensorRef], units: np.ndarray, inputs: np.ndarray) -> None:
    """``weight_ih``, ``weight_hh`` (and biases) of one layer and direction: rows are the units'
    gates, ``weight_hh`` columns read the units, ``weight_ih`` columns read ``inputs``."""
    w_ih, w_hh, *biases = weights
    rows = st.get(w_ih)[0]
    gates = len(rows) // len(units)
    st.unify(rows, np.tile(units, gates))
    st.unify(st.get(w_hh)[0], rows)
    st.unify(st.get(w_hh)[1], units)
    st.unify(st.get(w_ih)[1], inputs)
    for bias in biases:
        st.unify(st.get(bias)[0], rows)
    for w in (w_ih, w_hh):
        st.mark_producer(w, 0)
        st.mark_consumer(w, 1)


def _initial_state(st: LabelState, op: OpRecord, hx: object, units: np.ndarray) -> None:
    """``h0``/``c0``: zeros the module made itself take the units' labels (their size is read
    from ``hidden_size``); states from the caller share their last dimension with the units."""
    for state in tensor_refs(hx):
        labels = st.get(state)
        if _made_by_module(st, op, state):
            st.set(state, zeros_like_shape(st.shape(state))[:-1] + [units])
            continue
        st.unify(labels[-1], units)
        for lab in labels[:-1]:
            st.fix(lab)


def _made_by_module(st: LabelState, op: OpRecord, value: TensorRef) -> bool:
    kind, index = st.trace.sources.get(value.vid, ("", ""))
    if kind != "op":
        return False
    maker = st.trace.ops[int(index)]
    return maker.name == "zeros" and maker.module == op.module


RECURRENT_RULES: dict[str, Rule] = {name: recurrent for name in GATES}
