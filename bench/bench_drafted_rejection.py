"""Speculative Rejection with a draft vs plain Speculative Rejection on the bundled world.

    OMP_NUM_THREADS=1 python bench/bench_drafted_rejection.py [--seeds 3] [--prompts 16]

Same N, decision points and alpha (the demo's: 40 new tokens, decisions at 6 and 12, alpha 0.5);
with ``draft=`` every sample still follows the target's distribution exactly, so the rewards agree
up to sampling noise and the question is what the draft saves: target forward passes and wall time.
Also Best-of-N with and without the draft, and SSS inside Speculative Rejection (the aligned draft
proposing, the unaligned draft as ``ref_draft``), whose samples follow the reward-tilted target.
Means over ``--seeds`` runs (seeds 0, 1, ...), one thread; the proxy reward model prunes.

``--candidates``: instead, the distribution check on the world. Every candidate of Best-of-N with
and without the draft (not only the chosen one): mean gold reward and answer length with their
standard errors, which must agree up to sampling noise.
"""
from __future__ import annotations

import argparse
import math

from world_runs import mean_runs, measure, table, world_setup

import torch

from specalign import BestOfN, SpeculativeRejection


def methods(world, reward, n, args):
    spr = dict(n=n, alpha=0.5, decision_tokens=args.decision_tokens)
    drafted = dict(draft=world.draft, num_draft_tokens=args.num_draft_tokens)
    sss = dict(draft=world.aligned_draft, ref_draft=world.draft, num_draft_tokens=args.num_draft_tokens)
    return [
        ("Best-of-N", BestOfN(reward, n=n)),
        ("Best-of-N + draft", BestOfN(reward, n=n, **drafted)),
        ("Speculative Rejection", SpeculativeRejection(reward, **spr)),
        ("Speculative Rejection + draft", SpeculativeRejection(reward, **spr, **drafted)),
        ("Speculative Rejection + SSS", SpeculativeRejection(reward, **spr, **sss)),
    ]


def candidate_statistics(world, prompts, reward, method, max_new_tokens, seeds):
    """Gold reward and length of every candidate, ``[seeds, P * n]``, over ``seeds`` runs of ``method``."""
    golds, lengths = [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        inputs = world.tokenizer(prompts, return_tensors="pt", padding=True)
        out = world.target.generate(**inputs, custom_generate=method(seed), do_sample=True,
                                    max_new_tokens=max_new_tokens, return_dict_in_generate=True)
        for prompt, tokens, counts in zip(prompts, out.candidate_tokens, out.candidate_lengths):
            answers = world.tokenizer.batch_decode([t[:c] for t, c in zip(tokens, counts)], skip_special_tokens=True)
            golds.append(world.gold_reward([f"{prompt} {a.strip()}" for a in answers]))
            lengths.append(counts.double())
    return torch.cat(golds).double().view(seeds, -1), torch.cat(lengths).view(seeds, -1)


def summary(x: torch.Tensor) -> str:
    """The mean of ``x [seeds, candidates]``, its standard error from the candidates taken as independent,
    and from the spread of the per-seed means."""
    return (f"{float(x.mean()):.3f} +- {float(x.std()) / math.sqrt(x.numel()):.3f} (candidates), "
            f"+- {float(x.mean(1).std()) / math.sqrt(x.shape[0]):.3f} (seeds)")


def check_candidates(world, prompts, reward, args):
    n = args.n[0]
    for label, drafted in (("Best-of-N", {}), ("Best-of-N + draft", dict(draft=world.draft,
                                                                         num_draft_tokens=args.num_draft_tokens))):
        gold, length = candidate_statistics(world, prompts, reward, lambda seed: BestOfN(reward, n=n, seed=seed, **drafted),
                                            args.max_new_tokens, args.seeds)
        print(f"{label}: {gold.numel()} candidates, gold {summary(gold)}; length {summary(length)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, nargs="+", default=[24, 96])
    parser.add_argument("--decision-tokens", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--num-draft-tokens", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--candidates", action="store_true", help="the distribution check (see above)")
    args = parser.parse_args()
    world, prompts, reward, counters = world_setup(args.prompts)
    if args.candidates:
        return check_candidates(world, prompts, reward, args)
    measure(world, prompts[:2], reward, counters, "warm-up", "", BestOfN(reward, n=2, draft=world.draft), 8, 0)
    runs = []
    for n in args.n:
        for label, method in methods(world, reward, n, args):
            per_seed = [measure(world, prompts, reward, counters, label, f"N={n}", method, args.max_new_tokens, seed)
                        for seed in range(args.seeds)]
            runs.append(mean_runs(per_seed))
            print(f"  {label} N={n}: gold {runs[-1].gold:+.3f}, {runs[-1].seconds:.2f} s", flush=True)
    print(f"\n{len(prompts)} prompts, {args.max_new_tokens} new tokens, decisions at {args.decision_tokens}, "
          f"alpha 0.5, K={args.num_draft_tokens}; means over {args.seeds} seeds, 1 thread\n")
    print(table(runs, reference=f"Speculative Rejection N={args.n[0]}"))


if __name__ == "__main__":
    main()
