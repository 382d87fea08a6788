"""compact_rows on a KV cache against the reference, HF's ``Cache.batch_select_indices`` and PyTorch's
``index_select``.

    python bench/bench_compact_rows.py [--threads 1] [--layers 16 --batch 64 --heads 8 --length 512 --head-dim 64]

A ``DynamicCache`` of ``layers`` layers, keys and values ``[batch, heads, length, head_dim]`` bf16;
keep half the rows, chosen at random. Minimum bytes: read and write each moved row once (rows
before the first one that moves are already in place). HF and ``index_select`` gather into new
tensors; the reference gathers, then copies back.
"""
from __future__ import annotations

import torch
from common import Table, cache_tensors, devices, make_cache, parse_args

from specalign import ops


def min_bytes(tensors, keep):
    moved = sum(1 for i, k in enumerate(keep.tolist()) if k != i)  # sorted, unique: after the first move, all move
    return sum(2 * moved * t[0].numel() * t.element_size() for t in tensors)


def main():
    args = parse_args(__doc__, lambda p: (p.add_argument("--layers", type=int, default=16),
                                          p.add_argument("--batch", type=int, default=64),
                                          p.add_argument("--heads", type=int, default=8),
                                          p.add_argument("--length", type=int, default=512),
                                          p.add_argument("--head-dim", type=int, default=64)))
    keep_cpu = torch.randperm(args.batch, generator=torch.Generator().manual_seed(2))[: args.batch // 2].sort().values
    table = None
    for device in devices():
        cache = make_cache(args, device)
        tensors = cache_tensors(cache)
        keep = keep_cpu.to(device)
        if table is None:
            table = Table(f"compact_rows: {args.layers} layers x keys and values [{args.batch}, {args.heads}, "
                          f"{args.length}, {args.head_dim}] bf16 ({sum(t.nbytes for t in tensors) / 2**30:.2f} GiB), "
                          f"keep {len(keep_cpu)} rows", min_bytes(tensors, keep_cpu),
                          baseline="PyTorch index_select (out of place)")
        kernel = "cpp" if device.type == "cpu" else "triton"
        # In place: the same keep moves the same bytes every round.
        table.time(kernel, device, lambda: ops.compact_rows(tensors, keep, backend=kernel), max(3, args.rounds // 2))
        table.time("PyTorch index_select (out of place)", device, lambda: [t.index_select(0, keep) for t in tensors], 3)
        full = [(layer.keys, layer.values) for layer in cache.layers]

        def restore():
            for layer, (keys, values) in zip(cache.layers, full):
                layer.keys, layer.values = keys, values

        table.time("HF Cache.batch_select_indices", device, lambda: cache.batch_select_indices(keep), 3, setup=restore)
        restore()
        if device.type == "cpu":
            table.time("reference", device, lambda: ops.compact_rows(tensors, keep, backend="reference"), 3)
        del cache, tensors, full
    if not torch.cuda.is_available():
        table.skip("triton", "no CUDA device")
    table.print()


if __name__ == "__main__":
    main()
