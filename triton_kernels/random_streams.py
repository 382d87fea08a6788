"""The random streams of :mod:`specalign.random_streams` in Triton, bit for bit.

Philox-4x32-10 keyed by the row seed, counter ``(vocab index, position low word, stream, position
high word)``, first output word ``x`` -> ``u = (2 * (x >> 9) + 1) * 2**-24``. It is written out with
explicit uint32 products (``tl.umulhi`` for the high word) rather than ``tl.rand`` because that one
keys its counter differently.
"""
from __future__ import annotations

import triton
import triton.language as tl

from specalign import random_streams

NOISE_STREAM = tl.constexpr(random_streams.NOISE)
ACCEPT_STREAM = tl.constexpr(random_streams.ACCEPT)

_ROUNDS = tl.constexpr(random_streams.PHILOX_ROUNDS)
_M0 = tl.constexpr(random_streams.PHILOX_M0)
_M1 = tl.constexpr(random_streams.PHILOX_M1)
_W0 = tl.constexpr(random_streams.PHILOX_W0)
_W1 = tl.constexpr(random_streams.PHILOX_W1)


@triton.jit
def philox_first_word(seed, c0, c1, c2, c3):
    """First output word of Philox-4x32-10; ``seed`` int64, counters uint32 (broadcast)."""
    k0 = seed.to(tl.uint32)  # truncation keeps the low word
    k1 = (seed >> 32).to(tl.uint32)
    for _ in tl.static_range(_ROUNDS):
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 += _W0
        k1 += _W1
    return c0


@triton.jit
def uniform(seed, position, vocab_index, stream: tl.constexpr):
    """float32 uniforms in (0, 1), exact: ``(2 * (x >> 9) + 1) * 2**-24``; ``position`` int64."""
    c0 = vocab_index.to(tl.uint32)
    c1 = position.to(tl.uint32)
    c2 = tl.full(c0.shape, stream, tl.uint32)
    c3 = (position >> 32).to(tl.uint32)
    x = philox_first_word(seed, c0, c1, c2, c3)
    return ((x >> 9) * 2 + 1).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def exponential(seed, position, vocab_index):
    """Exp(1) noise ``E = -log u`` of the token stream, one per vocab index."""
    return -tl.log(uniform(seed, position, vocab_index, NOISE_STREAM))
