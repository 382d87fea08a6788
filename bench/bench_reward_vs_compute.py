"""Reward against compute on a world setting: the papers' headline measures on one engine.

    python bench/bench_reward_vs_compute.py [--setting long|short ...] [--quick] [--prompts P] [--seeds S]

For each setting, on the world's target, reward model, and drafts (``specalign.world``):

- Best-of-N for N = 1..N_max. One Best-of-N_max run per seed gives every smaller N: the candidates
  are i.i.d. samples, so the expected gold (and proxy) reward of Best-of-N is computed exactly over
  all N-subsets of the N_max candidates (an unbiased estimate with far less noise than separate
  runs). Time comes from real Best-of-N runs after a warm-up call: N = 1, 8, 64, ... (the first
  seed; their gold reward is printed beside the estimate as a check) and N_max (every seed's pool).
- Speculative Rejection over a grid of N and alpha, with decision points from a KV-cache budget in
  tokens standing in for a GPU's memory: ``budget_rows * (prompt width + max_new_tokens)`` per
  prompt, i.e. the memory Best-of-``budget_rows`` needs at full length (as the paper sizes its
  Best-of-N baseline to one GPU).
- SSS (the aligned draft proposes, the target verifies with the reward-shifted rule), K = 4.

Compute is counted three ways, per prompt: generator tokens (every candidate's sampled tokens),
reward-model tokens (prompt plus answer tokens scored), and time: wall time and this process's CPU
time (with one thread, what an idle core would take; on a shared machine wall time also counts the
waits for a core). The speedup is the papers':
the compute Best-of-N needs to reach the method's mean reward (N interpolated log-linearly between
integers) over the method's compute, on gold and on proxy reward, with a 95% t-interval over seeds
(on the log of the per-seed speedups). A speedup marked ">=" means the method beat Best-of-N_max;
"<=" means it did not beat Best-of-1.

Also printed: how well the proxy reward of a prefix predicts the final gold reward (Pearson and
Kendall tau, over the first seed's Best-of-N candidates); Speculative Rejection's gold/tokens speedup
split into its token saving at the same N and the share of that N Best-of-N needs for its gold; and,
for the largest N of the grid, Speculative Rejection with an oracle that scores each prefix with its own finished answer's proxy reward: the same
schedule with perfect partial rewards, which separates the schedule's limit from the prefix
correlation's. Every point goes to ``OUT/reward_vs_compute_<setting>.json`` with a plot beside it.
Every method answers one prompt per ``generate`` call (the time to serve one request), with the seed
``seed * PROMPT_SEED_STRIDE + prompt index``: Speculative Rejection with N samples then draws exactly
the first N candidates of the same seed's Best-of-N_max pool, which the oracle relies on.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from specalign import BestOfN, RewardModel, RewardShiftedSpeculativeSampling, SpeculativeRejection
from specalign.world import load_world
from specalign.world.prefix_correlation import format_prefix_correlations, prefix_correlations

PROMPT_SEED_STRIDE = 1000
# statistics of the first prompt's run (first seed) kept with a point
FIRST_RUN_STATISTICS = ("decision_lengths", "batch_sizes", "acceptance_rate", "tokens_per_target_call")
MEASURES = ("tokens", "reward_tokens", "seconds", "cpu_seconds")
TIMED_N_STEP = 8  # real Best-of-N runs for wall time at N = 1, 8, 64, ... and N_max
MAX_NEW_TOKENS = {"short": 40, "long": 256}
PREFIX_LENGTHS = {"short": (2, 4, 6, 8, 12, 16, 40), "long": (4, 8, 16, 32, 64, 128, 256)}
CORRELATION_SAMPLES_PER_PROMPT = 64
# Per setting, the full run and the --quick smoke run. Speculative Rejection's N is bounded by the budget:
# the first decision, budget_rows * (prompt width + max_new_tokens) / N - prompt width, must be >= 1 token.
CONFIGS = {
    "long": {
        "full": dict(prompts=1, seeds=3, bon_max=512, spr_n=(128, 512), alphas=(0.5, 0.9, 0.97), budget_rows=32,
                     sss_seeds=24, oracle=True),
        "quick": dict(prompts=1, seeds=2, bon_max=64, spr_n=(64,), alphas=(0.5, 0.9), budget_rows=8,
                      sss_seeds=2, oracle=False),
    },
    "short": {
        "full": dict(prompts=4, seeds=3, bon_max=512, spr_n=(64, 128), alphas=(0.5, 0.9), budget_rows=32,
                     sss_seeds=10, oracle=True),
        "quick": dict(prompts=4, seeds=2, bon_max=64, spr_n=(32,), alphas=(0.5, 0.9), budget_rows=8,
                      sss_seeds=2, oracle=False),
    },
}
# two-sided 95% quantiles of Student's t by degrees of freedom
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 29: 2.045}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Answers:
    """One method run over all prompts: per prompt its prompt ids and returned answer ids (eos kept)."""

    prompts: list[torch.Tensor]
    answers: list[torch.Tensor]
    tokens: int = 0
    reward_tokens: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time: with one thread, the wall time an idle core would take
    proxy: torch.Tensor | None = None
    outputs: list = field(default_factory=list)  # the generate outputs, one per call


def strip_answer(row: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Answer ids up to and including the first eos, else without the right padding."""
    ends = torch.nonzero(row == eos_id).flatten()
    if len(ends):
        return row[: int(ends[0]) + 1]
    kept = torch.nonzero(row != pad_id).flatten()
    return row[: int(kept[-1]) + 1] if len(kept) else row[:0]


