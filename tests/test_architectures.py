"""Every decoder-only architecture of the installed transformers through every decoding loop.

Each architecture the causal-LM auto mapping lists is built tiny (``tests/tiny_models.py``: random
weights, fixed seeds, untied embeddings, small windows, every kind of layer of its pattern kept) and
checked, with HF's own ``generate`` as the reference:

- HF's greedy ``generate`` runs on a left-padded batch of 3, and its output depends on the context
  (otherwise every comparison below would pass trivially); when it fails, the architecture is
  skipped with the reason;
- speculative sampling, and SSS with the aligned draft equal to the reference draft, give exactly
  HF's greedy output (``do_sample=False``), the draft being a second tiny model of the same
  architecture;
- both sample (``do_sample=True``) a batch of 4 into valid token ids;
- Speculative Rejection (``top_k=1``: every sample is the greedy one) gives HF's greedy output
  through its decision points, and with ``alpha = 0`` it equals Best-of-N, samples and rewards.

A ``ValueError`` raised by specalign is a refusal. A refusal listed in ``DOCUMENTED_REFUSALS`` is
accepted when the engine's message gives the documented reason; any other refusal of an
architecture HF's own ``generate`` runs fails, as does any output that differs. One test pairs
architectures: a Llama target with a GPT-2 draft. The models are built once per module and shared
by every test (about 2.5 CPU-minutes in all at one thread).

The outcome of every (architecture, method) is collected into a table (ok / refused: why / FAIL:
what / skipped: why), printed as counts at the end of the module and written as Markdown to the file
``$SPECALIGN_ARCH_TABLE`` names, when set. ``pytest tests/test_architectures.py -k mistral`` runs
one architecture.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
import transformers
from tiny_models import BOS, EOS, FIRST_WORD, PAD, VOCAB, Skipped, architectures, build, perturbed_copy

import specalign
from specalign import BestOfN, RewardShiftedSpeculativeSampling, SpeculativeRejection, SpeculativeSampling

NEW_TOKENS = 8
NUM_DRAFT = 3
SAMPLES_PER_PROMPT = 4
TARGET_SEED, DRAFT_SEED = 0, 1

# The refusals the project accepts: engine -> {architecture: Refusal}. A refusal is accepted only
# when the engine's own message names the documented reason (``says``).
@dataclasses.dataclass(frozen=True)
class Refusal:
    reason: str
    says: str  # a phrase of the engine's message


SPECULATIVE_SAMPLING = "speculative sampling / SSS"
SPECULATIVE_REJECTION = "Speculative Rejection / Best-of-N"
RECURRENT_STATE = Refusal("keeps a recurrent state (state-space, linear-attention or convolution layers), from "
                          "which rejected draft tokens cannot be taken back; HF's assisted generation refuses it too",
                          "keeps a recurrent")
INDEXED_ATTENTION = Refusal("indexed sparse attention (DeepSeek sparse attention): its indexer picks the top-k keys "
                            "differently in one forward over several tokens than token by token, so draft "
                            "verification cannot reproduce its own decoding; HF's assisted generation differs "
                            "from its greedy output on it too", "indexed sparse attention")
NO_CACHE = Refusal("its forward takes no cache (openai-gpt recomputes the whole sequence at every step; RWKV "
                   "passes its state as `state`)", "takes no cache")
OWN_CACHE_CLASS = Refusal("its generate decodes with a cache class of its own, not a DynamicCache",
                          "does not decode with a DynamicCache")
OWN_CACHE_LAYERS = Refusal("its cache layers are classes of its own (compressed attention state beside keys and "
                           "values) that no cache adapter keeps in step with the rows", "the model's own cache layer class")
STATE_IN_MODULES = Refusal("keeps its recurrent state in its own modules, outside the cache, and resets it when the "
                           "batch changes size", "outside the cache")
POSITIONS_FROM_CACHE = Refusal("its forward takes no position_ids and its position embeddings count the cached "
                               "columns, which differ per row once rows accept different numbers of drafts",
                               "takes no position_ids")
NOT_CACHE_BASED = {"openai-gpt": NO_CACHE, "rwkv": NO_CACHE, "minimax": OWN_CACHE_CLASS, "xlstm": OWN_CACHE_CLASS,
                   "deepseek_v4": OWN_CACHE_LAYERS, "recurrent_gemma": STATE_IN_MODULES}
DOCUMENTED_REFUSALS: dict[str, dict[str, Refusal]] = {
    SPECULATIVE_SAMPLING: {
        **{model_type: RECURRENT_STATE for model_type in (
            "bailing_hybrid", "bamba", "falcon_h1", "falcon_mamba", "granitemoehybrid", "inkling2_loop_text",
            "inkling2_text", "inkling_text", "jamba", "kimi_linear", "lara_mini", "lfm2", "lfm2_moe", "lfm3", "mamba",
            "mamba2", "nemotron_h", "olmo_hybrid", "qwen3_5_moe_text", "qwen3_5_text", "qwen3_next", "zamba",
            "zamba2", "zaya",
        )},
        **{model_type: INDEXED_ATTENTION for model_type in (
            "axk2", "deepseek_v32", "dots3_note_text", "glm_moe_dsa", "hy_v4", "qwen4_exp_text")},
        "trocr": POSITIONS_FROM_CACHE,
        **NOT_CACHE_BASED,
    },
    SPECULATIVE_REJECTION: NOT_CACHE_BASED,
}

METHODS = {  # column -> engine
    "speculative greedy": SPECULATIVE_SAMPLING,
    "SSS greedy": SPECULATIVE_SAMPLING,
    "speculative sample": SPECULATIVE_SAMPLING,
    "SSS sample": SPECULATIVE_SAMPLING,
    "rejection greedy": SPECULATIVE_REJECTION,
    "rejection alpha 0 = best-of-n": SPECULATIVE_REJECTION,
}

TO_BUILD, SKIPPED = architectures()
RESULTS: dict[str, dict[str, str]] = {}  # architecture -> {column: outcome}

# A few minutes in all: slow, but in the suite.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread", "table")]


def left_padded(lengths, offset=0):
    """Prompts of the given lengths from word ids, left-padded, each starting with BOS; and their mask."""
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    for row, length in enumerate(lengths):
        words = FIRST_WORD + (torch.arange(length - 1) * 7 + 11 * row + offset) % (VOCAB - FIRST_WORD)
        ids[row, width - length:] = torch.cat([torch.tensor([BOS]), words])
    return ids, (ids != PAD).long()


def with_changed_row(prompts):
    """``prompts`` and one more row: row 0 with every word but its last changed. A model whose row-0
    continuation ignores them decodes from the last token alone, and would hide a wrong cache."""
    ids, mask = prompts
    changed = ids[:1].clone()
    changed[0, 1:-1] = FIRST_WORD + (changed[0, 1:-1] - FIRST_WORD + 50) % (VOCAB - FIRST_WORD)
    return torch.cat([ids, changed]), torch.cat([mask, mask[:1]])


GREEDY_PROMPTS = with_changed_row(left_padded([8, 5, 3]))
SAMPLE_PROMPTS = left_padded([6, 2, 7, 4], offset=3)


@functools.cache
def models(model_type):
    """(target, draft) of ``model_type``, or the :class:`Skipped` raised while building them."""
    try:
        arch = TO_BUILD[model_type]
        target = build(arch, TARGET_SEED)
        return target, perturbed_copy(target, DRAFT_SEED)
    except Skipped as skipped:
        return skipped


def generate(model, prompts, **kwargs):
    ids, mask = prompts
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, pad_token_id=PAD,
                          bos_token_id=BOS, eos_token_id=EOS, **kwargs)


class Unusable(Exception):
    """HF's greedy output cannot serve as the reference; ``hf_fails`` says whose fault it is."""

    def __init__(self, reason, hf_fails):
        super().__init__(reason)
        self.hf_fails = hf_fails


