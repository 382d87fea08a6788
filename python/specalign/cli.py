"""The specalign command line: demo, generate, bench and run. `specalign COMMAND --help` shows a
command's options and their defaults.

examples:
  specalign demo --quick
  specalign generate --world --method spr --prompt "review of the pizza:" --prompt "how was the sushi:" --json
  specalign generate --model DIR --reward-model DIR --method bon --n 8 --prompt "..."
  specalign bench --suite ops
  specalign run --world --method bon --output results.jsonl      (torchrun --nproc-per-node N ... for N processes)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

METHOD_NAMES = {"bon": "Best-of-N", "spr": "Speculative Rejection", "sd": "Speculative sampling", "sss": "SSS"}
METHODS_HELP = """methods (--method):
  bon  Best-of-N: N whole answers per prompt; the reward model's best one is returned
  spr  Speculative Rejection (Sun et al., NeurIPS 2024): Best-of-N that scores the partial answers at
       decision points and drops the worst alpha fraction, so a large N costs far fewer tokens
  sd   speculative sampling: a small draft proposes K tokens, the target verifies them in one call;
       the output follows the target's own distribution exactly
  sss  reward-shifted speculative sampling (Li et al., EMNLP 2025): an aligned draft proposes, the
       target verifies with the shifted rule; the output follows the reward-tilted target exactly,
       with no reward-model calls"""
# Where the bundled world lies (specalign.world.WORLD_DIR; spelled out so that --help imports no transformers).
BUNDLED_WORLD = Path(__file__).parent / "world" / "assets"
# --world DIR: the folder of each role, per method (bon and spr need no draft; sd and sss no reward
# model, but take one to score their answers).
WORLD_FOLDERS = {
    "bon": dict(model="target", reward_model="reward_model"),
    "spr": dict(model="target", reward_model="reward_model"),
    "sd": dict(model="target", draft="draft", reward_model="reward_model"),
    "sss": dict(model="target", draft="aligned_draft", ref_draft="draft", reward_model="reward_model"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks (the method list) and widens the option column."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


def _bounded(kind, low, high=None, *, low_open=False, high_open=False, meaning):
    """An argparse type: a ``kind`` between ``low`` and ``high`` (either end open when asked)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {meaning}, got {text!r}") from None
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"expected {meaning}, got {text!r}")
        return value

    return parse


positive_int = _bounded(int, 1, meaning="an integer >= 1")
non_negative_int = _bounded(int, 0, meaning="an integer >= 0")
rejection_rate = _bounded(float, 0.0, 1.0, high_open=True, meaning="a rejection rate in [0, 1)")
positive_float = _bounded(float, 0.0, low_open=True, meaning="a number > 0")
seed_value = _bounded(int, 0, 2**31, high_open=True, meaning="a seed in [0, 2**31)")


