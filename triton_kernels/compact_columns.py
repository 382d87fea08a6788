"""Triton kernel of :func:`specalign.ops.compact_columns`: right-align each row's kept positions, in place.

One launch for every tensor, laid out in a table as in :mod:`.compact_rows` with the sequence
dimension as the walked one. Grid ``(column blocks of all tensors, B)``: a program owns one block
of columns of one batch row and walks the positions from right to left, moving the ``k``-th kept
position from the right to ``S - 1 - k``. A destination is never left of its source, and every
destination written so far lies right of the position being read, so nothing is read after it
was overwritten. The freed left part is then zeroed. Programs of column block 0 also write the
row's length and attention mask. Bytes: one read and one write per moved position, one write per
zeroed one.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from specalign.triton_kernels.launch import on_device
from specalign.triton_kernels.strided_layout import (ADDRESS, BATCH_STRIDE, WALK_STRIDE, WORD_BYTES, layout_table,
                                                     locate_columns, word_pointer)


@triton.jit
def _right_align(row_base, offset, in_tensor, position_stride, keep_row_ptr, length):
    target = length - 1
    for step in range(0, length):
        position = length - 1 - step
        if tl.load(keep_row_ptr + position) != 0:
            if target != position:
                words = tl.load(row_base + position * position_stride + offset, mask=in_tensor)
                tl.store(row_base + target * position_stride + offset, words, mask=in_tensor)
            target -= 1
    for position in range(0, target + 1):
        tl.store(row_base + position * position_stride + offset, tl.full(offset.shape, 0, row_base.dtype.element_ty),
                 mask=in_tensor)


@triton.jit
def _compact_columns_kernel(table_ptr, keep_mask_ptr, lengths_ptr, attention_mask_ptr, length, num_rows,
                            BLOCK_ROWS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_S: tl.constexpr):
    # table_ptr: [num_rows, TABLE_FIELDS] int64 (strided_layout); keep_mask_ptr: [B, S] uint8;
    # lengths_ptr: [B] int64; attention_mask_ptr: [B, S] int64
    program = tl.program_id(0)
    b = tl.program_id(1)
    keep_row_ptr = keep_mask_ptr + b.to(tl.int64) * length

    if program == 0:
        kept = tl.zeros([BLOCK_S], tl.int64)
        for start in range(0, length, BLOCK_S):
            positions = start + tl.arange(0, BLOCK_S)
            kept += tl.load(keep_row_ptr + positions, mask=positions < length, other=0).to(tl.int64)
        row_length = tl.sum(kept, axis=0)
        tl.store(lengths_ptr + b, row_length)
        for start in range(0, length, BLOCK_S):
            positions = start + tl.arange(0, BLOCK_S)
            tl.store(attention_mask_ptr + b.to(tl.int64) * length + positions,
                     (positions >= length - row_length).to(tl.int64), mask=positions < length)

    if num_rows > 0:
        entry, offset, in_tensor = locate_columns(table_ptr, num_rows, program, BLOCK_ROWS, BLOCK)
        address = tl.load(entry + ADDRESS)
        word_bytes = tl.load(entry + WORD_BYTES)
        row_offset = b * tl.load(entry + BATCH_STRIDE)
        position_stride = tl.load(entry + WALK_STRIDE)
        # The word size is per tensor, known only at run time: one branch per pointer type.
        if word_bytes == 8:
            _right_align(word_pointer(address, tl.int64) + row_offset, offset, in_tensor, position_stride, keep_row_ptr, length)
        elif word_bytes == 4:
            _right_align(word_pointer(address, tl.int32) + row_offset, offset, in_tensor, position_stride, keep_row_ptr, length)
        elif word_bytes == 2:
            _right_align(word_pointer(address, tl.int16) + row_offset, offset, in_tensor, position_stride, keep_row_ptr, length)
        else:
            _right_align(word_pointer(address, tl.int8) + row_offset, offset, in_tensor, position_stride, keep_row_ptr, length)


def compact_columns(tensors, keep_mask, dims, *, block_size: int = 1024, num_warps: int = 8):
    """In place; returns ``(lengths [B] int64, attention_mask [B, S] int64)``.

    ``block_size`` (most words per program) and ``num_warps`` tune the launch, never the result.
    """
    batch, length = keep_mask.shape
    lengths = torch.empty(batch, dtype=torch.int64, device=keep_mask.device)
    attention_mask = torch.empty((batch, length), dtype=torch.int64, device=keep_mask.device)
    if batch == 0:
        return lengths, attention_mask
    table, block, programs = layout_table(tensors, dims, 0, block_size)
    with on_device(keep_mask.device):
        # At least one program per row: column block 0 writes the lengths and mask even with no tensors.
        _compact_columns_kernel[(max(programs, 1), batch)](
            table, keep_mask.contiguous().view(torch.uint8), lengths, attention_mask, length, table.shape[0],
            BLOCK_ROWS=triton.next_power_of_2(max(table.shape[0], 1)), BLOCK=block,
            BLOCK_S=min(triton.next_power_of_2(max(length, 1)), 1024), num_warps=num_warps)
    return lengths, attention_mask
