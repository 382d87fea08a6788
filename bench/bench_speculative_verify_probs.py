"""speculative_verify_probs against the reference and a plain batched PyTorch verify from probabilities.

    python bench/bench_speculative_verify_probs.py [--threads 1] [--batch 64 --draft 4 --vocab 32000]

Inputs: the probabilities of bench_speculative_verify.py's standard-mode logits.

Minimum bytes: two gathered entries per draft position reached, then one row pair (p and q) per
row that rejects, or one row (p) per row that accepts all K; reading all of p and q would be
``(2K + 1) V`` elements per row.
"""
from __future__ import annotations

import torch
from common import Table, devices, make_verify_inputs, paired_ratio, parse_args

from specalign import ops


def min_bytes(num_accepted, num_draft, vocab, element_bytes):
    reached = torch.clamp(num_accepted + 1, max=num_draft)
    rows_read = torch.where(num_accepted < num_draft, 2, 1)
    return int((2 * reached * element_bytes + rows_read * vocab * element_bytes).sum())


def pytorch_verify_probs(draft_tokens, draft_probs, target_probs):
    """Gather, accept, residual, multinomial, batched as a user would write it."""
    batch, num_draft = draft_tokens.shape
    index = draft_tokens.unsqueeze(-1)
    p_x = target_probs[:, :num_draft].gather(-1, index).squeeze(-1)
    q_x = draft_probs.gather(-1, index).squeeze(-1)
    accepted = torch.rand_like(p_x) < p_x / q_x
    num_accepted = accepted.long().cumprod(-1).sum(-1)
    rows = torch.arange(batch, device=draft_tokens.device)
    p_n = target_probs[rows, num_accepted]
    q_n = torch.nn.functional.pad(draft_probs, (0, 0, 0, 1))[rows, num_accepted]
    residual = (p_n - q_n).clamp_min(0)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_n)
    return num_accepted, torch.multinomial(residual, 1).squeeze(-1)


def main():
    args = parse_args(__doc__, lambda p: (p.add_argument("--batch", type=int, default=64),
                                          p.add_argument("--draft", type=int, default=4),
                                          p.add_argument("--vocab", type=int, default=32000)))
    table = None
    for device in devices():
        x = make_verify_inputs(args.batch, args.draft, args.vocab, device)
        draft_probs, target_probs = torch.softmax(x["draft_k"], -1), torch.softmax(x["target"], -1)
        kernel = "cpp" if device.type == "cpu" else "triton"

        def ours(check_values, backend=kernel):
            return ops.speculative_verify_probs(x["drafts"], draft_probs, target_probs, seeds=x["seeds"],
                                                positions=x["positions"], backend=backend, check_values=check_values)

        if table is None:
            accepted = ours(True).num_accepted.cpu()
            table = Table(f"speculative_verify_probs: B={args.batch} K={args.draft} V={args.vocab} fp32, "
                          f"{float(accepted.float().mean()):.2f} of {args.draft} drafts accepted per row",
                          min_bytes(accepted, args.draft, args.vocab, 4), baseline="PyTorch batched")
        table.time(f"{kernel} (check_values=True, the default)", device, lambda: ours(True), args.rounds)
        table.time(f"{kernel} (check_values=False)", device, lambda: ours(False), args.rounds)
        ratio = paired_ratio(lambda: ours(True), lambda: ours(False), device, args.pairs)
        table.note(f"{kernel}: check_values=True / False, median of {args.pairs} interleaved pairs: {ratio:.3f}")
        ratio = paired_ratio(lambda: pytorch_verify_probs(x["drafts"], draft_probs, target_probs), lambda: ours(True), device, args.pairs // 4)
        table.note(f"{table.baseline} / {kernel} (check_values=True), median of {args.pairs // 4} interleaved pairs: "
                   f"{ratio:.2f}")
        table.time("PyTorch batched", device, lambda: pytorch_verify_probs(x["drafts"], draft_probs, target_probs),
                   max(3, args.rounds // 4))
        if device.type == "cpu":
            table.time("reference", device, lambda: ours(True, "reference"), 3)
    if not torch.cuda.is_available():
        table.skip("triton", "no CUDA device")
    table.print()


if __name__ == "__main__":
    main()
