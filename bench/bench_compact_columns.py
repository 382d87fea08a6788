"""compact_columns on a KV cache against the reference and a batched PyTorch index_select.

    python bench/bench_compact_columns.py [--threads 1] [--layers 16 --batch 64 --heads 8 --length 512 --head-dim 64]

The cache of bench_compact_rows.py; row ``b`` drops its last ``b % 5`` positions (the rejected drafts
of a K = 4 step). HF has no per-row crop. The PyTorch version right-aligns each row with one
``index_select`` of sequence positions per tensor into a new tensor and zeroes the freed positions. Minimum bytes: each kept
position that moves is read and written once, each freed position written once.
"""
from __future__ import annotations

import math

import torch
from common import Table, cache_tensors, devices, make_cache, parse_args

from specalign import ops


def make_keep_mask(batch, length, dropped_per_row=5):
    keep_mask = torch.ones(batch, length, dtype=torch.bool)
    for b in range(batch):
        keep_mask[b, length - b % dropped_per_row:] = False
    return keep_mask


def min_bytes(tensors, keep_mask):
    batch, length = keep_mask.shape
    kept = keep_mask.sum(-1)
    positions = torch.arange(length)
    # The k-th kept position (in order) goes to length - kept + k.
    target = length - kept[:, None] + keep_mask.long().cumsum(-1) - 1
    moved = int((keep_mask & (target != positions)).sum())
    freed = int((length - kept).sum())
    position_bytes = sum(t.numel() // (batch * length) * t.element_size() for t in tensors)
    return (2 * moved + freed) * position_bytes


def pytorch_compact_columns(tensors, keep_mask, dim):
    """Right-align every row's kept positions out of place, as a user would batch it: the sequence
    positions of a contiguous [B, M, S, N] view become rows of a [B*M*S, N] matrix, gathered with
    one index_select per tensor; the freed positions are zeroed."""
    batch, length = keep_mask.shape
    order = torch.sort(keep_mask.to(torch.int8), dim=1, stable=True).indices  # freed positions first, then the kept
    attention_mask = torch.arange(length, device=keep_mask.device) >= length - keep_mask.sum(-1, keepdim=True)
    out = []
    for t in tensors:
        middle = math.prod(t.shape[1:dim])
        rows = (torch.arange(batch * middle, device=t.device).view(batch, middle, 1) * length + order[:, None, :]).flatten()
        gathered = t.reshape(batch * middle * length, -1).index_select(0, rows).view(t.shape)
        shape = [batch] + [1] * (t.dim() - 1)
        shape[dim] = length
        out.append(gathered * attention_mask.view(shape).to(t.dtype))
    return out, attention_mask


def main():
    args = parse_args(__doc__, lambda p: (p.add_argument("--layers", type=int, default=16),
                                          p.add_argument("--batch", type=int, default=64),
                                          p.add_argument("--heads", type=int, default=8),
                                          p.add_argument("--length", type=int, default=512),
                                          p.add_argument("--head-dim", type=int, default=64)))
    keep_mask_cpu = make_keep_mask(args.batch, args.length)
    table = None
    for device in devices():
        tensors = cache_tensors(make_cache(args, device))
        keep_mask = keep_mask_cpu.to(device)
        if table is None:
            table = Table(f"compact_columns: {args.layers} layers x keys and values [{args.batch}, {args.heads}, "
                          f"{args.length}, {args.head_dim}] bf16, row b drops its last b % 5 positions",
                          min_bytes(tensors, keep_mask_cpu), baseline="PyTorch index_select (out of place)")
        kernel = "cpp" if device.type == "cpu" else "triton"
        # In place: every round moves the same positions again (the mask is the same).
        table.time(kernel, device, lambda: ops.compact_columns(tensors, keep_mask, dim=2, backend=kernel),
                   max(3, args.rounds // 2))
        table.time("PyTorch index_select (out of place)", device, lambda: pytorch_compact_columns(tensors, keep_mask, 2), 3)
        if device.type == "cpu":
            table.time("reference", device, lambda: ops.compact_columns(tensors, keep_mask, dim=2, backend="reference"), 3)
        del tensors
    if not torch.cuda.is_available():
        table.skip("triton", "no CUDA device")
    table.print()


if __name__ == "__main__":
    main()
