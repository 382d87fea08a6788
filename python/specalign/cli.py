"""The ``specalign`` command line: ``demo``, ``generate`` and ``bench``.

    specalign demo [--quick] [--out DIR]
    specalign generate --model DIR --method {bon,spr,sd,sss} [--reward-model DIR]
                       [--draft DIR --ref-draft DIR] --prompt TEXT [--prompt TEXT ...]
    specalign bench [--suite ops|spr|sd] [ARGS passed to the suite]
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import torch

METHOD_NAMES = {"bon": "Best-of-N", "spr": "Speculative Rejection", "sd": "Speculative sampling", "sss": "SSS"}


@dataclasses.dataclass
class RunResult:
    method: str
    setting: str
    gold_reward: float
    proxy_reward: float
    tokens_generated: int
    seconds: float


def _make_method(name, args, *, reward=None, draft=None, ref_draft=None):
    from specalign import BestOfN, RewardShiftedSpeculativeSampling, SpeculativeRejection, SpeculativeSampling

    if name == "bon":
        return BestOfN(reward, n=args.n, seed=args.seed, progress=args.progress)
    if name == "spr":
        return SpeculativeRejection(reward, n=args.n, alpha=args.alpha, decision_tokens=args.decision_tokens,
                                    seed=args.seed, progress=args.progress)
    if name == "sd":
        return SpeculativeSampling(draft, num_draft_tokens=args.num_draft_tokens, seed=args.seed)
    if name == "sss":
        return RewardShiftedSpeculativeSampling(draft, ref_draft, num_draft_tokens=args.num_draft_tokens, seed=args.seed)
    raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHOD_NAMES)}")


def generate_answers(model, tokenizer, prompts, method, generate_kwargs):
    """Run ``method`` (None: plain sampling) on ``prompts``; returns (answers, tokens generated, seconds).

    Tokens generated counts every token the generator sampled, over all candidates for Best-of-N and
    Speculative Rejection: the compute the methods are compared on.
    """
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    start = time.perf_counter()
    out = model.generate(**inputs, custom_generate=method, return_dict_in_generate=True, **generate_kwargs)
    seconds = time.perf_counter() - start
    answer_ids = out.sequences[:, inputs["input_ids"].shape[1]:]
    answers = tokenizer.batch_decode(answer_ids, skip_special_tokens=True)
    tokens = getattr(out, "tokens_generated", None)
    if tokens is None:
        tokens = int((answer_ids != tokenizer.pad_token_id).sum())
    return answers, int(tokens), seconds


def demo(args) -> int:
    from specalign import RewardModel
    from specalign.world import load_world

    if args.quick:
        args.prompts, args.bon_n, args.spr_n, args.max_new_tokens = 4, [4, 8], [16], 24
    torch.manual_seed(args.seed)
    world = load_world()
    prompts = world.prompts[: args.prompts]
    reward = RewardModel(world.reward_model, world.reward_tokenizer)
    generate_kwargs = dict(do_sample=True, max_new_tokens=args.max_new_tokens)

    runs = []
    settings = [("sample", None), *[("bon", n) for n in args.bon_n], *[("spr", n) for n in args.spr_n], ("sd", None), ("sss", None)]
    for name, n in settings:
        if name == "sample":
            method, label = None, "Target sampling"
        else:
            method_args = argparse.Namespace(**{**vars(args), "n": n, "progress": not args.quiet})
            method = _make_method(name, method_args, reward=reward, draft=world.aligned_draft if name == "sss" else world.draft,
                                  ref_draft=world.draft)
            label = METHOD_NAMES[name]
        answers, tokens, seconds = generate_answers(world.target, world.tokenizer, prompts, method, generate_kwargs)
        texts = [f"{prompt} {answer.strip()}" for prompt, answer in zip(prompts, answers)]
        gold = float(world.gold_reward(texts).mean())
        proxy = float(reward.score_texts(texts).mean())
        runs.append(RunResult(label, "" if n is None else f"N={n}", gold, proxy, tokens, seconds))
        if not args.quiet:
            print(f"  {label:<24} {runs[-1].setting:<6} gold {gold:+.3f}  ({seconds:.1f} s)", file=sys.stderr)

    print(format_table(runs))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(runs, out_dir / "reward_vs_compute.png")
    print(f"\nplot: {out_dir / 'reward_vs_compute.png'}")
    return 0


def format_table(runs: list[RunResult]) -> str:
    """The demo's table; speedups are wall-time ratios against the largest Best-of-N run."""
    bon = [r for r in runs if r.method == METHOD_NAMES["bon"]]
    bon_seconds = bon[-1].seconds if bon else None
    header = (f"{'method':<24} {'setting':<7} {'gold reward':>11} {'proxy reward':>12} {'tokens generated':>16} "
              f"{'wall s':>7} {'speedup vs BoN':>14}")
    lines = ["", header, "-" * len(header)]
    for r in runs:
        speedup = f"{bon_seconds / r.seconds:.2f}x" if bon_seconds else "-"
        lines.append(f"{r.method:<24} {r.setting:<7} {r.gold_reward:>11.3f} {r.proxy_reward:>12.3f} "
                     f"{r.tokens_generated:>16} {r.seconds:>7.2f} {speedup:>14}")
    return "\n".join(lines)


