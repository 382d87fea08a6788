"""Reward-free pruning on the bundled world: Confidence (the target's own confidence, read inside the
loop) against Best-of-N and Speculative Rejection with the proxy reward model.

    OMP_NUM_THREADS=1 python bench/bench_confidence.py [--seeds 3] [--prompts 16]

Methods: plain sampling; Best-of-N and Speculative Rejection ranked by the proxy reward model;
the same ranked by Confidence (``window``-token lowest-mean self-certainty, no reward model);
ConfidenceEarlyStop (DeepConf-online: warm-up of N/4, samples stop when their last window falls
below the warm-up's quantile). Reported: gold reward (what neither scorer sees) and target tokens.
Means over ``--seeds`` runs, one thread.
"""
from __future__ import annotations

import argparse

from world_runs import mean_runs, measure, table, world_setup

from specalign import BestOfN, Confidence, ConfidenceEarlyStop, SpeculativeRejection


def methods(reward, n, args):
    spr = dict(n=n, alpha=0.5, decision_tokens=args.decision_tokens)
    return [
        ("Best-of-N, reward model", BestOfN(reward, n=n)),
        ("Best-of-N, confidence", BestOfN(Confidence(window=args.window), n=n)),
        ("Speculative Rejection, reward model", SpeculativeRejection(reward, **spr)),
        ("Speculative Rejection, confidence", SpeculativeRejection(Confidence(window=args.window), **spr)),
        ("Confidence early stop, keep 0.9", ConfidenceEarlyStop(n=n, warmup=max(1, n // 4), keep=0.9,
                                                                window=args.window)),
        ("Confidence early stop, keep 0.5", ConfidenceEarlyStop(n=n, warmup=max(1, n // 4), keep=0.5,
                                                                window=args.window)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--decision-tokens", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    world, prompts, reward, counters = world_setup(args.prompts)
    runs = [mean_runs([measure(world, prompts, reward, counters, "Target sampling", "", None, args.max_new_tokens, seed)
                       for seed in range(args.seeds)])]
    for n in args.n:
        for label, method in methods(reward, n, args):
            per_seed = [measure(world, prompts, reward, counters, label, f"N={n}", method, args.max_new_tokens, seed)
                        for seed in range(args.seeds)]
            runs.append(mean_runs(per_seed))
            print(f"  {label} N={n}: gold {runs[-1].gold:+.3f}, {runs[-1].tokens} tokens", flush=True)
    print(f"\n{len(prompts)} prompts, {args.max_new_tokens} new tokens, window {args.window}, decisions at "
          f"{args.decision_tokens}, alpha 0.5; means over {args.seeds} seeds, 1 thread\n")
    print(table(runs, reference=f"Best-of-N, reward model N={args.n[-1]}"))


if __name__ == "__main__":
    main()
