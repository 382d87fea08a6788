"""The random streams every backend shares: stream ids and the Philox-4x32-10 constants.

Each backend computes the same bits (``reference.py`` in PyTorch integer ops, ``csrc/random_streams.h``
in C++, ``triton_kernels/random_streams.py`` in Triton); this module holds what they agree on.

Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) with key =
the row's int64 seed (low word, high word) and counter ``(vocab index, position low word, stream,
position high word)``; the first output word ``x`` becomes ``u = (2 * (x >> 9) + 1) * 2**-24``, which
lies in (0, 1) and is exact in float32. A draw at position ``pos`` uses the counters of ``pos``
only, so a row's tokens never depend on the other rows of the batch. See docs/math.md.
"""

NOISE = 0  # per-token exponentials E_v = -log u_v of every categorical draw
ACCEPT = 1  # the acceptance uniform of a draft position, at vocab index 0

PHILOX_ROUNDS = 10
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # key schedule increments (golden ratio, sqrt(3) - 1)