def _plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in dict.fromkeys(r.method for r in runs):
        points = sorted((r.tokens_generated, r.gold_reward) for r in runs if r.method == method)
        ax.plot(*zip(*points), marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("tokens generated by the target (log)")
    ax.set_ylabel("mean gold reward")
    ax.set_title("specalign demo: reward against compute")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def generate(args) -> int:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from specalign import RewardModel

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    reward = draft = ref_draft = None
    if args.method in ("bon", "spr"):
        if not args.reward_model:
            raise SystemExit(f"--method {args.method} needs --reward-model DIR")
        has_tokenizer = any((Path(args.reward_model) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        reward_tokenizer = AutoTokenizer.from_pretrained(args.reward_model) if has_tokenizer else tokenizer
        reward = RewardModel(AutoModelForSequenceClassification.from_pretrained(args.reward_model).eval(),
                             reward_tokenizer, generator_tokenizer=tokenizer)
    if args.method in ("sd", "sss"):
        if not args.draft or (args.method == "sss" and not args.ref_draft):
            raise SystemExit("--method sd needs --draft DIR; --method sss needs --draft DIR (aligned) and --ref-draft DIR")
        draft = AutoModelForCausalLM.from_pretrained(args.draft).eval()
        ref_draft = AutoModelForCausalLM.from_pretrained(args.ref_draft).eval() if args.ref_draft else None
    args.progress = True
    method = _make_method(args.method, args, reward=reward, draft=draft, ref_draft=ref_draft)
    answers, tokens, seconds = generate_answers(model, tokenizer, args.prompt, method,
                                         dict(do_sample=not args.greedy, max_new_tokens=args.max_new_tokens,
                                              temperature=args.temperature, top_k=args.top_k))
    for prompt, answer in zip(args.prompt, answers):
        print(f"{prompt}{answer}")
    print(f"[{METHOD_NAMES[args.method]}: {tokens} target tokens in {seconds:.2f} s]", file=sys.stderr)
    return 0


# suite -> the scripts that run it from the checkout's root
BENCH_SUITES = {
    "ops": [f"bench/bench_{op}.py" for op in
            ("speculative_verify", "speculative_verify_probs", "sample", "compact_rows", "compact_columns")],
    "spr": ["bench/bench_speculative_rejection.py"],
    "sd": ["bench/bench_speculative_sampling.py"],
}


def bench(args) -> int:
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench").is_dir():
        raise SystemExit("specalign bench runs the suites of a source checkout (bench/ was not found next to the package)")
    code = 0
    for suite in [args.suite] if args.suite else BENCH_SUITES:
        for script in BENCH_SUITES[suite]:
            print(f"\n=== {suite}: {script} ===", flush=True)
            code |= subprocess.call([sys.executable, script, *args.extra], cwd=root)
    return code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="specalign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("demo", help="all four methods on the bundled world: a table and a plot")
    p.add_argument("--prompts", type=int, default=16, help="how many of the world's prompts")
    p.add_argument("--bon-n", type=int, nargs="+", default=[4, 16, 64], help="Best-of-N sizes")
    p.add_argument("--spr-n", type=int, nargs="+", default=[24, 96], help="Speculative Rejection initial sizes")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--decision-tokens", type=int, nargs="+", default=[6, 12],
                   help="Speculative Rejection decision points in new tokens (the world's answers are short)")
    p.add_argument("--num-draft-tokens", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out", help="folder for the plot")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    p.add_argument("--quick", action="store_true", help="4 prompts, small N, short answers: a smoke run")
    p.set_defaults(run=demo)

    p = commands.add_parser("generate", help="one method on local Hugging Face model folders")
    p.add_argument("--model", required=True, help="target / generator model folder")
    p.add_argument("--tokenizer", help="tokenizer folder, if not in --model (also the reward model's, if it has none)")
    p.add_argument("--method", required=True, choices=sorted(METHOD_NAMES))
    p.add_argument("--reward-model", help="sequence-classification reward model folder (bon, spr)")
    p.add_argument("--draft", help="draft model folder (sd; the aligned draft for sss)")
    p.add_argument("--ref-draft", help="unaligned draft model folder (sss)")
    p.add_argument("--prompt", action="append", required=True)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--decision-tokens", type=int, nargs="+", default=None,
                   help="Speculative Rejection decision points in new tokens (default: from the memory budget)")
    p.add_argument("--num-draft-tokens", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=generate)

    p = commands.add_parser("bench", help="run the benchmark suites and print their tables")
    p.add_argument("--suite", choices=sorted(BENCH_SUITES))
    p.set_defaults(run=bench)

    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # bench passes them on to the suite (e.g. --quick for sd)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
