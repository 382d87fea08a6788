"""Weak-to-strong beam search (BeamSearch on fork_rows) against Best-of-N and SSS at equal compute
on the bundled world.

    OMP_NUM_THREADS=1 python bench/bench_beam_search.py [--seeds 3] [--prompts 16]

Equal compute means equal target rows: BeamSearch with W beams of K samples keeps W * K rows
sampling every token, as Best-of-(W * K) does. Baselines at that size: Best-of-N by the proxy
reward model, Best-of-N by the same implicit reward the search uses (the aligned/unaligned draft
pair), and Best-of-N whose samples come from SSS (draft=aligned, ref_draft=unaligned: SSS inside
Best-of-N); and SSS alone, one sample per prompt. Means over ``--seeds`` runs, one thread.
"""
from __future__ import annotations

import argparse

from world_runs import mean_runs, measure, table, world_setup

from specalign import BeamSearch, BestOfN, ImplicitReward, RewardShiftedSpeculativeSampling


def methods(world, reward, beams, samples, args):
    n = beams * samples
    implicit = ImplicitReward(world.aligned_draft, world.draft)
    return [
        ("Best-of-N, reward model", f"N={n}", BestOfN(reward, n=n)),
        ("Best-of-N, implicit reward", f"N={n}", BestOfN(implicit, n=n)),
        ("Best-of-N of SSS samples", f"N={n}", BestOfN(reward, n=n, draft=world.aligned_draft, ref_draft=world.draft,
                                                       num_draft_tokens=args.num_draft_tokens)),
        ("Beam search", f"W={beams} K={samples} L={args.chunk_tokens}",
         BeamSearch(world.aligned_draft, world.draft, beams, samples, args.chunk_tokens)),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--beams", type=int, nargs="+", default=[2, 4], help="W; K = --samples")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--chunk-tokens", type=int, default=8)
    parser.add_argument("--num-draft-tokens", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    world, prompts, reward, counters = world_setup(args.prompts)
    sss = RewardShiftedSpeculativeSampling(world.aligned_draft, world.draft, args.num_draft_tokens)
    runs = []
    for label, setting, method in [("Target sampling", "", None), ("SSS", "1 sample", sss)]:
        runs.append(mean_runs([measure(world, prompts, reward, counters, label, setting, method, args.max_new_tokens,
                                       seed) for seed in range(args.seeds)]))
    for beams in args.beams:
        for label, setting, method in methods(world, reward, beams, args.samples, args):
            per_seed = [measure(world, prompts, reward, counters, label, setting, method, args.max_new_tokens, seed)
                        for seed in range(args.seeds)]
            runs.append(mean_runs(per_seed))
            print(f"  {label} {setting}: gold {runs[-1].gold:+.3f}, {runs[-1].seconds:.2f} s", flush=True)
    print(f"\n{len(prompts)} prompts, {args.max_new_tokens} new tokens, K={args.samples} samples per beam, "
          f"chunks of {args.chunk_tokens}; means over {args.seeds} seeds, 1 thread\n")
    print(table(runs, reference=f"Best-of-N, reward model N={args.beams[-1] * args.samples}"))


if __name__ == "__main__":
    main()
