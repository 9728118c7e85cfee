"""The context-mixing coder's kernels as plain Python functions (compiled by numba in :mod:`~prunekit.artifacts.cm_codec`).

Both kernels code one stream bit by bit with a binary arithmetic coder (the carry-less 32-bit coder of
lpaq1). Each bit's probability mixes the predictions of a few adaptive context models in the logistic
domain (a one-layer network whose weights learn online, as in PAQ). Everything is integer arithmetic,
so the writer and any reader, compiled or not, on any machine, compute the same probabilities.

Each kernel runs in both directions (``decode`` 0 or 1), so the model exists once. It returns the bytes
written (encoding) or read (decoding), or -1 when the coded stream would outgrow ``out`` (the caller then
keeps the stream as it is). The kernels differ only in their contexts and bit order: the
model's state, each bit's step (:func:`predict`, the arithmetic coder's :func:`code_bit`, :func:`learn`) and the
coder's start and flush are shared helpers (:data:`CODER_HELPERS`), plain Python calls that numba compiles with a
kernel once they are registered with it (inlined). The step stays three small functions: one helper for all of it
(a tuple of state in and out, eleven arrays) measured 1.4-1.8x slower under numba 0.61, these three are not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WEIGHT_LIMIT = 1 << 19  # a mixer weight stays within +-8 (65536 is 1.0)


def squash_table() -> np.ndarray:
    """``4096 / (1 + e^-x)`` for x = -2047..2047 in 1/256ths, by lpaq1's interpolated integer table (index x + 2047)."""
    knots = [1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994, 3348, 3607, 3785]
    knots += [3901, 3975, 4022, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094]
    table = np.zeros(4095, dtype=np.int64)
    for x in range(-2047, 2048):
        weight, base = x & 127, (x >> 7) + 16
        table[x + 2047] = (knots[base] * (128 - weight) + knots[base + 1] * weight + 64) >> 7
    return table


def stretch_table(squash: np.ndarray) -> np.ndarray:
    """The inverse of :func:`squash_table`: ``ln(p / (1 - p))`` in 1/256ths for a 12-bit probability."""
    table = np.full(4096, 2047, dtype=np.int64)
    previous = 0
    for x in range(-2047, 2048):
        value = int(squash[x + 2047])
        table[previous : value + 1] = x
        previous = value + 1
    return table


