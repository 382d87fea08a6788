"""The tensor-layout table that lets one compaction launch move many tensors, whatever their strides.

Each tensor is seen as ``[walk, columns]`` (plus ``batch`` for compact_columns): ``walk`` is the
dimension whose entries move, and every other dimension (but batch) is a column, located by up to
``COLUMN_DIMS`` (size, stride) pairs. Units are machine words of 1, 2, 4 or 8 bytes: a contiguous
innermost dimension is regrouped into wider words when sizes and alignment allow. A tensor whose
columns need more than ``COLUMN_DIMS`` pairs (dimensions that do not merge) takes one table row per
index of its outermost column dimension.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

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


def _widen_words(tensor, columns, walk_stride, batch_stride):
    """Two adjacent words become one while the innermost dim is contiguous and everything stays aligned."""
    word = tensor.element_size()
    while (word < 8 and columns and columns[-1][1] == 1 and columns[-1][0] % 2 == 0
           and all(s % 2 == 0 for s in [walk_stride, batch_stride] + [c[1] for c in columns[:-1]])
           and tensor.data_ptr() % (2 * word) == 0):
        word *= 2
        walk_stride //= 2
        batch_stride //= 2
        columns = [[n, s // 2] for n, s in columns[:-1]] + [[columns[-1][0] // 2, 1]]
    return word, columns, walk_stride, batch_stride


def table_rows(tensor: torch.Tensor, walk_dim: int, batch_dim: int | None) -> list[list[int]]:
    """The table rows of ``tensor`` (FIRST_PROGRAM left 0): one, or one per outermost column index."""
    skip = (walk_dim,) if batch_dim is None else (walk_dim, batch_dim)
    columns = _column_dims(tensor, skip)
    if len(columns) > COLUMN_DIMS.value:
        outer = max((d for d in range(tensor.dim()) if d not in skip and tensor.shape[d] > 1), key=tensor.stride)
        return [row for i in range(tensor.shape[outer])
                for row in table_rows(tensor.narrow(outer, i, 1), walk_dim, batch_dim)]
    batch_stride = 0 if batch_dim is None else tensor.stride(batch_dim)
    word, columns, walk_stride, batch_stride = _widen_words(tensor, columns, tensor.stride(walk_dim), batch_stride)
    columns = [[1, 0]] * (COLUMN_DIMS.value - len(columns)) + columns
    num_columns = 1
    for size, _ in columns:
        num_columns *= size
    row = [tensor.data_ptr(), word, walk_stride, batch_stride, num_columns, 0]
    return [row + [size for size, _ in columns[1:]] + [stride for _, stride in columns]]


def layout_table(tensors, walk_dims, batch_dim: int | None, max_block: int):
    """The int64 ``[rows, TABLE_FIELDS]`` table of the tensors, the block (columns per program, at most
    ``max_block``, no wider than the widest row needs) and the total program count."""
    rows = [row for tensor, walk_dim in zip(tensors, walk_dims) if tensor.numel()
            for row in table_rows(tensor, walk_dim, batch_dim)]
    block = min(max_block, triton.next_power_of_2(max((row[NUM_COLUMNS] for row in rows), default=1)))
    programs = 0
    for row in rows:
        row[FIRST_PROGRAM] = programs
        programs += triton.cdiv(row[NUM_COLUMNS], block)
    device = tensors[0].device if tensors else "cpu"
    table = torch.tensor(rows, dtype=torch.int64).view(-1, TABLE_FIELDS.value).to(device, non_blocking=True)
    return table, block, programs


@triton.jit
def locate_columns(table_ptr, num_rows, program, BLOCK_ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """The table row of ``program``'s tensor and the word offsets of its block of columns."""
    rows = tl.arange(0, BLOCK_ROWS)
    firsts = tl.load(table_ptr + rows * TABLE_FIELDS + FIRST_PROGRAM, mask=rows < num_rows, other=2**62)
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