def prompt_text(text: str) -> str:
    """An argparse type: a prompt with at least one non-space character."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a prompt with some text, got an empty one")
    return text


def memory_size(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"64K"`` or a plain number of bytes -> bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size in bytes such as 2G, 512M or 1000000, got {text!r}")
    return int(float(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " "))


@dataclasses.dataclass
class Generation:
    """One ``generate`` call on a batch of prompts."""

    answers: list[str]
    answer_tokens: list[int]  # per prompt, tokens of the returned answer
    tokens: int  # every token sampled, over all candidates for Best-of-N and Speculative Rejection
    seconds: float  # wall time
    cpu_seconds: float  # CPU time of this process: the wall time an idle machine would show, times the threads
    output: object  # generate's output (return_dict_in_generate=True), with the method's statistics
    inputs: dict


def make_method(name, args, *, reward=None, draft=None, ref_draft=None, tokenizer=None):
    """The ``custom_generate`` object for method ``name`` from the parsed options."""
    from specalign import BestOfN, RewardShiftedSpeculativeSampling, SpeculativeRejection, SpeculativeSampling

    progress = not args.quiet
    if name == "bon":
        return BestOfN(reward, n=args.n, seed=args.seed, progress=progress)
    if name == "spr":
        return SpeculativeRejection(reward, n=args.n, alpha=args.alpha, decision_tokens=args.decision_tokens,
                                    memory_budget=getattr(args, "memory_budget", None), seed=args.seed,
                                    progress=progress)
    if name == "sd":
        return SpeculativeSampling(draft, num_draft_tokens=args.num_draft_tokens, seed=args.seed, tokenizer=tokenizer,
                                   progress=progress)
    if name == "sss":
        return RewardShiftedSpeculativeSampling(draft, ref_draft, num_draft_tokens=args.num_draft_tokens,
                                                seed=args.seed, tokenizer=tokenizer, progress=progress)
    raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHOD_NAMES)}")


def run_method(model, tokenizer, prompts, method, generate_kwargs) -> Generation:
    """Run ``method`` (None: plain sampling) on ``prompts`` with ``model.generate``."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = model.generate(**inputs, custom_generate=method, return_dict_in_generate=True, **generate_kwargs)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    answer_ids = out.sequences[:, inputs["input_ids"].shape[1]:]
    answer_tokens = (answer_ids != tokenizer.pad_token_id).sum(1).tolist()
    answers = tokenizer.batch_decode(answer_ids, skip_special_tokens=True)
    tokens = getattr(out, "tokens_generated", None)
    if tokens is None:
        tokens = sum(answer_tokens)
    return Generation(answers, answer_tokens, int(tokens), seconds, cpu_seconds, out, inputs)


