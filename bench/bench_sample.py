"""sample against the reference and PyTorch's softmax + multinomial (what HF's ``_sample`` does).

    python bench/bench_sample.py [--threads 1] [--batch 64 --vocab 32000]

Inputs: fp32 logits 2*N(0,1). Minimum bytes: the logits, read once.
"""
from __future__ import annotations

import torch
from common import Table, devices, paired_ratio, parse_args

from specalign import ops


def main():
    args = parse_args(__doc__, lambda p: (p.add_argument("--batch", type=int, default=64),
                                          p.add_argument("--vocab", type=int, default=32000)))
    table = Table(f"sample: B={args.batch} V={args.vocab} fp32", args.batch * args.vocab * 4,
                  baseline="PyTorch softmax + multinomial (HF _sample)")
    g = torch.Generator().manual_seed(0)
    logits_cpu = 2.0 * torch.randn(args.batch, args.vocab, generator=g)
    for device in devices():
        logits = logits_cpu.to(device)
        seeds = torch.arange(args.batch, device=device)
        positions = torch.full((args.batch,), 100, device=device)
        kernel = "cpp" if device.type == "cpu" else "triton"

        def ours(check_values, backend=kernel):
            return ops.sample(logits, seeds=seeds, positions=positions, backend=backend, check_values=check_values)

        table.time(f"{kernel} (check_values=True, the default)", device, lambda: ours(True), args.rounds)
        table.time(f"{kernel} (check_values=False)", device, lambda: ours(False), args.rounds)
        ratio = paired_ratio(lambda: ours(True), lambda: ours(False), device, args.pairs)
        table.note(f"{kernel}: check_values=True / False, median of {args.pairs} interleaved pairs: {ratio:.3f}")
        ratio = paired_ratio(lambda: torch.multinomial(torch.softmax(logits, -1), 1), lambda: ours(True), device, args.pairs // 4)
        table.note(f"{table.baseline} / {kernel} (check_values=True), median of {args.pairs // 4} interleaved pairs: "
                   f"{ratio:.2f}")
        table.time("PyTorch softmax + multinomial (HF _sample)", device,
                   lambda: torch.multinomial(torch.softmax(logits, -1), 1), args.rounds)
        if device.type == "cpu":
            table.time("reference", device, lambda: ours(True, "reference"), 3)
    if not torch.cuda.is_available():
        table.skip("triton", "no CUDA device")
    table.print()


if __name__ == "__main__":
    main()
