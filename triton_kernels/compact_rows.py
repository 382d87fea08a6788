"""Triton kernel of :func:`specalign.ops.compact_rows`: keep rows ``keep`` of many tensors, in place.

One launch for every tensor (all layers' keys and values, ids, masks, per-row state; mixed dtypes,
non-contiguous views): a table row per tensor holds its address, word size and layout (see
:mod:`.strided_layout`). Grid: one program per block of columns of one tensor. It walks destination rows
``i`` in increasing order and copies row ``keep[i]`` into row ``i``: since ``keep`` is sorted and
unique, ``keep[i] >= i`` was not yet overwritten, and the leading rows with ``keep[i] == i`` are
skipped. Bytes: one read and one write of each moved row; nothing else.
"""
from __future__ import annotations

import triton
import triton.language as tl

from specalign.triton_kernels.launch import on_device
from specalign.triton_kernels.strided_layout import (ADDRESS, WALK_STRIDE, WORD_BYTES, layout_table, locate_columns,
                                                     word_pointer)


@triton.jit
def _move_rows(base, offset, in_tensor, row_stride, keep_ptr, num_kept):
    for row in range(0, num_kept):
        source = tl.load(keep_ptr + row)
        if source != row:
            words = tl.load(base + source * row_stride + offset, mask=in_tensor)
            tl.store(base + row * row_stride + offset, words, mask=in_tensor)


@triton.jit
def _compact_rows_kernel(table_ptr, keep_ptr, num_kept, num_rows,
                         BLOCK_ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # table_ptr: [num_rows, TABLE_FIELDS] int64, one row per tensor (strided_layout); keep_ptr: [num_kept] int64
    entry, offset, in_tensor = locate_columns(table_ptr, num_rows, tl.program_id(0), BLOCK_ROWS, BLOCK)
    address = tl.load(entry + ADDRESS)
    word_bytes = tl.load(entry + WORD_BYTES)
    row_stride = tl.load(entry + WALK_STRIDE)
    # The word size is per tensor, known only at run time: one branch per pointer type.
    if word_bytes == 8:
        _move_rows(word_pointer(address, tl.int64), offset, in_tensor, row_stride, keep_ptr, num_kept)
    elif word_bytes == 4:
        _move_rows(word_pointer(address, tl.int32), offset, in_tensor, row_stride, keep_ptr, num_kept)
    elif word_bytes == 2:
        _move_rows(word_pointer(address, tl.int16), offset, in_tensor, row_stride, keep_ptr, num_kept)
    else:
        _move_rows(word_pointer(address, tl.int8), offset, in_tensor, row_stride, keep_ptr, num_kept)


def compact_rows(tensors, keep, dims, *, block_size: int = 1024, num_warps: int = 8) -> None:
    """In place: rows ``0..len(keep)-1`` along ``dims`` take rows ``keep`` (sorted, unique int64).

    ``block_size`` (most words per program) and ``num_warps`` tune the launch, never the result.
    """
    if keep.numel() == 0:
        return
    table, block, programs = layout_table(tensors, dims, None, block_size)
    if programs:
        with on_device(keep.device):
            _compact_rows_kernel[(programs,)](
                table, keep, keep.numel(), table.shape[0],
                BLOCK_ROWS=triton.next_power_of_2(table.shape[0]), BLOCK=block, num_warps=num_warps)