def run(world, prompts: list[str], make_method, seed: int, max_new_tokens: int) -> Answers:
    """``make_method(input_ids, prompt_seed)`` on the target, one prompt per call."""
    tokenizer = world.tokenizer
    if len(prompts) > PROMPT_SEED_STRIDE:
        raise ValueError(f"at most {PROMPT_SEED_STRIDE} prompts, got {len(prompts)}")
    result = Answers([], [])
    for index, prompt in enumerate(prompts):
        inputs = tokenizer([prompt], return_tensors="pt")
        method = make_method(inputs["input_ids"], seed * PROMPT_SEED_STRIDE + index)
        began, began_cpu = time.perf_counter(), time.process_time()
        out = world.target.generate(**inputs, custom_generate=method, do_sample=True, max_new_tokens=max_new_tokens,
                                    return_dict_in_generate=True)
        result.seconds += time.perf_counter() - began
        result.cpu_seconds += time.process_time() - began_cpu
        result.prompts.append(inputs["input_ids"][0])
        answer = strip_answer(out.sequences[0, inputs["input_ids"].shape[1]:], tokenizer.eos_token_id, tokenizer.pad_token_id)
        result.answers.append(answer)
        result.tokens += int(getattr(out, "tokens_generated", None) or len(answer))
        result.reward_tokens += int(getattr(out, "reward_tokens_scored", None) or 0)
        result.outputs.append(out)
    return result


def gold_of(world, prompts, answers) -> torch.Tensor:
    texts = world.tokenizer.batch_decode([torch.cat([p, a]) for p, a in zip(prompts, answers)], skip_special_tokens=True)
    return world.gold_reward(texts)


# ---- Best-of-N from one pool of N_max candidates per prompt ----


@dataclass
class Pool:
    """Best-of-N_max candidates of every prompt for one seed."""

    prompts: list[torch.Tensor]
    answers: list[list[torch.Tensor]]  # [prompt][candidate]
    proxy: torch.Tensor  # [P, n]
    gold: torch.Tensor  # [P, n]
    lengths: torch.Tensor  # [P, n] answer tokens
    seconds: float
    cpu_seconds: float


def best_of_n_pool(world, rm, prompts, n, seed, max_new_tokens) -> Pool:
    result = run(world, prompts, lambda _, prompt_seed: BestOfN(rm, n=n, seed=prompt_seed), seed, max_new_tokens)
    answers, proxy, lengths = [], [], []
    for out in result.outputs:
        for tokens, count, reward in zip(out.candidate_tokens, out.candidate_lengths, out.candidate_rewards):
            answers.append([t[:c] for t, c in zip(tokens, count.tolist())])
            proxy.append(reward)
            lengths.append(count)
    flat_prompts = [p for p, candidates in zip(result.prompts, answers) for _ in candidates]
    gold = gold_of(world, flat_prompts, [a for candidates in answers for a in candidates]).view(len(prompts), n)
    return Pool(result.prompts, answers, torch.stack(proxy), gold, torch.stack(lengths).float(), result.seconds,
                result.cpu_seconds)