def rate_table() -> np.ndarray:
    """The adaptation step of a counter seen ``n`` times: ``65536 / (n + 1.5)`` (fast at first, then averaging)."""
    return np.array([65536 * 2 // (2 * n + 3) for n in range(1024)], dtype=np.int64)


def new_model(sizes, limits, mixer_rows):
    """The adaptive state of five context models of ``sizes`` slots (each slot's 16-bit probability and how often
    it was seen, up to ``limits``) and a mixer with ``mixer_rows`` weight sets: ``(offsets, prob, seen, limits,
    weights, inputs)``."""
    offsets = np.zeros(6, dtype=np.int64)
    for m in range(5):
        offsets[m + 1] = offsets[m] + sizes[m]
    prob = np.full(offsets[5], 32768, dtype=np.int64)
    seen = np.zeros(offsets[5], dtype=np.int64)
    weights = np.full((mixer_rows, 6), 14000, dtype=np.int64)
    return offsets, prob, seen, limits, weights, np.zeros(6, dtype=np.int64)


def start_coder(data, decode):
    """The coder's state ``(x1, x2, x, pos)`` before the first bit (a decoder reads its 4-byte window first)."""
    x, pos = 0, 0
    if decode:
        for _ in range(4):
            x = (x << 8) | (int(data[pos]) if pos < data.shape[0] else 255)
            pos += 1
    return 0, 0xFFFFFFFF, x, pos


def code_bit(p, bit, x1, x2, x, pos, data, out, decode):
    """The arithmetic coder's step: code ``bit`` (or decode it: ``decode`` 1) with probability ``p``/4096 of a 1
    into the interval ``[x1, x2]`` (``x``: the decoder's window), shifting out (or in) its settled top bytes at
    ``pos``. Returns ``(bit, x1, x2, x, pos)``; ``pos`` is -1 when an encoder's ``out`` is full."""
    xmid = x1 + ((x2 - x1) >> 12) * p
    if decode:
        bit = 1 if x <= xmid else 0
    if bit:
        x2 = xmid
    else:
        x1 = xmid + 1
    while ((x1 ^ x2) & 0xFF000000) == 0:
        if decode:
            x = ((x << 8) & 0xFFFFFFFF) | (int(data[pos]) if pos < data.shape[0] else 255)
        else:
            if pos >= out.shape[0]:
                return bit, x1, x2, x, -1
            out[pos] = x2 >> 24
        pos += 1
        x1 = (x1 << 8) & 0xFFFFFFFF
        x2 = ((x2 << 8) & 0xFFFFFFFF) | 255
    return bit, x1, x2, x, pos


def predict(slot, row, offsets, prob, weights, inputs, squash, stretch):
    """The next bit's probability of a 1 (1..4095 in 4096ths): the five models' predictions at their context
    ``slot`` (offset here into each model's slots) in the logistic domain (kept in ``inputs`` for
    :func:`learn`), mixed by the mixer's weight set ``row``."""
    dot = 0
    for m in range(5):
        slot[m] += offsets[m]
        inputs[m] = stretch[prob[slot[m]] >> 4]
        dot += inputs[m] * weights[row, m]
    inputs[5] = 256
    dot += 256 * weights[row, 5]
    p = squash[min(2047, max(-2047, dot >> 16)) + 2047]
    return min(4095, max(1, p))


def learn(bit, p, slot, row, shift, prob, seen, limits, weights, inputs, rate):
    """Learn the coded ``bit`` that :func:`predict` gave ``p``: the mixer's weight set ``row`` by its error
    (step ``>> shift``), and each model's slot towards it, fast while it is seldom seen."""
    err = ((bit << 12) - p) * 6
    for m in range(6):  # clamped: unbounded weights drift over long streams (measured: +3 % over 4 layers)
        weights[row, m] = min(WEIGHT_LIMIT, max(-WEIGHT_LIMIT, weights[row, m] + ((inputs[m] * err) >> shift)))
    for m in range(5):
        s = slot[m]
        prob[s] += (((bit << 16) - prob[s]) * rate[seen[s]]) >> 16
        prob[s] = min(65535, max(1, prob[s]))
        if seen[s] < limits[m]:
            seen[s] += 1


def finish_coder(x1, pos, out, decode):
    """The stream's length once every bit is coded: an encoder flushes its last byte (-1 when ``out`` is full)."""
    if decode:
        return pos
    if pos >= out.shape[0]:
        return -1
    out[pos] = x1 >> 24
    return pos + 1


#: The helpers the kernels call: numba compiles them along with a kernel once they are registered with it.
CODER_HELPERS = (new_model, start_coder, predict, code_bit, learn, finish_coder)
#: How numba compiles them: inlined into each kernel (as calls the step measured 1.2-1.4x slower). Kept here, not in
#: the caller, so that changing it changes this file and numba's on-disk cache of the kernels is rebuilt.
HELPER_OPTIONS = {"inline": "always"}


def kernel_sources() -> dict[str, Any]:
    """Every kernel by name, as a plain Python function (calling :data:`CODER_HELPERS`)."""

    def code_mask(data, nbits, row, out, decode, squash, stretch, rate):
        # A bitmask of rows of ``row`` bits (row-major), packed little-endian. Contexts: the row's running density,
        # the column's running density (magnitude pruning leaves rows and columns of very different density),
        # the bits to the left and above (conv kernels) and an order-0 model; the mixer's weights are chosen by
        # the row's density.
        columns = min(row, 65536)  # column statistics for this many columns (longer rows share them)
        column_ones = np.zeros(columns, dtype=np.int64)
        above = np.zeros(columns, dtype=np.int64)
        sizes = np.array([1, 128, 64, 1024, 256], dtype=np.int64)
        offsets, prob, seen, limits, weights, inputs = new_model(sizes, np.array([1023, 255, 255, 255, 255], dtype=np.int64), 32)
        slot = np.zeros(6, dtype=np.int64)
        x1, x2, x, pos = start_coder(data, decode)
        r, c, row_ones, left = 0, 0, 0, 0
        for i in range(nbits):
            k = c % columns
            row_bucket = min(31, ((2 * row_ones + 1) * 32) // (2 * c + 2))
            column_bucket = min(31, ((2 * column_ones[k] + 1) * 32) // (2 * r + 2))
            up = above[k] if r else 0
            up_left = above[(c - 1) % columns] if r and c else 0
            slot[0] = 0
            slot[1] = row_bucket * 4 + (left & 3)
            slot[2] = column_bucket * 2 + up
            slot[3] = row_bucket * 32 + column_bucket
            slot[4] = (left & 15) * 16 + up * 8 + up_left * 4 + (above[(c + 1) % columns] if r else 0) * 2 + (r > 0)
            p = predict(slot, row_bucket, offsets, prob, weights, inputs, squash, stretch)
            bit = 0 if decode else (int(data[i >> 3]) >> (i & 7)) & 1
            bit, x1, x2, x, pos = code_bit(p, bit, x1, x2, x, pos, data, out, decode)
            if pos < 0:
                return -1
            if decode and bit:
                out[i >> 3] |= 1 << (i & 7)
            learn(bit, p, slot, row_bucket, 15, prob, seen, limits, weights, inputs, rate)
            row_ones += bit
            column_ones[k] += bit
            above[k] = bit
            left = (left << 1) | bit
            c += 1
            if c == row:
                c, r, row_ones, left = 0, r + 1, 0, 0
        return finish_coder(x1, pos, out, decode)

    def code_bytes(data, nbytes, width, out, decode, squash, stretch, rate, side):
        # A stream of ``nbytes`` bytes read as words of ``width`` bytes (1 for int8 values or index bytes, 4 for
        # float32). Each byte is coded as a signed magnitude (int8 values are symmetric): 8 magnitude bits MSB first
        # through a binary tree (the contexts include the tree node: the bits coded so far), then the sign.
        # Contexts, each per byte lane: the node alone, with the previous magnitude, with the mean of the last four,
        # with the previous byte, and with ``side[i]`` (0..15, what the caller knows of byte i, such as its row's
        # scale; an empty ``side`` means none); the mixer's weights are chosen by lane and tree depth.
        lanes = width
        sizes = np.array([256 * lanes, 256 * 16 * lanes, 256 * 16 * lanes, 256 * 256 * lanes, 256 * 16], dtype=np.int64)
        offsets, prob, seen, limits, weights, inputs = new_model(
            sizes, np.array([1023, 255, 255, 127, 255], dtype=np.int64), 9 * lanes
        )
        last = np.zeros((lanes, 4), dtype=np.int64)  # the last four magnitudes per lane
        previous = np.zeros(lanes, dtype=np.int64)
        slot = np.zeros(6, dtype=np.int64)
        x1, x2, x, pos = start_coder(data, decode)
        for i in range(nbytes):
            lane = i % lanes
            known = side[i] if side.shape[0] else 0
            value = 0
            if not decode:
                value = int(data[i])
                value = value - 256 if value > 127 else value
            magnitude = -value if value < 0 else value
            mean = (last[lane, 0] + last[lane, 1] + last[lane, 2] + last[lane, 3] + 2) >> 2
            near = 0
            while near < 15 and (1 << near) <= last[lane, 0]:
                near += 1
            spread = 0
            while spread < 15 and (1 << spread) <= mean:
                spread += 1
            node, coded = 1, 0
            for depth in range(9):  # eight magnitude bits, then the sign (tree slot 0)
                if depth == 8:
                    if coded == 0:
                        break
                    tree = 0
                    mix = 8
                else:
                    tree = node
                    mix = depth
                slot[0] = lane * 256 + tree
                slot[1] = (lane * 16 + near) * 256 + tree
                slot[2] = (lane * 16 + spread) * 256 + tree
                slot[3] = (lane * 256 + previous[lane]) * 256 + tree
                slot[4] = known * 256 + tree
                row = lane * 9 + mix
                p = predict(slot, row, offsets, prob, weights, inputs, squash, stretch)
                bit = (1 if value < 0 else 0) if depth == 8 else (magnitude >> (7 - depth)) & 1
                bit, x1, x2, x, pos = code_bit(p, bit, x1, x2, x, pos, data, out, decode)
                if pos < 0:
                    return -1
                learn(bit, p, slot, row, 12, prob, seen, limits, weights, inputs, rate)
                if depth < 8:
                    node = node * 2 + bit
                    coded = coded * 2 + bit
                elif bit:
                    value = -coded
            if decode:
                value = coded if value == 0 else value
                out[i] = value & 255
            magnitude = coded if decode else magnitude
            last[lane, 3] = last[lane, 2]
            last[lane, 2] = last[lane, 1]
            last[lane, 1] = last[lane, 0]
            last[lane, 0] = magnitude
            previous[lane] = value & 255
        return finish_coder(x1, pos, out, decode)

    return {"code_mask": code_mask, "code_bytes": code_bytes}
