"""speculative_verify (standard and SSS) against the reference, HF and a plain batched PyTorch verify.

    python bench/bench_speculative_verify.py [--threads 1] [--mode both] [--batch 64 --draft 4 --vocab 32000]

Inputs: fp32 target logits 2*N(0,1), draft = target + 0.7*N(0,1) (SSS: ref = draft + 0.3*N(0,1)), the
drafts drawn from the draft, so rows accept a varying prefix. ``check_values=True`` is the default
call the generate loops make; ``check_values=False`` skips the value checks.

Minimum bytes: every position a row reaches reads its target and draft rows once for the
normalisers (2 rows; SSS 3, the shifted target needs the reference draft's row too), and a row that
accepts all K drafts reads its bonus row (1 row; SSS 3); the residual re-reads a row just read.
"""
from __future__ import annotations

import torch
from common import Table, devices, make_verify_inputs, paired_ratio, parse_args
from transformers.generation.utils import _speculative_sampling

from specalign import ops


def op_arguments(x, sss):
    """(draft_tokens, draft_logits, target_logits, ref_logits): SSS gives the drafts' K+1-th rows."""
    return (x["drafts"], x["draft"], x["target"], x["ref"]) if sss else (x["drafts"], x["draft_k"], x["target"], None)


def min_bytes(num_accepted, num_draft, vocab, element_bytes, sss):
    row = vocab * element_bytes
    reached = torch.clamp(num_accepted + 1, max=num_draft)
    bonus = (num_accepted == num_draft).long()
    return int(((3 if sss else 2) * reached * row + (3 if sss else 1) * bonus * row).sum())


def pytorch_verify(draft_tokens, draft_logits, target_logits, ref_logits):
    """Speculative verification as a user would batch it in PyTorch: softmax, gather, accept, residual,
    multinomial (the SSS target as ``target + draft - ref``)."""
    batch, num_draft = draft_tokens.shape
    if ref_logits is not None:
        target_logits = target_logits + draft_logits - ref_logits
    p = torch.softmax(target_logits, -1)
    q = torch.softmax(draft_logits[:, :num_draft], -1)
    index = draft_tokens.unsqueeze(-1)
    p_x, q_x = p[:, :num_draft].gather(-1, index).squeeze(-1), q.gather(-1, index).squeeze(-1)
    accepted = torch.rand_like(p_x) < p_x / q_x
    num_accepted = accepted.long().cumprod(-1).sum(-1)
    rows = torch.arange(batch, device=p.device)
    p_n = p[rows, num_accepted]
    q_n = torch.nn.functional.pad(q, (0, 0, 0, 1))[rows, num_accepted]  # no draft mass at the bonus row
    residual = (p_n - q_n).clamp_min(0)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_n)
    last = torch.multinomial(residual, 1).squeeze(-1)
    steps = torch.arange(num_draft + 1, device=p.device)
    tokens = torch.where(steps[:num_draft] < num_accepted[:, None], draft_tokens, -1)
    tokens = torch.cat([tokens, torch.full_like(tokens[:, :1], -1)], 1)
    tokens[rows, num_accepted] = last
    return tokens, num_accepted, num_accepted + 1


def hf_verify(x, num_draft):
    """HF's ``_speculative_sampling`` handles one row: loop over the batch (it takes the drafts as the
    tail of the sequence)."""
    candidates = torch.cat([torch.zeros_like(x["drafts"][:, :1]).expand(-1, 16), x["drafts"]], 1)
    return [_speculative_sampling(candidates[b:b + 1], x["draft_k"][b:b + 1], num_draft, x["target"][b:b + 1])
            for b in range(candidates.shape[0])]


def run(args, sss):
    mode = "SSS" if sss else "standard"
    x_cpu = make_verify_inputs(args.batch, args.draft, args.vocab, "cpu")
    args_cpu = op_arguments(x_cpu, sss)
    accepted = ops.speculative_verify(*args_cpu, seeds=x_cpu["seeds"], positions=x_cpu["positions"]).num_accepted
    table = Table(f"speculative_verify {mode}: B={args.batch} K={args.draft} V={args.vocab} fp32, "
                  f"{float(accepted.float().mean()):.2f} of {args.draft} drafts accepted per row",
                  min_bytes(accepted, args.draft, args.vocab, 4, sss), baseline="PyTorch batched")
    for device in devices():
        x = x_cpu if device.type == "cpu" else make_verify_inputs(args.batch, args.draft, args.vocab, device)
        arguments = op_arguments(x, sss)
        kernel = "cpp" if device.type == "cpu" else "triton"

        def ours(check_values):
            return ops.speculative_verify(*arguments, seeds=x["seeds"], positions=x["positions"], backend=kernel,
                                          check_values=check_values)

        table.time(f"{kernel} (check_values=True, the default)", device, lambda: ours(True), args.rounds)
        table.time(f"{kernel} (check_values=False)", device, lambda: ours(False), args.rounds)
        ratio = paired_ratio(lambda: ours(True), lambda: ours(False), device, args.pairs)
        table.note(f"{kernel}: check_values=True / False, median of {args.pairs} interleaved pairs: {ratio:.3f}")
        ratio = paired_ratio(lambda: pytorch_verify(*arguments), lambda: ours(True), device, args.pairs // 4)
        table.note(f"{table.baseline} / {kernel} (check_values=True), median of {args.pairs // 4} interleaved pairs: "
                   f"{ratio:.2f}")
        table.time("PyTorch batched", device, lambda: pytorch_verify(*arguments), max(3, args.rounds // 4))
        if not sss:
            table.time("HF _speculative_sampling, looped over rows", device, lambda: hf_verify(x, args.draft), 3)
        if device.type == "cpu":
            table.time("reference", device, lambda: ops.speculative_verify(
                *arguments, seeds=x["seeds"], positions=x["positions"], backend="reference"), 3)
    if not torch.cuda.is_available():
        table.skip("triton", "no CUDA device")
    table.print()


def main():
    args = parse_args(__doc__, lambda p: (p.add_argument("--batch", type=int, default=64),
                                          p.add_argument("--draft", type=int, default=4),
                                          p.add_argument("--vocab", type=int, default=32000),
                                          p.add_argument("--mode", choices=["standard", "sss", "both"], default="both")))
    for sss in (False, True):
        if args.mode in ("both", "sss" if sss else "standard"):
            run(args, sss)


if __name__ == "__main__":
    main()