def generate_answers(model, tokenizer, prompts, method, generate_kwargs):
    """Run ``method`` (None: plain sampling) on ``prompts``; returns (answers, tokens generated, seconds).

    Tokens generated counts every token the generator sampled, over all candidates for Best-of-N and
    Speculative Rejection: the compute the methods are compared on.
    """
    run = run_method(model, tokenizer, prompts, method, generate_kwargs)
    return run.answers, run.tokens, run.seconds


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads (None: torch's default); returns the count in use."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _folders(args, parser) -> dict[str, Path | None]:
    """The model folders of ``generate``: explicit options first, then the world's; checked."""
    folders = {role: getattr(args, role) for role in ("model", "tokenizer", "reward_model", "draft", "ref_draft")}
    if args.world is not None:
        world = Path(args.world)
        if not (world / "target").is_dir():
            parser.error(f"--world {world}: not a world folder (no target/ inside); make one with "
                         "`python -m specalign.world.train`, or give --world alone for the bundled one")
        for role, name in WORLD_FOLDERS[args.method].items():
            folders[role] = folders[role] or str(world / name)
    needs = {"bon": ["reward_model"], "spr": ["reward_model"], "sd": ["draft"], "sss": ["draft", "ref_draft"]}
    for role in ["model", *needs[args.method]]:
        if folders[role] is None:
            parser.error(f"--method {args.method} needs --{role.replace('_', '-')} DIR (or --world)")
    for role, folder in folders.items():
        if folder is not None and not Path(folder).is_dir():
            parser.error(f"--{role.replace('_', '-')} {folder}: no such folder")
    tokenizer_folder = Path(folders["tokenizer"] or folders["model"])
    if not any((tokenizer_folder / name).exists() for name in TOKENIZER_FILES):
        parser.error(f"{tokenizer_folder} has no tokenizer ({', '.join(TOKENIZER_FILES)}); give --tokenizer DIR")
    return {role: None if folder is None else Path(folder) for role, folder in folders.items()}


def _load(folders):
    """(tokenizer, model, reward model or None, draft or None, reference draft or None)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from specalign import RewardModel

    tokenizer = AutoTokenizer.from_pretrained(folders["tokenizer"] or folders["model"], padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # the prompts are padded into one batch
    model = AutoModelForCausalLM.from_pretrained(folders["model"]).eval()
    reward = draft = ref_draft = None
    if folders["reward_model"] is not None:
        folder = folders["reward_model"]
        has_tokenizer = any((folder / name).exists() for name in TOKENIZER_FILES)
        reward = RewardModel(AutoModelForSequenceClassification.from_pretrained(folder).eval(),
                             AutoTokenizer.from_pretrained(folder) if has_tokenizer else tokenizer,
                             generator_tokenizer=tokenizer)
    if folders["draft"] is not None:
        draft = AutoModelForCausalLM.from_pretrained(folders["draft"]).eval()
    if folders["ref_draft"] is not None:
        ref_draft = AutoModelForCausalLM.from_pretrained(folders["ref_draft"]).eval()
    return tokenizer, model, reward, draft, ref_draft


def _answer_rewards(run: Generation, reward) -> list[float] | None:
    """The returned answers' rewards: the method's own (bon, spr), else the reward model's, if any."""
    rewards = getattr(run.output, "rewards", None)
    if rewards is None and reward is not None:
        prompts = [ids[mask.bool()] for ids, mask in zip(run.inputs["input_ids"], run.inputs["attention_mask"])]
        answers = [ids[:count] for ids, count in zip(run.output.sequences[:, run.inputs["input_ids"].shape[1]:],
                                                     run.answer_tokens)]
        rewards = reward(prompts, answers)
    return None if rewards is None else [round(float(r), 4) for r in rewards]


def _statistics(output) -> dict:
    """The method's statistics from generate's output: its plain numbers and lists of numbers."""
    return {name: value for name, value in output.items() if isinstance(value, (int, float, list))}


def _json_report(args, run: Generation, rewards, threads: int) -> dict:
    results = [dict(prompt=prompt, text=answer, tokens=tokens) for prompt, answer, tokens
               in zip(args.prompt, run.answers, run.answer_tokens)]
    for result, reward in zip(results, rewards or []):
        result["reward"] = reward
    return dict(method=args.method, method_name=METHOD_NAMES[args.method], tokens_generated=run.tokens,
                seconds=round(run.seconds, 4), cpu_seconds=round(run.cpu_seconds, 4), threads=threads,
                statistics=_statistics(run.output), results=results)


def generate(args) -> int:
    if args.greedy and args.method in ("bon", "spr"):
        args.parser.error(f"--greedy: {METHOD_NAMES[args.method]} samples its N answers; "
                          "greedy decoding is for sd and sss")
    folders = _folders(args, args.parser)
    # The world's models are tiny: per-op overhead dominates, and a second thread only adds contention.
    threads = set_threads(1 if args.threads is None and args.world is not None else args.threads)
    if args.quiet or args.json:
        quiet_transformers()
    tokenizer, model, reward, draft, ref_draft = _load(folders)
    method = make_method(args.method, args, reward=reward, draft=draft, ref_draft=ref_draft, tokenizer=tokenizer)
    generate_kwargs = dict(do_sample=not args.greedy, max_new_tokens=args.max_new_tokens)
    if not args.greedy:
        generate_kwargs.update(temperature=args.temperature, top_k=args.top_k)
    run = run_method(model, tokenizer, args.prompt, method, generate_kwargs)
    rewards = _answer_rewards(run, reward)
    if args.json:
        print(json.dumps(_json_report(args, run, rewards, threads), indent=1))
        return 0
    for prompt, answer in zip(args.prompt, run.answers):
        print(f"{prompt}{answer}")
    if not args.quiet:
        mean_reward = "" if rewards is None else f", mean reward {sum(rewards) / len(rewards):.3f}"
        print(f"[{METHOD_NAMES[args.method]}: {run.tokens} tokens generated in {run.seconds:.2f} s on {threads} "
              f"thread(s){mean_reward}]", file=sys.stderr)
    return 0


# suite -> (what it measures, the scripts that run it, from the caller's folder)
BENCH_SUITES = {
    "ops": ("each op's C++ kernel (and Triton on CUDA): time, GB/s and share of the measured copy bandwidth, "
            "against the reference, Hugging Face's code and a batched PyTorch version (bench/bench_<op>.py)",
            [f"bench/bench_{op}.py" for op in
             ("speculative_verify", "speculative_verify_probs", "sample", "sample_with_stats", "compact_rows",
              "fork_rows", "compact_columns")]),
    "spr": ("Speculative Rejection against Best-of-N on one engine, and in-place compaction against "
            "re-prefilling (tiny random-init models; options: --n, --max-new-tokens, --backend, ...)",
            ["bench/bench_speculative_rejection.py"]),
    "sd": ("batched speculative sampling and SSS against HF assisted generation and plain sampling; "
           "trains its tiny models once first (about 3 minutes on one core, cached in the temp folder; "
           "options: --quick, --threads)",
           ["bench/bench_speculative_sampling.py"]),
    "paper": ("the papers' headline measures on the bundled world: reward against generator tokens, reward-model "
              "tokens and time for Best-of-N, Speculative Rejection and SSS, speedups with 95% intervals over seeds; "
              "writes bench/results/reward_vs_compute_<setting>.json and .png (tens of minutes on one core; "
              "options: --quick (a few minutes), --setting long short, --threads)",
              ["bench/bench_reward_vs_compute.py"]),
}
# what `specalign bench` runs without --suite: the paper suite takes too long to run by the way
DEFAULT_SUITES = ("ops", "spr", "sd")


def bench(args) -> int:
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench").is_dir():
        args.parser.error("bench runs the suites of a source checkout (bench/ was not found next to the package)")
    code = 0
    for suite in [args.suite] if args.suite else DEFAULT_SUITES:
        meaning, scripts = BENCH_SUITES[suite]
        if not args.quiet:
            print(f"\n=== {suite}: {meaning} ===", flush=True)
        for script in scripts:  # from the caller's folder, so that output files land there
            code |= subprocess.call([sys.executable, str(root / script), *args.extra], cwd=os.getcwd())
    return code


def _demo(args) -> int:
    from specalign import demo

    return demo.run(args)


def _wrap(text: str, **options) -> str:
    return textwrap.fill(text, width=100, break_on_hyphens=False, **options)


def _add_common(parser, *, threads_default: str):
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help=f"CPU threads for torch (default: {threads_default})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, per-run lines or summary lines")