def best_of_n_curve(score: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``[rows, n]`` -> ``[n]``: for N = 1..n, the mean over rows of E[value of the top-score candidate among N
    drawn without replacement from the row's n] (weight of the i-th lowest score: C(i-1, N-1) / C(n, N))."""
    n = score.shape[1]
    ranked = value.double().gather(1, score.argsort(dim=1, stable=True))
    i = torch.arange(1, n + 1, dtype=torch.float64)  # rank, ascending score
    big_n = i[:, None]  # N, one row per subset size

    def log_choose(a, b):
        return torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)

    log_weights = log_choose(i[None, :] - 1, big_n - 1) - log_choose(torch.tensor(float(n), dtype=torch.float64), big_n)
    weights = torch.where(i[None, :] >= big_n, log_weights.exp(), torch.zeros(()))
    return (ranked @ weights.T).mean(0)


def n_to_reach(curve: torch.Tensor, target: float) -> tuple[float, str]:
    """Smallest (log-linearly interpolated) N whose Best-of-N curve value reaches ``target``, and a bound flag:
    "" (inside), "below" (target <= Best-of-1: N = 1 is an upper bound) or "above" (beyond N_max)."""
    values = curve.tolist()
    if target <= values[0]:
        return 1.0, "below"
    for k in range(1, len(values)):
        if values[k] >= target:
            fraction = (target - values[k - 1]) / (values[k] - values[k - 1])
            return math.exp(math.log(k) + fraction * (math.log(k + 1) - math.log(k))), ""
    return float(len(values)), "above"


def log_log_interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """y at x, linear in (log x, log y) between measured points, extended along the end segments."""
    k = max(1, min(len(xs) - 1, next((j for j, xj in enumerate(xs) if xj >= x), len(xs) - 1)))
    lx0, lx1, ly0, ly1 = (math.log(v) for v in (xs[k - 1], xs[k], ys[k - 1], ys[k]))
    return math.exp(ly0 + (math.log(x) - lx0) * (ly1 - ly0) / (lx1 - lx0))


def t_interval(values: list[float]) -> tuple[float, float]:
    """95% t-interval of the mean of ``values`` (NaNs for fewer than two)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    dof = len(values) - 1
    half_width = T_95[max(k for k in T_95 if k <= dof)] * se(values)
    return mean(values) - half_width, mean(values) + half_width


def speedup(curve, bon_cost, rewards: list[float], costs: list[float]) -> dict:
    """Best-of-N compute to reach the method's reward over the method's compute: from the means over seeds,
    per seed, and a 95% t-interval over seeds on the log scale."""
    n_star, bound = n_to_reach(curve, mean(rewards))
    reached = [n_to_reach(curve, reward) for reward in rewards]
    per_seed = [bon_cost(n) / cost for (n, _), cost in zip(reached, costs)]
    low, high = t_interval([math.log(s) for s in per_seed])
    return dict(speedup=bon_cost(n_star) / mean(costs), bound=bound, bon_n=n_star, ci95=[math.exp(low), math.exp(high)],
                per_seed=per_seed, per_seed_bounds=[b for _, b in reached])


@dataclass
class BestOfNSummary:
    gold: torch.Tensor  # [N_max] Best-of-N curve, mean over seeds and prompts
    proxy: torch.Tensor
    gold_se: torch.Tensor  # standard error over seeds
    proxy_se: torch.Tensor
    answer_tokens: float  # mean answer tokens of a candidate
    prompt_tokens: float
    timed_n: list[int]
    timed: dict[str, list[float]]  # "seconds", "cpu_seconds": per prompt, of real Best-of-N runs at timed_n

    def cost(self, measure: str):
        """Best-of-N's compute per prompt as a function of N (a real number)."""
        if measure == "tokens":
            return lambda n: n * self.answer_tokens
        if measure == "reward_tokens":
            return lambda n: n * (self.answer_tokens + self.prompt_tokens)
        return lambda n: log_log_interpolate(self.timed_n, self.timed[measure], n)


def summarize_best_of_n(pools: list[Pool], timed: dict[int, tuple[float, float]]) -> BestOfNSummary:
    gold = torch.stack([best_of_n_curve(pool.proxy, pool.gold) for pool in pools])
    proxy = torch.stack([best_of_n_curve(pool.proxy, pool.proxy) for pool in pools])
    seeds = len(pools)

    def se(curves):
        return curves.std(0) / math.sqrt(seeds) if seeds > 1 else torch.full_like(curves[0], float("nan"))

    prompt_tokens = sum(len(p) for pool in pools for p in pool.prompts) / sum(len(pool.prompts) for pool in pools)
    answer_tokens = float(torch.cat([pool.lengths.flatten() for pool in pools]).mean())
    ns = sorted(timed)
    return BestOfNSummary(gold.mean(0), proxy.mean(0), se(gold), se(proxy), answer_tokens, prompt_tokens, ns,
                          dict(seconds=[timed[n][0] for n in ns], cpu_seconds=[timed[n][1] for n in ns]))


class OracleReward:
    """Scores a prefix with the final proxy reward of the pool candidate(s) among the first ``n`` it starts.

    Speculative Rejection with N = n samples the first n candidates of the same seed's Best-of-N_max
    pool token for token, so every prefix it scores starts one of them: pruning on this score is
    pruning with perfect partial rewards, and the answer kept is Best-of-n's.
    """

    def __init__(self, pool: Pool, n: int, max_new_tokens: int):
        self.prompt_index = {tuple(p.tolist()): i for i, p in enumerate(pool.prompts)}
        self.tokens = []
        for candidates in pool.answers:
            padded = torch.full((n, max_new_tokens), -1, dtype=torch.long)
            for row, answer in enumerate(candidates[:n]):
                padded[row, : len(answer)] = answer
            self.tokens.append(padded)
        self.proxy = pool.proxy[:, :n]

    def __call__(self, prompts, answers) -> torch.Tensor:
        scores = []
        for prompt, answer in zip(prompts, answers):
            i = self.prompt_index[tuple(prompt.tolist())]
            matches = (self.tokens[i][:, : len(answer)] == answer.cpu()).all(1)
            scores.append(float(self.proxy[i][matches].mean()))
        return torch.tensor(scores)


# ---- the methods ----


def method_point(world, answers_per_seed: list[Answers], seeds, label, n=None, alpha=None) -> dict:
    """Means over seeds (per prompt compute) of a method's runs."""
    golds, proxies = [], []
    for result in answers_per_seed:
        golds.append(float(gold_of(world, result.prompts, result.answers).mean()))
        proxies.append(float(result.proxy.mean()))
    prompts = len(answers_per_seed[0].prompts)

    def per_prompt(attribute):
        return [getattr(result, attribute) / prompts for result in answers_per_seed]

    first = answers_per_seed[0].outputs[0]
    return dict(method=label, n=n, alpha=alpha, seeds=list(seeds), gold=mean(golds), gold_se=se(golds),
                proxy=mean(proxies), proxy_se=se(proxies), tokens=mean(per_prompt("tokens")),
                reward_tokens=mean(per_prompt("reward_tokens")), seconds=mean(per_prompt("seconds")),
                cpu_seconds=mean(per_prompt("cpu_seconds")),
                per_seed=dict(gold=golds, proxy=proxies, **{m: per_prompt(m) for m in MEASURES}),
                **{k: getattr(first, k) for k in FIRST_RUN_STATISTICS if getattr(first, k, None) is not None})


def mean(values):
    return sum(values) / len(values)


def se(values):
    """Standard error of the mean (NaN for fewer than two values)."""
    if len(values) < 2:
        return float("nan")
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def add_speedups(point: dict, bon: BestOfNSummary, measures=MEASURES) -> dict:
    runs = point["per_seed"]
    point["speedups"] = {
        reward: {measure: speedup(curve, bon.cost(measure), runs[reward], runs[measure]) for measure in measures}
        for reward, curve in (("gold", bon.gold), ("proxy", bon.proxy))
    }
    return point


def run_speculative_rejection(world, rm, prompts, args, n, alpha, seed, reward=None) -> Answers:
    def make(input_ids, prompt_seed):
        budget = args.budget_rows * (input_ids.shape[1] + args.max_new_tokens)
        return SpeculativeRejection(reward or rm, n=n, alpha=alpha, max_batch_tokens=budget, seed=prompt_seed)

    result = run(world, prompts, make, seed, args.max_new_tokens)
    result.proxy = torch.cat([out.rewards for out in result.outputs])
    if reward is not None:  # an oracle's scores are not the proxy's
        result.proxy = rm(result.prompts, result.answers)
    return result


def run_sss(world, rm, prompts, args, seed) -> Answers:
    def make(_, prompt_seed):
        return RewardShiftedSpeculativeSampling(world.aligned_draft, world.draft, num_draft_tokens=4, seed=prompt_seed)

    result = run(world, prompts, make, seed, args.max_new_tokens)
    result.proxy = rm(result.prompts, result.answers)
    return result


# ---- one setting ----


def timed_best_of_n(world, rm, prompts, args, pools: list[Pool], curve) -> tuple[dict[int, float], list[dict]]:
    """(wall, CPU) seconds per prompt of real Best-of-N runs at N = 1, 8, 64, ..., N_max (the pools' runs, mean over
    seeds, for N_max), and each run's gold reward beside the pool's estimate."""
    timed = {args.bon_max: (mean([pool.seconds for pool in pools]) / len(prompts),
                            mean([pool.cpu_seconds for pool in pools]) / len(prompts))}
    checks = []
    n = 1
    while n < args.bon_max:
        result = run(world, prompts, lambda _, prompt_seed: BestOfN(rm, n=n, seed=prompt_seed), args.seed_list[0],
                     args.max_new_tokens)
        timed[n] = (result.seconds / len(prompts), result.cpu_seconds / len(prompts))
        gold = float(gold_of(world, result.prompts, result.answers).mean())
        checks.append(dict(n=n, gold_run=gold, gold_estimate=float(curve[n - 1])))
        log(f"  Best-of-{n}: {timed[n][0]:.2f} s ({timed[n][1]:.2f} s CPU) per prompt, gold {gold:.2f} "
            f"(pool estimate {float(curve[n - 1]):.2f})")
        n *= TIMED_N_STEP
    return timed, checks


def best_of_n_points(bon: BestOfNSummary, args) -> list[dict]:
    points = []
    for n in bon.timed_n:
        points.append(dict(method="Best-of-N", n=n, alpha=None, seeds=args.seed_list, gold=float(bon.gold[n - 1]),
                           gold_se=float(bon.gold_se[n - 1]), proxy=float(bon.proxy[n - 1]),
                           proxy_se=float(bon.proxy_se[n - 1]), tokens=bon.cost("tokens")(n),
                           reward_tokens=bon.cost("reward_tokens")(n), seconds=bon.cost("seconds")(n),
                           cpu_seconds=bon.cost("cpu_seconds")(n)))
    return points


def correlation_table(world, rm, pool: Pool, setting: str):
    prompts, answers, gold = [], [], []
    for i, candidates in enumerate(pool.answers):
        for j, answer in enumerate(candidates[:CORRELATION_SAMPLES_PER_PROMPT]):
            prompts.append(pool.prompts[i])
            answers.append(answer)
            gold.append(float(pool.gold[i, j]))
    return prefix_correlations(rm, prompts, answers, torch.tensor(gold), PREFIX_LENGTHS[setting])


def first_decision(args, prompt_width: int, n: int) -> int:
    """New tokens at Speculative Rejection's first decision under the budget (< 1: the budget cannot hold n rows)."""
    return args.budget_rows * (prompt_width + args.max_new_tokens) // n - prompt_width


def speculative_rejection_points(world, rm, prompts, args, bon, pools) -> list[dict]:
    width = max(len(ids) for ids in pools[0].prompts)
    feasible = [n for n in args.spr_n if first_decision(args, width, n) >= 1]
    if len(feasible) < len(args.spr_n):
        log(f"  skipped N={sorted(set(args.spr_n) - set(feasible))}: the budget cannot hold them with a prompt")
    points = []
    for n in feasible:
        for alpha in args.alphas:
            runs = [run_speculative_rejection(world, rm, prompts, args, n, alpha, seed) for seed in args.seed_list]
            points.append(add_speedups(method_point(world, runs, args.seed_list, "Speculative Rejection", n, alpha), bon))
            log_point(points[-1])
    if args.oracle and feasible:
        n = max(feasible)
        for alpha in args.alphas:
            runs = [run_speculative_rejection(world, rm, prompts, args, n, alpha, seed, OracleReward(pool, n, args.max_new_tokens))
                    for seed, pool in zip(args.seed_list, pools)]
            points.append(add_speedups(method_point(world, runs, args.seed_list, "SpR, oracle prefix scores", n, alpha), bon))
            log_point(points[-1])
    for point in points:
        add_decomposition(point, bon)
    return points


def add_decomposition(point: dict, bon: BestOfNSummary) -> None:
    """The gold/tokens speedup as (Best-of-N tokens at the same N / the method's tokens), the schedule's saving,
    times (N Best-of-N needs for the method's gold / N), what pruning on prefix scores keeps of Best-of-N's gain."""
    point["saving_at_same_n"] = bon.cost("tokens")(point["n"]) / point["tokens"]
    point["reached_n_over_n"] = point["speedups"]["gold"]["tokens"]["bon_n"] / point["n"]


def log_point(point: dict) -> None:
    log(f"  {point['method']} N={point['n']} alpha={point['alpha']}: gold {point['gold']:.2f}, "
        f"{point['tokens']:.0f} tokens, {point['seconds']:.2f} s ({point['cpu_seconds']:.2f} s CPU) per prompt, "
        f"decisions {point.get('decision_lengths')}")


def sss_point(world, rm, prompts, args, bon) -> dict:
    runs = [run_sss(world, rm, prompts, args, seed) for seed in range(args.sss_seeds)]
    # SSS calls no reward model: its compute is the target's tokens and the wall time.
    point = add_speedups(method_point(world, runs, range(args.sss_seeds), "SSS"), bon, ("tokens", "seconds", "cpu_seconds"))
    log_point(point)
    return point


def bench_setting(setting: str, args) -> dict:
    args = argparse.Namespace(**vars(args), max_new_tokens=MAX_NEW_TOKENS[setting], seed_list=list(range(args.seeds)))
    world = load_world(setting=setting)
    rm = RewardModel(world.reward_model, world.reward_tokenizer)
    prompts = world.prompts[: args.prompts]
    log(f"{setting}: Best-of-{args.bon_max} pools, {len(prompts)} prompts x {args.seeds} seeds")
    run(world, prompts[:1], lambda _, prompt_seed: BestOfN(rm, n=2, seed=prompt_seed), 0, 8)  # warm-up, not timed
    pools = [best_of_n_pool(world, rm, prompts, args.bon_max, seed, args.max_new_tokens) for seed in args.seed_list]
    first_gold = best_of_n_curve(pools[0].proxy, pools[0].gold)
    timed, checks = timed_best_of_n(world, rm, prompts, args, pools, first_gold)
    bon = summarize_best_of_n(pools, timed)
    correlations = correlation_table(world, rm, pools[0], setting)
    points = best_of_n_points(bon, args)
    points += speculative_rejection_points(world, rm, prompts, args, bon, pools)
    points.append(sss_point(world, rm, prompts, args, bon))
    return dict(setting=setting, threads=torch.get_num_threads(), load_average=list(os.getloadavg()),
                config={k: v for k, v in vars(args).items() if k not in ("setting", "out")},
                answer_tokens=bon.answer_tokens, prompt_tokens=bon.prompt_tokens,
                prefix_correlation=[vars(row) for row in correlations], best_of_n_check=checks, points=points)


# ---- output ----


def format_speedup(entry: dict) -> str:
    sign = {"above": ">=", "below": "<="}.get(entry["bound"], "")
    low, high = entry["ci95"]
    interval = "" if math.isnan(low) else f" [{low:.1f}, {high:.1f}]"
    return f"{sign}{entry['speedup']:.2f}x{interval}"


def format_report(report: dict) -> str:
    lines = [f"\n=== {report['setting']} setting: {report['config']['prompts']} prompts, max {report['config']['max_new_tokens']} "
             f"new tokens (mean answer {report['answer_tokens']:.0f}), seeds {report['config']['seed_list']}, "
             f"{report['threads']} thread(s), KV budget {report['config']['budget_rows']} full-length rows per prompt ===",
             "\nproxy reward of a prefix vs final gold reward (first seed's Best-of-N candidates):"]
    lines.append(format_prefix_correlations([argparse.Namespace(**row) for row in report["prefix_correlation"]]))
    lines.append("\nBest-of-N: gold of real runs (first seed) vs the pool estimate: " + ", ".join(
        f"N={c['n']} {c['gold_run']:.2f}/{c['gold_estimate']:.2f}" for c in report["best_of_n_check"]))
    header = (f"{'method':<26}{'N':>5}{'alpha':>6}{'gold':>13}{'proxy':>8}{'tokens':>9}{'RM tok':>9}{'wall s':>8}"
              f"{'CPU s':>8}  {'speedup gold/tokens':<22}{'gold/RM tokens':<20}{'gold/wall':<20}{'gold/CPU':<20}"
              f"{'proxy/tokens':<20} decisions")
    lines += ["\ncompute per prompt; speedup = Best-of-N compute to reach the reward / the method's, 95% CI over seeds",
              header, "-" * len(header)]
    for p in report["points"]:
        row = (f"{p['method']:<26}{p['n'] or '':>5}{p['alpha'] if p['alpha'] is not None else '':>6}"
               f"{p['gold']:>8.2f}±{p['gold_se']:<4.2f}{p['proxy']:>8.2f}{p['tokens']:>9.0f}{p['reward_tokens']:>9.0f}"
               f"{p['seconds']:>8.2f}{p['cpu_seconds']:>8.2f}")
        if "speedups" in p:
            s = p["speedups"]
            entries = [s["gold"].get(m) for m in MEASURES] + [s["proxy"]["tokens"]]
            cells = [format_speedup(e) if e else "-" for e in entries]
            row += f"  {cells[0]:<22}" + "".join(f"{cell:<20}" for cell in cells[1:])
            row += f" {p.get('decision_lengths', '')}"
        if "saving_at_same_n" in p:
            row += f"  (= {p['saving_at_same_n']:.1f}x fewer tokens than BoN-{p['n']} x {p['reached_n_over_n']:.2f} of its N reached)"
        lines.append(row)
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = (("tokens", "gold", "generator tokens per prompt"), ("tokens", "proxy", "generator tokens per prompt"),
              ("seconds", "gold", "wall seconds per prompt"), ("cpu_seconds", "gold", "CPU seconds per prompt (1 thread)"))
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    axes = axes.flatten()
    styles = {"Best-of-N": ("k", "o"), "Speculative Rejection": ("tab:blue", "s"),
              "SpR, oracle prefix scores": ("tab:gray", "x"), "SSS": ("tab:red", "D")}
    for ax, (x_key, y_key, x_label) in zip(axes, panels):
        for method, (color, marker) in styles.items():
            points = [p for p in report["points"] if p["method"] == method]
            if not points:
                continue
            xs, ys, errs = [p[x_key] for p in points], [p[y_key] for p in points], [p[f"{y_key}_se"] for p in points]
            ax.errorbar(xs, ys, yerr=errs, color=color, marker=marker, capsize=3, label=method,
                        linestyle="-" if method == "Best-of-N" else "none")
            for p, x, y in zip(points, xs, ys):
                label = f"N={p['n']}" if p["n"] else method
                label += f"\nα={p['alpha']}" if p["alpha"] is not None else ""
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6, color=color)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"{x_label} (log)")
        ax.set_ylabel(f"mean {y_key} reward")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"reward against compute, {report['setting']} setting (error bars: standard error over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", nargs="+", choices=sorted(MAX_NEW_TOKENS), default=["long"])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (CONFIGS[setting]['quick'])")
    for name, value in CONFIGS["long"]["full"].items():
        if isinstance(value, bool):
            continue
        kind = type(value[0]) if isinstance(value, tuple) else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, nargs="+" if isinstance(value, tuple) else None,
                            help="overrides the setting's value")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for setting in args.setting:
        config = CONFIGS[setting]["quick" if args.quick else "full"]
        report = bench_setting(setting, argparse.Namespace(**{**config, **{k: v for k, v in vars(args).items() if v is not None}}))
        print(format_report(report), flush=True)
        suffix = "_quick" if args.quick else ""
        (args.out / f"reward_vs_compute_{setting}{suffix}.json").write_text(json.dumps(report, indent=1) + "\n")
        plot(report, args.out / f"reward_vs_compute_{setting}{suffix}.png")
        log(f"wrote {args.out / f'reward_vs_compute_{setting}{suffix}.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
