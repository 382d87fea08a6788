"""Triton kernel of :func:`specalign.ops.fork_rows`: rows ``0..n-1`` take rows ``index`` (sorted,
repeats allowed) of many tensors, in place.

One launch for every tensor, through the layout table of :mod:`.strided_layout` (as :mod:`.compact_rows`).
Grid: one program per block of columns of one tensor. The destinations that change are walked in
a race-free order computed on the host side of the launch (see ``csrc/fork_rows.cpp``): those
that read a lower row (``index[i] < i``) in decreasing order, then those that read a higher row in
increasing order, so each source row is read before anything overwrites it. Bytes: one read and
one write of each changed row; nothing else.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specalign.triton_kernels.launch import on_device
from specalign.triton_kernels.strided_layout import (ADDRESS, WALK_STRIDE, WORD_BYTES, layout_table, locate_columns,
                                                     word_pointer)


@triton.jit
def _copy_rows(base, offset, in_tensor, row_stride, order_ptr, index_ptr, num_writes):
    for k in range(0, num_writes):
        row = tl.load(order_ptr + k)
        source = tl.load(index_ptr + row)
        words = tl.load(base + source * row_stride + offset, mask=in_tensor)
        tl.store(base + row * row_stride + offset, words, mask=in_tensor)


@triton.jit
def _fork_rows_kernel(table_ptr, order_ptr, index_ptr, num_writes, num_rows,
                      BLOCK_ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # table_ptr: [num_rows, TABLE_FIELDS] int64, one row per tensor (strided_layout); order_ptr:
    # [num_writes] int64 destinations in write order; index_ptr: [n] int64 sources
    entry, offset, in_tensor = locate_columns(table_ptr, num_rows, tl.program_id(0), BLOCK_ROWS, BLOCK)
    address = tl.load(entry + ADDRESS)
    word_bytes = tl.load(entry + WORD_BYTES)
    row_stride = tl.load(entry + WALK_STRIDE)
    # The word size is per tensor, known only at run time: one branch per pointer type.
    if word_bytes == 8:
        _copy_rows(word_pointer(address, tl.int64), offset, in_tensor, row_stride, order_ptr, index_ptr, num_writes)
    elif word_bytes == 4:
        _copy_rows(word_pointer(address, tl.int32), offset, in_tensor, row_stride, order_ptr, index_ptr, num_writes)
    elif word_bytes == 2:
        _copy_rows(word_pointer(address, tl.int16), offset, in_tensor, row_stride, order_ptr, index_ptr, num_writes)
    else:
        _copy_rows(word_pointer(address, tl.int8), offset, in_tensor, row_stride, order_ptr, index_ptr, num_writes)


def write_order(index: torch.Tensor) -> torch.Tensor:
    """The destinations whose row changes, in a race-free order: down-moves in decreasing order, then
    up-moves in increasing order (int64, on ``index``'s device)."""
    rows = torch.arange(index.numel(), device=index.device)
    down = rows[index < rows].flip(0)
    up = rows[index > rows]
    return torch.cat([down, up])


def fork_rows(tensors, index, dims, *, block_size: int = 1024, num_warps: int = 8) -> None:
    """In place: rows ``0..len(index)-1`` along ``dims`` take rows ``index`` (sorted int64, repeats allowed).

    ``block_size`` (most words per program) and ``num_warps`` tune the launch, never the result.
    """
    order = write_order(index)
    if order.numel() == 0:
        return
    table, block, programs = layout_table(tensors, dims, None, block_size)
    if programs:
        with on_device(index.device):
            _fork_rows_kernel[(programs,)](
                table, order, index, order.numel(), table.shape[0],
                BLOCK_ROWS=triton.next_power_of_2(table.shape[0]), BLOCK=block, num_warps=num_warps)