def _demo_parser(commands):
    p = commands.add_parser(
        "demo", formatter_class=_HelpFormatter, help="every method on a small bundled world: a table and a plot",
        description=_wrap("Runs target sampling, Best-of-N, Speculative Rejection, speculative sampling and SSS on "
                          "the bundled world's prompts, over several seeds, and writes results.md, results.json and "
                          "reward_vs_compute.png to --out. The headline is compute: tokens generated."))
    p.add_argument("--prompts", type=positive_int, default=16,
                   help="how many of the world's prompts (default: %(default)s)")
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="runs per setting, seeds --seed, --seed+1, ...; the table and plot show mean and spread "
                        "(default: %(default)s)")
    p.add_argument("--bon-n", type=positive_int, nargs="+", default=[4, 16, 64], metavar="N",
                   help="Best-of-N sizes (default: %(default)s)")
    p.add_argument("--spr-n", type=positive_int, nargs="+", default=[24, 96], metavar="N",
                   help="Speculative Rejection initial sizes (default: %(default)s)")
    p.add_argument("--alpha", type=rejection_rate, default=0.5,
                   help="Speculative Rejection's rejection rate: the fraction of answers dropped at each decision "
                        "point (default: %(default)s)")
    p.add_argument("--decision-tokens", type=positive_int, nargs="+", default=[6, 12], metavar="T",
                   help="Speculative Rejection's decision points, in new tokens (default: %(default)s; the world's "
                        "answers are short)")
    p.add_argument("--num-draft-tokens", type=positive_int, default=4, metavar="K",
                   help="tokens the draft proposes per target call, sd and sss (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=positive_int, default=40, metavar="TOKENS",
                   help="the answers' length limit (default: %(default)s)")
    p.add_argument("--seed", type=seed_value, default=0, help="the first seed (default: %(default)s)")
    p.add_argument("--world", metavar="DIR", default=None,
                   help="a world made by `python -m specalign.world.train` (default: the bundled one)")
    p.add_argument("--out", default="out", help="folder for the table and the plot (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 4 prompts, 2 seeds, N in {4, 8} and {16}, 24 new tokens")
    _add_common(p, threads_default="1, fastest for the world's tiny models, also on a busy machine")
    p.set_defaults(run=_demo, parser=p)  # the command's parser, for its errors


