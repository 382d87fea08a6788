"""Speculative Rejection vs Best-of-N on one engine, and in-place compaction vs re-prefilling.

    python bench/bench_speculative_rejection.py [--backend reference] [--n 64] [--max-new-tokens 64]

Tiny random-init Llama models built in code (CPU), so the figures measure the engine, not alignment
quality. Three tables:

1. Speculative Rejection (alpha = 0.5, decision points from a KV budget) vs Best-of-N at equal N:
   tokens generated, decode rows (sum of the batch size over forward passes), reward-model calls and
   tokens scored, wall time.
2. At the shapes of a Speculative Rejection run's decision points (rows, kept rows, cached tokens):
   the time of the one ``ops.compact_rows`` call that compacts every cache layer and the state, vs
   re-prefilling the survivors from their ids into a fresh cache (what the public reference
   implementation does every round), and their ratio (fastest of 3).
3. Prefill: each prompt once, then its cache replicated n times, vs prefilling the n copies.
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from specalign import BestOfN, RewardModel, SpeculativeRejection, _compat, ops

PAD, EOS, BOS = 0, 1, 2


def build_models(vocab=1024):
    torch.manual_seed(0)
    generator = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)).eval()
    reward = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
        num_labels=1, pad_token_id=PAD)).eval()
    return generator, RewardModel(reward)


def prompts(num_prompts, length, vocab=1024):
    ids = torch.randint(3, vocab, (num_prompts, length), generator=torch.Generator().manual_seed(1))
    ids[1:, :3] = PAD  # left padding on every prompt but the first
    return ids, (ids != PAD).long()


def run(generator, method, ids, mask, max_new_tokens):
    start = time.perf_counter()
    out = generator.generate(input_ids=ids, attention_mask=mask, custom_generate=method, do_sample=True,
                             max_new_tokens=max_new_tokens, return_dict_in_generate=True)
    return out, time.perf_counter() - start


def compare_methods(generator, reward, ids, mask, args, budget):
    print(f"\n1. Speculative Rejection vs Best-of-N, N={args.n} per prompt, {ids.shape[0]} prompts of width "
          f"{ids.shape[1]}, max_new_tokens={args.max_new_tokens}, KV budget {budget} tokens")
    print(f"{'method':<26}{'tokens':>8}{'decode rows':>13}{'RM calls':>10}{'RM tokens':>11}{'seconds':>9}"
          f"{'mean best reward':>18}  decision lengths / batch sizes")
    methods = {
        "Best-of-N": BestOfN(reward, n=args.n, backend=args.backend),
        "Speculative Rejection": SpeculativeRejection(reward, n=args.n, alpha=0.5, max_batch_tokens=budget,
                                                      backend=args.backend),
    }
    for name, method in methods.items():
        run(generator, method, ids, mask, 4)  # warm-up
        out, seconds = run(generator, method, ids, mask, args.max_new_tokens)
        print(f"{name:<26}{out.tokens_generated:>8}{out.rows_decoded:>13}{out.reward_calls:>10}"
              f"{out.reward_tokens_scored:>11}{seconds:>9.2f}{float(out.rewards.mean()):>18.3f}  "
              f"{out.decision_lengths} / {out.batch_sizes}")


def compaction_vs_reprefill(generator, reward, ids, mask, args, budget, repeats=3):
    """At the shapes of a run's decision points (rows, kept rows, cached tokens), the one compact_rows call
    over every cache layer and the state tensors vs re-prefilling the kept rows into a fresh cache."""
    method = SpeculativeRejection(reward, n=args.n, alpha=0.5, max_batch_tokens=budget, backend=args.backend)
    out, _ = run(generator, method, ids, mask, args.max_new_tokens)
    print(f"\n2. At each decision point of that run (fastest of {repeats}): ops.compact_rows (all layers + state, "
          f"one call, backend={args.backend}) vs re-prefilling the survivors")
    print(f"{'rows':>6}{'kept':>6}{'cached tokens':>15}{'cache MiB':>11}{'compact ms':>12}{'re-prefill ms':>15}{'ratio':>8}")
    cache_arg = _compat.cache_argument(generator)
    rows_per_round = zip(out.batch_sizes, out.batch_sizes[1:], out.decision_lengths)
    for rows, kept, new_tokens in rows_per_round:
        cached = ids.shape[1] + new_tokens - 1  # the last sampled token is fed after the compaction either way
        sequences = torch.randint(3, generator.config.vocab_size, (rows, cached), generator=torch.Generator().manual_seed(rows))
        cache = DynamicCache(config=generator.config)
        with torch.no_grad():
            generator(input_ids=sequences, use_cache=True, **{cache_arg: cache}, logits_to_keep=1)
        state = [sequences, torch.ones_like(sequences), *(torch.zeros(rows, dtype=torch.long) for _ in range(4)),
                 torch.zeros(rows, dtype=torch.bool)]  # ids, mask and per-row state, as the engine compacts them
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)] + state
        keep = torch.randperm(rows, generator=torch.Generator().manual_seed(kept))[:kept].sort().values
        compact_s = reprefill_s = float("inf")
        for _ in range(repeats):  # the same keep moves the same bytes every time
            start = time.perf_counter()
            ops.compact_rows(tensors, keep, backend=args.backend)
            compact_s = min(compact_s, time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                generator(input_ids=sequences[keep], use_cache=True, **{cache_arg: DynamicCache(config=generator.config)},
                          logits_to_keep=1)
            reprefill_s = min(reprefill_s, time.perf_counter() - start)
        cache_bytes = sum(t.numel() * t.element_size() for t in tensors[: 2 * len(cache.layers)])
        print(f"{rows:>6}{kept:>6}{cached:>15}{cache_bytes / 2**20:>11.2f}{compact_s * 1e3:>12.2f}"
              f"{reprefill_s * 1e3:>15.1f}{reprefill_s / compact_s:>8.0f}")


def prefill_choice(generator, args):
    ids, mask = prompts(2, args.prefill_prompt_tokens)
    n = args.n
    print(f"\n3. Prefill of 2 prompts x {args.prefill_prompt_tokens} tokens, n={n}")
    timings = {}
    cache_arg = _compat.cache_argument(generator)
    with torch.no_grad():
        for name in ("once, then replicate", "n copies") * 2:  # second pass is the one kept
            cache = DynamicCache(config=generator.config)
            start = time.perf_counter()
            if name == "n copies":
                generator(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                          use_cache=True, **{cache_arg: cache}, logits_to_keep=1)
            else:
                generator(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_arg: cache}, logits_to_keep=1)
                cache.batch_repeat_interleave(n)
            timings[name] = time.perf_counter() - start
    for name, seconds in timings.items():
        print(f"{name:<24}{seconds * 1e3:>10.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=None, help="ops backend: default (by device), reference, cpp")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=24)
    parser.add_argument("--prefill-prompt-tokens", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--first-decision", type=int, default=8, help="new tokens before the first decision point")
    args = parser.parse_args()
    generator, reward = build_models()
    ids, mask = prompts(args.prompts, args.prompt_tokens)
    budget = args.prompts * args.n * (args.prompt_tokens + args.first_decision)
    compare_methods(generator, reward, ids, mask, args, budget)
    compaction_vs_reprefill(generator, reward, ids, mask, args, budget)
    prefill_choice(generator, args)


if __name__ == "__main__":
    main()