@functools.cache
def hf_greedy(model_type):
    """HF's greedy output on GREEDY_PROMPTS, or the :class:`Unusable` that says why it is no reference."""
    target, _ = models(model_type)
    try:
        expected = generate(target, GREEDY_PROMPTS, do_sample=False)
    except Exception as error:  # noqa: BLE001 - any failure of HF's own generate skips the architecture
        return Unusable(f"HF's own generate fails: {describe(error)}", hf_fails=True)
    continuations = [row.tolist() for row in expected[:, GREEDY_PROMPTS[0].shape[1]:]]
    if continuations[0] == continuations[1] == continuations[2]:
        return Unusable(f"the tiny model ignores its context: every prompt continues with {continuations[0]}",
                        hf_fails=False)
    if continuations[-1] == continuations[0]:
        return Unusable("the tiny model decodes from the last token alone: changing the words before it leaves "
                        f"the continuation {continuations[0]}", hf_fails=False)
    return expected


def describe(error) -> str:
    """The error's type, message and where it was raised."""
    text = " ".join(str(error).split())
    frame = traceback.extract_tb(error.__traceback__)[-1]
    where = Path(frame.filename)
    where = where.relative_to(where.parents[2]) if len(where.parents) > 2 else where
    return f"{type(error).__name__}: {text[:300]} ({where}:{frame.lineno})"