def _generate_parser(commands):
    p = commands.add_parser(
        "generate", formatter_class=_HelpFormatter, help="one method on local Hugging Face model folders",
        description=_wrap("Runs one method on a batch of prompts, with local Hugging Face model folders or a world.")
                    + f"\n\n{METHODS_HELP}\n\nThe bundled world (--world) lies in {BUNDLED_WORLD}")
    p.add_argument("--method", required=True, choices=sorted(METHOD_NAMES),
                   help="bon: Best-of-N, spr: Speculative Rejection, sd: speculative sampling, sss: reward-shifted "
                        "speculative sampling (see above)")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT", type=prompt_text,
                   help="a prompt; repeat it for a batch")
    p.add_argument("--world", nargs="?", const=str(BUNDLED_WORLD), metavar="DIR",
                   help="take the models from a world: alone, the bundled one; or a folder made by "
                        "`python -m specalign.world.train`. It fills --model (target), --reward-model, --draft "
                        "(sd: draft; sss: aligned_draft) and --ref-draft (sss: draft); options given win")
    p.add_argument("--model", metavar="DIR", help="the target (generator) model folder")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="tokenizer folder, when --model has none (also the reward model's, when it has none)")
    p.add_argument("--reward-model", metavar="DIR",
                   help="a sequence-classification reward model folder: needed by bon and spr; with sd and sss "
                        "it scores the answers")
    p.add_argument("--draft", metavar="DIR", help="the draft model folder: sd's draft, sss's aligned draft")
    p.add_argument("--ref-draft", metavar="DIR", help="sss: the draft before alignment")
    p.add_argument("--n", type=positive_int, default=16,
                   help="bon: answers per prompt; spr: initial answers per prompt (default: %(default)s)")
    p.add_argument("--alpha", type=rejection_rate, default=0.5,
                   help="spr: rejection rate in [0, 1), the fraction of answers dropped at each decision point "
                        "(default: %(default)s)")
    p.add_argument("--decision-tokens", type=positive_int, nargs="+", default=None, metavar="T",
                   help="spr: decision points in new tokens, e.g. 8 16 32 (default: where the batch's KV cache "
                        "fills --memory-budget)")
    p.add_argument("--memory-budget", type=memory_size, default=None, metavar="SIZE",
                   help="spr: bytes of KV cache the batch may hold, e.g. 512M or 2G; without --decision-tokens, "
                        "the decision points fall where the batch fills it (default: the device's free memory)")
    p.add_argument("--num-draft-tokens", type=positive_int, default=4, metavar="K",
                   help="sd, sss: tokens the draft proposes per target call (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="TOKENS",
                   help="the answers' length limit (default: %(default)s)")
    p.add_argument("--temperature", type=positive_float, default=1.0, metavar="T",
                   help="sampling temperature; under sss it applies to all three models (default: %(default)s)")
    p.add_argument("--top-k", type=non_negative_int, default=0, metavar="TOP_K",
                   help="sample from the k most likely tokens only, 0: all; under sss the target only "
                        "(default: %(default)s)")
    p.add_argument("--greedy", action="store_true", help="sd, sss: greedy decoding instead of sampling")
    p.add_argument("--seed", type=seed_value, default=0,
                   help="each prompt's answer depends only on the seed and its place in the batch "
                        "(default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: per prompt the text, tokens and reward (where there is a reward "
                        "model), and the method's statistics")
    _add_common(p, threads_default="1 with --world, whose models are tiny; else torch's default")
    p.set_defaults(run=generate, parser=p)


