"""fork_rows on a KV cache against the reference, HF's ``Cache.reorder_cache`` (its beam-search
reordering) and PyTorch's ``index_select``.

    python bench/bench_fork_rows.py [--threads 1] [--layers 16 --batch 64 --heads 8 --length 256 --head-dim 64]
                                    [--beams 8]

A ``DynamicCache`` of ``layers`` layers, keys and values ``[batch, heads, length, head_dim]`` bf16;
one beam-search step: ``beams`` rows, chosen at random, each forked into ``batch / beams`` rows.
Minimum bytes: read and write each row whose source is another row once (rows forked onto
themselves stay). HF and ``index_select`` gather into new tensors; the reference gathers, then
copies back. Each call of the in-place kernels starts from the same cache (restored untimed).
"""
from __future__ import annotations

import torch
from common import Table, cache_tensors, devices, make_cache, parse_args

from specalign import ops


def min_bytes(tensors, index):
    changed = int((index != torch.arange(len(index))).sum())
    return sum(2 * changed * t[0].numel() * t.element_size() for t in tensors)


def main():
    args = parse_args(__doc__, lambda p: (p.add_argument("--layers", type=int, default=16),
                                          p.add_argument("--batch", type=int, default=64),
                                          p.add_argument("--heads", type=int, default=8),
                                          p.add_argument("--length", type=int, default=256),
                                          p.add_argument("--head-dim", type=int, default=64),
                                          p.add_argument("--beams", type=int, default=8)))
    parents = torch.randperm(args.batch, generator=torch.Generator().manual_seed(2))[: args.beams].sort().values
    index_cpu = parents.repeat_interleave(args.batch // args.beams)
    table = None
    for device in devices():
        cache = make_cache(args, device)
        tensors = cache_tensors(cache)
        originals = [t.clone() for t in tensors]
        index = index_cpu.to(device)
        if table is None:
            table = Table(f"fork_rows: {args.layers} layers x keys and values [{args.batch}, {args.heads}, "
                          f"{args.length}, {args.head_dim}] bf16 ({sum(t.nbytes for t in tensors) / 2**30:.2f} GiB), "
                          f"{args.beams} beams x {args.batch // args.beams} rows", min_bytes(tensors, index_cpu),
                          baseline="PyTorch index_select (out of place)")

        def restore():
            for tensor, original in zip(tensors, originals):
                tensor.copy_(original)
            for layer, keys, values in zip(cache.layers, tensors[::2], tensors[1::2]):
                layer.keys, layer.values = keys, values

        kernel = "cpp" if device.type == "cpu" else "triton"
        table.time(kernel, device, lambda: ops.fork_rows(tensors, index, backend=kernel), max(3, args.rounds // 2),
                   setup=restore)
        table.time("PyTorch index_select (out of place)", device, lambda: [t.index_select(0, index) for t in tensors], 3)
        table.time("HF Cache.reorder_cache", device, lambda: cache.reorder_cache(index), 3, setup=restore)
        if device.type == "cpu":
            table.time("reference", device, lambda: ops.fork_rows(tensors, index, backend="reference"), 3,
                       setup=restore)
        del cache, tensors, originals
    if not torch.cuda.is_available():
        table.skip("triton", "no CUDA device")
    table.print()


if __name__ == "__main__":
    main()