def raised_by_specalign(error) -> bool:
    """Whether ``error`` was raised in specalign's own code (a refusal), not deeper in a model."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(Path(specalign.__file__).parent.resolve())


def check(model_type, column, run):
    """Run one check of one architecture, record its outcome and pass, skip or fail the test."""
    built = models(model_type)
    if isinstance(built, Skipped):
        record(model_type, column, f"skipped: {built}")
        pytest.skip(str(built))
    expected = hf_greedy(model_type)
    if isinstance(expected, Unusable) and expected.hf_fails:
        record(model_type, column, f"skipped: {expected}")
        pytest.skip(str(expected))
    # An unusable reference fails every comparison with it (first_difference), unless the method refuses first.
    judge(model_type, column, lambda: run(*built, expected))


def judge(row, column, run):
    """Call ``run`` (it returns what is wrong, or ``None``); record the outcome under ``row``, ``column``."""
    engine = METHODS[column]
    try:
        problem = run()
    except ValueError as error:
        if not raised_by_specalign(error):
            record(row, column, f"FAIL: {describe(error)}")
            raise
        documented = DOCUMENTED_REFUSALS[engine].get(row)
        accepted = documented is not None and documented.says in str(error)
        record(row, column, f"refused: {error}" + ("" if accepted else " (undocumented)"))
        if not accepted:
            pytest.fail(f"{engine} refuses {row}, which HF's own generate runs, without the documented reason "
                        f"({documented.reason if documented else 'none'}): {error}")
        return
    except Exception as error:
        record(row, column, f"FAIL: {describe(error)}")
        raise
    if problem:
        record(row, column, f"FAIL: {problem}")
        pytest.fail(f"{row}, {column}: {problem}")
    record(row, column, "ok")


def record(model_type, column, outcome):
    RESULTS.setdefault(model_type, {})[column] = outcome


def first_difference(out, expected) -> str | None:
    """``None`` when equal, else where ``out`` first differs from ``expected`` (token for token)."""
    if isinstance(expected, Unusable):
        return f"{expected}; change its tiny build (tests/tiny_models.py)"
    if torch.equal(out, expected):
        return None
    width = GREEDY_PROMPTS[0].shape[1]
    if out.shape != expected.shape:
        return f"shape {tuple(out.shape)}, HF's greedy gives {tuple(expected.shape)}"
    row, column = (out != expected).nonzero()[0].tolist()
    return (f"row {row}, new token {column - width}: {int(out[row, column])} where HF's greedy gives "
            f"{int(expected[row, column])} (HF: {expected[row, width:].tolist()}, got: {out[row, width:].tolist()})")


def invalid_samples(out, prompts) -> str | None:
    """``None`` when ``out`` is a valid sample continuation of ``prompts``, else what is wrong."""
    ids, _ = prompts
    batch, width = ids.shape
    if out.shape[0] != batch or not width < out.shape[1] <= width + NEW_TOKENS:
        return f"output shape {tuple(out.shape)} for prompts {tuple(ids.shape)} and {NEW_TOKENS} new tokens"
    if not torch.equal(out[:, :width], ids):
        return "the prompts changed"
    new = out[:, width:]
    if int(new.min()) < 0 or int(new.max()) >= VOCAB:
        return f"token ids outside [0, {VOCAB}): {new.tolist()}"
    after_eos = (new == EOS).long().cumsum(-1) - (new == EOS).long() > 0
    if bool((new[after_eos] != PAD).any()):
        return f"tokens other than padding after EOS: {new.tolist()}"
    return None


def reward(prompts, answers):
    """A deterministic reward that depends on every answer token and its position."""
    return torch.tensor([float(sum((i + 1) * int(t) for i, t in enumerate(a)) % 101) for a in answers])


ARCHITECTURES = sorted(TO_BUILD)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_speculative_sampling_greedy_equals_hf_greedy(model_type):
    def run(target, draft, expected):
        out = generate(target, GREEDY_PROMPTS, do_sample=False, custom_generate=SpeculativeSampling(draft, NUM_DRAFT))
        return first_difference(out, expected)

    check(model_type, "speculative greedy", run)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_sss_with_aligned_equal_to_reference_greedy_equals_hf_greedy(model_type):
    def run(target, draft, expected):
        sss = RewardShiftedSpeculativeSampling(draft, draft, NUM_DRAFT)
        return first_difference(generate(target, GREEDY_PROMPTS, do_sample=False, custom_generate=sss), expected)

    check(model_type, "SSS greedy", run)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_speculative_sampling_samples_valid_tokens(model_type):
    def run(target, draft, expected):
        out = generate(target, SAMPLE_PROMPTS, do_sample=True, custom_generate=SpeculativeSampling(draft, NUM_DRAFT, seed=0))
        return invalid_samples(out, SAMPLE_PROMPTS)

    check(model_type, "speculative sample", run)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_sss_samples_valid_tokens(model_type):
    def run(target, draft, expected):
        sss = RewardShiftedSpeculativeSampling(draft, draft, NUM_DRAFT, seed=0)
        return invalid_samples(generate(target, SAMPLE_PROMPTS, do_sample=True, custom_generate=sss), SAMPLE_PROMPTS)

    check(model_type, "SSS sample", run)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_speculative_rejection_with_top_k_1_equals_hf_greedy(model_type):
    """With top_k=1 every sample is the greedy continuation, through every decision point's pruning."""
    def run(target, draft, expected):
        rejection = SpeculativeRejection(reward, n=2, alpha=0.5, decision_tokens=(2, 5))
        return first_difference(generate(target, GREEDY_PROMPTS, do_sample=True, top_k=1, custom_generate=rejection), expected)

    check(model_type, "rejection greedy", run)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_speculative_rejection_with_alpha_0_equals_best_of_n(model_type):
    def run(target, draft, expected):
        kwargs = dict(do_sample=True, return_dict_in_generate=True)
        rejection = generate(target, SAMPLE_PROMPTS, custom_generate=SpeculativeRejection(
            reward, n=SAMPLES_PER_PROMPT, alpha=0.0, decision_tokens=(2, 5), seed=5), **kwargs)
        best_of_n = generate(target, SAMPLE_PROMPTS, custom_generate=BestOfN(reward, n=SAMPLES_PER_PROMPT, seed=5), **kwargs)
        if not torch.equal(rejection.sequences, best_of_n.sequences):
            return f"sequences differ: {rejection.sequences.tolist()} against Best-of-N's {best_of_n.sequences.tolist()}"
        if not torch.equal(rejection.rewards, best_of_n.rewards):
            return f"rewards differ: {rejection.rewards.tolist()} against Best-of-N's {best_of_n.rewards.tolist()}"
        if not torch.equal(rejection.candidate_tokens, best_of_n.candidate_tokens):
            return "the samples differ"
        return invalid_samples(best_of_n.sequences, SAMPLE_PROMPTS)

    check(model_type, "rejection alpha 0 = best-of-n", run)


