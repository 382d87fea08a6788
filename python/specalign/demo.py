"""``specalign demo``: every method on a world, over several seeds.

Prints a markdown table and writes it to ``results.md`` and ``results.json`` beside the plot
``reward_vs_compute.png``. The headline is compute: tokens generated, every token the target sampled
(over all candidates for Best-of-N and Speculative Rejection, the emitted tokens for speculative
sampling and SSS); wall and CPU time stand beside it, measured on ``--threads`` threads.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

from specalign.cli import METHOD_NAMES, make_method, quiet_transformers, run_method, set_threads


@dataclasses.dataclass
class Setting:
    method: str  # "sample" (plain target sampling) or a key of METHOD_NAMES
    n: int | None = None
    alpha: float | None = None

    @property
    def label(self) -> str:
        if self.method == "sample":
            return "Target sampling"
        return METHOD_NAMES.get(self.method) or BEYOND_THE_PAPERS[self.method]

    @property
    def parameters(self) -> str:
        return ", ".join(part for part in (self.n and f"N={self.n}", self.alpha is not None and f"alpha={self.alpha}")
                         if part)


@dataclasses.dataclass
class Result:
    """One setting over the seeds: one entry per seed in each list."""

    setting: Setting
    gold_reward: list[float] = dataclasses.field(default_factory=list)
    proxy_reward: list[float] = dataclasses.field(default_factory=list)
    tokens: list[int] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)


def mean(values) -> float:
    return statistics.fmean(values)


def spread(values) -> float:
    """Standard deviation over the seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def settings(args) -> list[Setting]:
    return [Setting("sample"), *[Setting("bon", n) for n in args.bon_n],
            *[Setting("spr", n, args.alpha) for n in args.spr_n], Setting("sd"), Setting("sss"),
            *beyond_the_papers(args)]


# Methods beyond the papers, on the same ops: Speculative Rejection with a draft (and with SSS's
# pair), reward-free confidence pruning and early stopping, weak-to-strong beam search.
BEYOND_THE_PAPERS = {"spr_draft": "SpR + draft", "spr_sss": "SpR + SSS draft", "spr_confidence": "SpR by confidence",
                     "early_stop": "Confidence early stop", "beam": "Beam search W=2 K=4"}


def beyond_the_papers(args) -> list[Setting]:
    n = min(args.spr_n)
    return [Setting("spr_draft", n, args.alpha), Setting("spr_sss", n, args.alpha),
            Setting("spr_confidence", n, args.alpha), Setting("early_stop", max(args.bon_n)), Setting("beam")]


def beyond_the_papers_method(setting: Setting, args, seed, reward, world):
    from specalign import BeamSearch, Confidence, ConfidenceEarlyStop, SpeculativeRejection

    spr = dict(n=setting.n, alpha=setting.alpha, decision_tokens=args.decision_tokens, seed=seed)
    if setting.method == "spr_draft":
        return SpeculativeRejection(reward, **spr, draft=world.draft, num_draft_tokens=args.num_draft_tokens)
    if setting.method == "spr_sss":
        return SpeculativeRejection(reward, **spr, draft=world.aligned_draft, ref_draft=world.draft,
                                    num_draft_tokens=args.num_draft_tokens)
    if setting.method == "spr_confidence":
        return SpeculativeRejection(Confidence(window=6), **spr)
    if setting.method == "early_stop":
        return ConfidenceEarlyStop(n=setting.n, warmup=setting.n // 4, keep=0.9, window=6, seed=seed)
    return BeamSearch(world.aligned_draft, world.draft, num_beams=2, samples_per_beam=4, chunk_tokens=8, seed=seed)


def run(args) -> int:
    from specalign import RewardModel
    from specalign.world import WORLD_DIR, load_world

    if args.quick:
        args.prompts, args.seeds, args.bon_n, args.spr_n, args.max_new_tokens = 4, 2, [4, 8], [16], 24
    threads = set_threads(args.threads or 1)  # the world's models are tiny: a second thread only adds contention
    quiet_transformers()  # the world's models load in milliseconds: no loading bars
    world = load_world(path=Path(args.world) if args.world else WORLD_DIR)
    prompts = world.prompts[: args.prompts]
    reward = RewardModel(world.reward_model, world.reward_tokenizer)
    generate_kwargs = dict(do_sample=True, max_new_tokens=args.max_new_tokens)
    run_method(world.target, world.tokenizer, prompts[:1], None, dict(do_sample=True, max_new_tokens=2))  # warm-up

    results = []
    for setting in settings(args):
        result = Result(setting)
        for seed in range(args.seed, args.seed + args.seeds):
            torch.manual_seed(seed)  # plain sampling draws from torch's global generator
            method = None
            if setting.method in BEYOND_THE_PAPERS:
                method = beyond_the_papers_method(setting, args, seed, reward, world)
            elif setting.method != "sample":
                method_args = argparse.Namespace(**{**vars(args), "n": setting.n, "seed": seed})
                aligned = setting.method == "sss"
                method = make_method(setting.method, method_args, reward=reward, tokenizer=world.tokenizer,
                                     draft=world.aligned_draft if aligned else world.draft, ref_draft=world.draft)
            generation = run_method(world.target, world.tokenizer, prompts, method, generate_kwargs)
            texts = [f"{prompt} {answer.strip()}" for prompt, answer in zip(prompts, generation.answers)]
            result.gold_reward.append(float(world.gold_reward(texts).mean()))
            result.proxy_reward.append(float(reward.score_texts(texts).mean()))
            result.tokens.append(generation.tokens)
            result.seconds.append(generation.seconds)
            result.cpu_seconds.append(generation.cpu_seconds)
        results.append(result)
        if not args.quiet:
            print(f"  {setting.label:<22} {setting.parameters:<16} gold {mean(result.gold_reward):+.3f}  "
                  f"{mean(result.tokens):8.0f} tokens  {sum(result.seconds):6.1f} s", file=sys.stderr)

    table = format_table(results, threads)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(as_json(results, args, threads), indent=1) + "\n")
    plot(results, out / "reward_vs_compute.png")
    print(f"\ntable: {out / 'results.md'}, {out / 'results.json'}; plot: {out / 'reward_vs_compute.png'}")
    return 0