def _bench_parser(commands):
    suites = "\n".join(_wrap(meaning, initial_indent=f"  {name:<6}", subsequent_indent=" " * 8)
                       for name, (meaning, _) in BENCH_SUITES.items())
    p = commands.add_parser(
        "bench", formatter_class=_HelpFormatter, allow_abbrev=False,
        help="run the benchmark suites of a source checkout",
        description=_wrap("Runs benchmark suites from the checkout's bench/ folder, in the current folder (so "
                          "output files land here), and prints their tables.") + f"\n\nsuites:\n{suites}\n\n"
                    + _wrap("Arguments this command does not know pass through to the suite, e.g. "
                            "`specalign bench --suite sd --quick`."))
    p.add_argument("--suite", choices=sorted(BENCH_SUITES), help="one suite (default: ops, spr and sd)")
    p.add_argument("--quiet", action="store_true", help="no suite headers")
    p.set_defaults(run=bench, parser=p)


# --- specalign run: data-parallel generation over a JSONL dataset (specalign/run.py) ---------------

def _run_models(args, device):
    """(generator, tokenizer, reward model, draft, reference draft) of ``specalign run``, on ``device``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from specalign import RewardModel

    if args.world:
        from specalign.world import load_world

        world = load_world(device)
        draft = world.aligned_draft if args.method == "sss" else world.draft
        return (world.target, world.tokenizer, RewardModel(world.reward_model, world.reward_tokenizer), draft,
                world.draft)
    if not args.model:
        raise SystemExit("specalign run needs --model DIR (or --world)")
    if args.method in ("bon", "spr") and not args.reward_model:
        raise SystemExit(f"--method {args.method} needs --reward-model DIR")
    if args.method in ("sd", "sss") and (not args.draft or (args.method == "sss" and not args.ref_draft)):
        raise SystemExit("--method sd needs --draft DIR; --method sss needs --draft DIR (aligned) and --ref-draft DIR")

    def causal_lm(path):
        return AutoModelForCausalLM.from_pretrained(path).to(device).eval() if path else None

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batches of prompts are left-padded
    reward = None
    if args.reward_model:
        has_tokenizer = any((Path(args.reward_model) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        reward_tokenizer = AutoTokenizer.from_pretrained(args.reward_model) if has_tokenizer else tokenizer
        reward = RewardModel(AutoModelForSequenceClassification.from_pretrained(args.reward_model).to(device).eval(),
                             reward_tokenizer, generator_tokenizer=tokenizer)
    return causal_lm(args.model), tokenizer, reward, causal_lm(args.draft), causal_lm(args.ref_draft)


def _run_prompts(args):
    from specalign.run import Prompt, read_prompts

    if args.input:
        return read_prompts(args.input, id_field=args.id_field, prompt_field=args.prompt_field)
    if args.world:
        from specalign.world import WORLD_DIR

        return [Prompt(i, text) for i, text in enumerate(json.loads((WORLD_DIR / "prompts.json").read_text()))]
    raise SystemExit("specalign run needs --input FILE (or --world, to run the world's prompts)")


def _run_method(args, tokenizer, reward, draft, ref_draft):
    from specalign import BestOfN, RewardShiftedSpeculativeSampling, SpeculativeRejection, SpeculativeSampling

    if args.method == "bon":
        return BestOfN(reward, n=args.n, memory_budget=args.memory_budget, max_batch_tokens=args.max_batch_tokens)
    if args.method == "spr":
        return SpeculativeRejection(reward, n=args.n, alpha=args.alpha, decision_tokens=args.decision_tokens,
                                    memory_budget=args.memory_budget, max_batch_tokens=args.max_batch_tokens)
    if args.method == "sd":
        return SpeculativeSampling(draft, num_draft_tokens=args.num_draft_tokens, tokenizer=tokenizer)
    return RewardShiftedSpeculativeSampling(draft, ref_draft, num_draft_tokens=args.num_draft_tokens, tokenizer=tokenizer)


def run(args) -> int:
    import torch.distributed as dist

    from specalign.run import init_distributed, run_dataset

    if args.world and (args.model or args.draft or args.ref_draft or args.reward_model):
        raise SystemExit("give --world or model folders, not both")
    prompts = _run_prompts(args)
    launched = "WORLD_SIZE" in os.environ and not dist.is_initialized()
    device = init_distributed()
    try:
        model, tokenizer, reward, draft, ref_draft = _run_models(args, device)
        models = {"world": True} if args.world else {
            name: str(Path(path).resolve()) for name, path in (("model", args.model), ("reward_model", args.reward_model),
                                                               ("draft", args.draft), ("ref_draft", args.ref_draft)) if path}
        generate_kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k)
        summary = run_dataset(prompts, args.output, model=model, tokenizer=tokenizer,
                              method=_run_method(args, tokenizer, reward, draft, ref_draft),
                              generate_kwargs=generate_kwargs, reward_model=reward, batch_size=args.batch_size,
                              seed=args.seed, config={"models": models}, progress=not args.quiet)
    except ValueError as error:  # options that do not fit, or an output written with other options
        raise SystemExit(f"specalign run: {error}") from None
    finally:
        if launched:
            dist.destroy_process_group()
    if summary is not None:
        print(f"[{METHOD_NAMES[args.method]}] {summary.format()}; results in {args.output}", file=sys.stderr)
    return 0


def _add_run_parser(commands) -> None:
    p = commands.add_parser("run", help="a method over a JSONL dataset, data-parallel under torchrun, resumable")
    p.add_argument("--input", help='JSONL prompts, one {"id": ..., "prompt": "..."} per line')
    p.add_argument("--output", required=True, help="JSONL results; a rerun of the same command resumes it")
    p.add_argument("--method", required=True, choices=sorted(METHOD_NAMES))
    p.add_argument("--world", action="store_true", help="the bundled world's models (and prompts, without --input)")
    p.add_argument("--model", help="target / generator model folder")
    p.add_argument("--tokenizer", help="tokenizer folder, if not in --model (also the reward model's, if it has none)")
    p.add_argument("--reward-model", help="sequence-classification reward model folder (bon, spr; scores sd, sss)")
    p.add_argument("--draft", help="draft model folder (sd; the aligned draft for sss)")
    p.add_argument("--ref-draft", help="unaligned draft model folder (sss)")
    p.add_argument("--id-field", default="id")
    p.add_argument("--prompt-field", default="prompt")
    # --num-samples: torchrun's parser reads "--n" as an ambiguous abbreviation of its own options.
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=16, help="samples per prompt (bon, spr)")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--decision-tokens", type=int, nargs="+", default=None,
                   help="Speculative Rejection decision points in new tokens (at the latest, the budget places them)")
    p.add_argument("--memory-budget", type=int, default=None,
                   help="Speculative Rejection / Best-of-N working-memory budget in bytes (spr: this or --max-batch-tokens)")
    p.add_argument("--max-batch-tokens", type=int, default=None,
                   help="the budget in cached tokens (rows times width) instead of bytes")
    p.add_argument("--num-draft-tokens", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (sd, sss)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="the run's seed; each prompt's seed hashes it with the id")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run, parser=p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specalign", description=f"{__doc__}\n{METHODS_HELP}",
                                     formatter_class=_HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,generate,bench,run}")
    _demo_parser(commands)
    _generate_parser(commands)
    _bench_parser(commands)
    _add_run_parser(commands)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # bench passes them on to the suite (e.g. --quick for sd)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