def test_llama_target_with_gpt2_draft_greedy_equals_hf_greedy():
    (target, _), (draft, _) = models("llama"), models("gpt2")

    def run():
        out = generate(target, GREEDY_PROMPTS, do_sample=False, custom_generate=SpeculativeSampling(draft, NUM_DRAFT))
        return first_difference(out, generate(target, GREEDY_PROMPTS, do_sample=False))

    judge("llama target, gpt2 draft", "speculative greedy", run)


def test_every_mapped_architecture_is_built_or_skipped_with_a_reason():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert set(TO_BUILD) | set(SKIPPED) == set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert all(SKIPPED.values())
    for engine, refusals in DOCUMENTED_REFUSALS.items():
        assert all(refusal.reason and refusal.says for refusal in refusals.values()), f"{engine}: a refusal without its reason"


@pytest.fixture(scope="module")
def table(request):
    yield
    lines = summary_lines()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for line in count_lines():
        (reporter.write_line if reporter else print)(line)
    path = os.environ.get("SPECALIGN_ARCH_TABLE")
    if path:
        Path(path).write_text("\n".join(lines) + "\n")


def outcome_kind(cell: str) -> str:
    kind = cell.partition(":")[0]
    return "refused (undocumented)" if kind == "refused" and cell.endswith("(undocumented)") else kind


def count_lines():
    lines = [f"architectures (transformers {transformers.__version__}): {len(TO_BUILD) + len(SKIPPED)} mapped, "
             f"{len(SKIPPED)} skipped before building"]
    for column in METHODS:
        kinds = Counter(outcome_kind(cells[column]) for cells in RESULTS.values() if column in cells)
        lines.append(f"{column}: " + ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())))
    return lines


def summary_lines():
    """The Markdown table, architecture x method, with each distinct outcome text in full below it."""
    legend: dict[str, str] = {}
    per_kind = Counter()

    def short(cell):
        if cell is None or cell == "ok":
            return cell or ""
        kind = outcome_kind(cell)
        if cell not in legend:
            per_kind[kind] += 1
            legend[cell] = f"{kind.split()[0]} {per_kind[kind]}"
        return legend[cell]

    lines = [f"transformers {transformers.__version__}, torch {torch.__version__}", "",
             "| architecture | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for model_type in sorted(RESULTS):
        lines.append(f"| {model_type} | " + " | ".join(short(RESULTS[model_type].get(c)) for c in METHODS) + " |")
    lines += ["", *count_lines(), ""]
    lines += [f"- {key}: {cell}" for cell, key in legend.items()]
    lines += ["", "Skipped before building:"] + [f"- {model_type}: {reason}" for model_type, reason in sorted(SKIPPED.items())]
    return lines