def _largest_best_of_n(results: list[Result]) -> Result | None:
    best_of_n = [r for r in results if r.setting.method == "bon"]
    return max(best_of_n, key=lambda r: r.setting.n) if best_of_n else None


def _with_spread(values, digits: int) -> str:
    text = f"{mean(values):.{digits}f}"
    return text + f" ± {spread(values):.{digits}f}" if len(values) > 1 else text


def format_table(results: list[Result], threads: int) -> str:
    """Markdown: compute first (tokens, and their share of the largest Best-of-N's), then rewards and wall time."""
    reference = _largest_best_of_n(results)
    share_header = f"% of BoN N={reference.setting.n} tokens" if reference else "% of BoN tokens"
    lines = [f"| method | setting | tokens generated | {share_header} | gold reward | proxy reward | wall s | CPU s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        share = f"{100 * mean(r.tokens) / mean(reference.tokens):.1f}%" if reference else "-"
        lines.append(f"| {r.setting.label} | {r.setting.parameters} | {mean(r.tokens):.0f} | {share} | "
                     f"{_with_spread(r.gold_reward, 3)} | {_with_spread(r.proxy_reward, 3)} | "
                     f"{_with_spread(r.seconds, 2)} | {_with_spread(r.cpu_seconds, 2)} |")
    seeds = len(results[0].tokens)
    lines.append("")
    lines.append(f"Mean over {seeds} seed(s){' ± standard deviation' if seeds > 1 else ''}; times per run on "
                 f"{threads} CPU thread(s). Wall time well above CPU time means other processes took the cores.")
    return "\n".join(lines)


def as_json(results: list[Result], args, threads: int) -> dict:
    return dict(
        prompts=args.prompts, seeds=list(range(args.seed, args.seed + args.seeds)), max_new_tokens=args.max_new_tokens,
        decision_tokens=args.decision_tokens, num_draft_tokens=args.num_draft_tokens, threads=threads,
        torch=torch.__version__,
        results=[dict(method=r.setting.label, n=r.setting.n, alpha=r.setting.alpha,
                      tokens_generated=r.tokens, gold_reward=[round(g, 4) for g in r.gold_reward],
                      proxy_reward=[round(p, 4) for p in r.proxy_reward],
                      seconds=[round(s, 4) for s in r.seconds], cpu_seconds=[round(s, 4) for s in r.cpu_seconds])
                 for r in results],
    )


def plot(results: list[Result], path: Path) -> None:
    """Mean gold reward against mean tokens, one line per method, bars one standard deviation over
    the seeds, each point labelled with its N (and alpha)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for label in dict.fromkeys(r.setting.label for r in results):
        points = sorted((r for r in results if r.setting.label == label), key=lambda r: mean(r.tokens))
        x = [mean(r.tokens) for r in points]
        y = [mean(r.gold_reward) for r in points]
        ax.errorbar(x, y, yerr=[spread(r.gold_reward) for r in points], marker="o", capsize=3, label=label)
        for r, xi, yi in zip(points, x, y):
            if r.setting.parameters:
                ax.annotate(r.setting.parameters.replace("alpha", "α"), (xi, yi), textcoords="offset points",
                            xytext=(6, 4), fontsize=7)
    seeds = len(results[0].tokens)
    ax.set_xscale("log")
    ax.set_xlabel("tokens generated (log scale)")
    ax.set_ylabel("mean gold reward" + (f" (bars: ±1 s.d. over {seeds} seeds)" if seeds > 1 else ""))
    ax.set_title("specalign demo: reward against compute")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
