"""sample_with_stats (the draw and the confidence statistics in one pass over the logits) against
sample alone, sample followed by the statistics in PyTorch (a second pass), and the reference.

    python bench/bench_sample_with_stats.py [--threads 1] [--batch 64 --vocab 32000]

Inputs: fp32 logits 2*N(0,1). Minimum bytes: the logits, read once.
"""
from __future__ import annotations

import math

import torch
from common import Table, devices, parse_args

from specalign import ops


def statistics_pass(logits, tokens):
    """The statistics from the logits again, as a loop without the fused op computes them."""
    log_p = logits.log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    certainty = -log_p.mean(-1) - math.log(logits.shape[-1])
    return log_p.gather(1, tokens[:, None]).squeeze(1), entropy, certainty


def main():
    args = parse_args(__doc__, lambda p: (p.add_argument("--batch", type=int, default=64),
                                          p.add_argument("--vocab", type=int, default=32000)))
    table = Table(f"sample_with_stats: B={args.batch} V={args.vocab} fp32", args.batch * args.vocab * 4,
                  baseline="sample, then the statistics in PyTorch")
    g = torch.Generator().manual_seed(0)
    logits_cpu = 2.0 * torch.randn(args.batch, args.vocab, generator=g)
    for device in devices():
        logits = logits_cpu.to(device)
        seeds = torch.arange(args.batch, device=device)
        positions = torch.full((args.batch,), 100, device=device)
        kernel = "cpp" if device.type == "cpu" else "triton"
        draw = dict(seeds=seeds, positions=positions, check_values=False)

        def unfused():
            return statistics_pass(logits, ops.sample(logits, **draw, backend=kernel))

        table.time(f"{kernel} (check_values=True, the default)", device,
                   lambda: ops.sample_with_stats(logits, **dict(draw, check_values=True), backend=kernel), args.rounds)
        table.time(f"{kernel} (check_values=False)", device,
                   lambda: ops.sample_with_stats(logits, **draw, backend=kernel), args.rounds)
        table.time(f"sample alone, {kernel}", device, lambda: ops.sample(logits, **draw, backend=kernel), args.rounds)
        table.time("sample, then the statistics in PyTorch", device, unfused, args.rounds)
        if device.type == "cpu":
            table.time("reference", device, lambda: ops.sample_with_stats(logits, **draw, backend="reference"), 3)
    if not torch.cuda.is_available():
        table.skip("triton", "no CUDA device")
    table.print()


if __name__ == "__main__":
    main()
