"""Helpers shared by the Triton kernels: the Philox random streams, lane reductions, launch sizing,
and the tensor-layout table that lets one compaction launch cover many tensors.

The streams are those of :mod:`specalign.reference`, bit for bit: Philox-4x32-10 keyed by the row
seed, counter ``(vocab index, position low word, stream, position high word)``, first output word
``x`` -> ``u = (2 * (x >> 9) + 1) * 2**-24``. It is written out with explicit uint32 products
(``tl.umulhi`` for the high word) rather than ``tl.rand`` because that one keys its counter
differently.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from specalign import reference

NOISE_STREAM = tl.constexpr(reference.NOISE)
ACCEPT_STREAM = tl.constexpr(reference.ACCEPT)

_PHILOX_M0 = tl.constexpr(0xD2511F53)
_PHILOX_M1 = tl.constexpr(0xCD9E8D57)
_PHILOX_W0 = tl.constexpr(0x9E3779B9)
_PHILOX_W1 = tl.constexpr(0xBB67AE85)


@triton.jit
def philox_first_word(seed, c0, c1, c2, c3):
    """First output word of Philox-4x32-10; ``seed`` int64, counters uint32 (broadcast)."""
    k0 = seed.to(tl.uint32)  # truncation keeps the low word
    k1 = (seed >> 32).to(tl.uint32)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _PHILOX_M0)
        lo0 = c0 * _PHILOX_M0
        hi1 = tl.umulhi(c2, _PHILOX_M1)
        lo1 = c2 * _PHILOX_M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 += _PHILOX_W0
        k1 += _PHILOX_W1
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


@triton.jit
def argmax_lanes(best, index, index_bound):
    """Reduce per-lane running maxima to (max, lowest index attaining it); ``index_bound`` > any index."""
    top = tl.max(best, axis=0)
    return top, tl.min(tl.where(best == top, index, index_bound), axis=0)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs one program at a time: fewer, longer programs are faster


def on_device(device: torch.device):
    """Launch on ``device`` even when it is not the current CUDA device (no-op for the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def split_vocab(rows: int, vocab: int, block: int, device: torch.device, num_splits: int | None = None,
                waves: int = 4) -> tuple[int, int]:
    """``(split_size, splits)``: how many programs share one vocab row, and the slice each one takes.

    By default enough programs to fill the device ``waves`` times over; slices are whole blocks.
    """
    splits = num_splits or triton.cdiv(waves * _multiprocessors(device), max(rows, 1))
    split_size = triton.cdiv(triton.cdiv(vocab, max(splits, 1)), block) * block
    return split_size, triton.cdiv(vocab, split_size)


# --- In-place compaction: one table row per tensor, so one launch moves every tensor ----------------
#
# Each tensor is seen as ``[walk, columns]`` (plus ``batch`` for compact_columns): ``walk`` is the
# dimension whose entries move, and every other dimension (but batch) is a column, located by up to
# ``COLUMN_DIMS`` (size, stride) pairs. Units are machine words of 1, 2, 4 or 8 bytes: a
# contiguous innermost dimension is regrouped into wider words when sizes and alignment allow.

ADDRESS, WORD_BYTES, WALK_STRIDE, BATCH_STRIDE, NUM_COLUMNS, FIRST_PROGRAM = (tl.constexpr(i) for i in range(6))
COLUMN_DIMS = tl.constexpr(4)
SIZES = tl.constexpr(6)  # sizes of the inner column dims 1..3 (dim 0 needs none)
STRIDES = tl.constexpr(SIZES + COLUMN_DIMS - 1)
TABLE_FIELDS = tl.constexpr(STRIDES + COLUMN_DIMS)


def _column_dims(tensor: torch.Tensor, skip: tuple[int, ...]) -> list[list[int]]:
    """(size, stride) of the column dims, outermost first, merged where memory is contiguous."""
    dims = sorted(([n, s] for d, (n, s) in enumerate(zip(tensor.shape, tensor.stride())) if d not in skip and n > 1),
                  key=lambda dim: -dim[1])  # any column order is valid: the same one serves source and target
    merged: list[list[int]] = []
    for size, stride in dims:
        if merged and merged[-1][1] == size * stride:
            merged[-1] = [merged[-1][0] * size, stride]
        else:
            merged.append([size, stride])
    return merged


def layout_row(tensor: torch.Tensor, walk_dim: int, batch_dim: int | None) -> list[int] | None:
    """The table row of ``tensor`` (FIRST_PROGRAM left 0), or None if it has too many column dims."""
    skip = (walk_dim,) if batch_dim is None else (walk_dim, batch_dim)
    columns = _column_dims(tensor, skip)
    if len(columns) > COLUMN_DIMS.value:
        return None
    word = tensor.element_size()
    walk_stride = tensor.stride(walk_dim)
    batch_stride = 0 if batch_dim is None else tensor.stride(batch_dim)
    # Two adjacent words become one while the innermost dim is contiguous and everything stays aligned.
    while (word < 8 and columns and columns[-1][1] == 1 and columns[-1][0] % 2 == 0
           and all(s % 2 == 0 for s in [walk_stride, batch_stride] + [c[1] for c in columns[:-1]])
           and tensor.data_ptr() % (2 * word) == 0):
        word *= 2
        walk_stride //= 2
        batch_stride //= 2
        columns = [[n, s // 2] for n, s in columns[:-1]] + [[columns[-1][0] // 2, 1]]
    columns = [[1, 0]] * (COLUMN_DIMS.value - len(columns)) + columns
    num_columns = 1
    for size, _ in columns:
        num_columns *= size
    row = [tensor.data_ptr(), word, walk_stride, batch_stride, num_columns, 0]
    return row + [size for size, _ in columns[1:]] + [stride for _, stride in columns]


def layout_table(tensors, walk_dims, batch_dim: int | None, max_block: int):
    """The int64 ``[T, TABLE_FIELDS]`` table of the tensors that fit, the block (columns per program,
    at most ``max_block``, no wider than the widest tensor needs), the total program count, and the
    (tensor, walk dim) pairs that do not fit."""
    rows, others = [], []
    for tensor, walk_dim in zip(tensors, walk_dims):
        if tensor.numel() == 0:
            continue
        row = layout_row(tensor, walk_dim, batch_dim)
        if row is None:
            others.append((tensor, walk_dim))
        else:
            rows.append(row)
    block = min(max_block, triton.next_power_of_2(max((row[NUM_COLUMNS] for row in rows), default=1)))
    programs = 0
    for row in rows:
        row[FIRST_PROGRAM] = programs
        programs += triton.cdiv(row[NUM_COLUMNS], block)
    device = tensors[0].device if tensors else "cpu"
    table = torch.tensor(rows, dtype=torch.int64).view(-1, TABLE_FIELDS.value).to(device, non_blocking=True)
    return table, block, programs, others


@triton.jit
def locate_columns(table_ptr, num_tensors, program, BLOCK_TENSORS: tl.constexpr, BLOCK: tl.constexpr):
    """The table row of ``program``'s tensor and the word offsets of its block of columns."""
    tensors = tl.arange(0, BLOCK_TENSORS)
    firsts = tl.load(table_ptr + tensors * TABLE_FIELDS + FIRST_PROGRAM, mask=tensors < num_tensors, other=2**62)
    entry = table_ptr + (tl.sum((firsts <= program).to(tl.int32), axis=0) - 1) * TABLE_FIELDS
    column = (program - tl.load(entry + FIRST_PROGRAM)) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    in_tensor = column < tl.load(entry + NUM_COLUMNS)
    # Mixed-radix split of the column index, innermost dim fastest.
    offset = tl.zeros([BLOCK], tl.int64)
    for d in tl.static_range(COLUMN_DIMS - 1, 0, -1):
        size = tl.load(entry + SIZES + d - 1)
        offset += (column % size) * tl.load(entry + STRIDES + d)
        column = column // size
    offset += column * tl.load(entry + STRIDES)
    return entry, offset, in_tensor


@triton.jit
def word_pointer(address, word: tl.constexpr):
    """The raw int64 address of a table row as a pointer to ``word`` (an integer dtype of the word size)."""
    return address.to(tl.pointer_type(word), bitcast=True)
