"""specalign.ops.speculative_verify_probs: every backend gives the reference's tokens, and the tokens
follow the target probabilities exactly."""
import pytest
import torch

from helpers import (
    EXACTNESS_ROWS,
    FLOAT_DTYPES,
    assert_exact,
    assert_same_output,
    draw_drafts,
    keep_top_k,
    random_logits,
    random_positions,
    random_seeds,
)
from specalign import ops

CASES = (
    "random",
    "all_accepted",  # draft_probs equal the target's at every draft position
    "all_rejected",  # the target gives every drafted token probability 0
    "zero_proposal",  # the draft gives every drafted token probability 0 (q = 0: a rejection)
    "zeros",  # a top-k truncated target, drafts with zero-probability tokens
)
CPP_SHAPES = [(1, 1, 1000), (4, 3, 257), (16, 5, 1000)]  # (B, K, V)
TRITON_CASES = [((3, 3, 300), dtype, case) for dtype in FLOAT_DTYPES for case in CASES] + [
    ((1, 1, 257), torch.float32, case) for case in ("random", "zeros")
]


def make_probs_inputs(batch, num_draft, vocab, dtype, case, generator):
    """Keyword arguments of speculative_verify_probs for one of CASES."""
    target_logits = random_logits((batch, num_draft + 1, vocab), generator)
    draft_logits = random_logits((batch, num_draft, vocab), generator)
    if case == "zeros":
        target_logits = keep_top_k(target_logits, vocab // 4)
        forbidden = torch.rand(draft_logits.shape, generator=generator) < 0.3
        forbidden[..., 0] = False
        draft_logits = draft_logits.masked_fill(forbidden, -torch.inf)
    target = torch.softmax(target_logits, -1).to(dtype)
    draft = target[:, :num_draft].clone() if case == "all_accepted" else torch.softmax(draft_logits, -1).to(dtype)
    draft_tokens = torch.multinomial(draft.float().flatten(0, 1), 1, generator=generator).view(batch, num_draft)
    if case == "all_rejected":
        target[:, :num_draft].scatter_(-1, draft_tokens.unsqueeze(-1), 0.0)
    if case == "zero_proposal":
        draft.scatter_(-1, draft_tokens.unsqueeze(-1), 0.0)
    return dict(draft_tokens=draft_tokens, draft_probs=draft, target_probs=target,
                seeds=random_seeds(batch, generator), positions=random_positions(batch, generator))


def run_reference(inputs):
    return ops.speculative_verify_probs(**inputs, backend="reference")


def check_output_contract(out, inputs, case):
    """What every output must satisfy, whatever the random numbers."""
    draft_tokens, target = inputs["draft_tokens"], inputs["target_probs"]
    batch, num_draft = draft_tokens.shape
    assert out.tokens.dtype == out.num_accepted.dtype == out.num_emitted.dtype == torch.int64
    assert out.tokens.shape == (batch, num_draft + 1)
    assert bool(((out.num_accepted >= 0) & (out.num_accepted <= num_draft)).all())
    assert torch.equal(out.num_emitted, out.num_accepted + 1)
    steps = torch.arange(num_draft + 1)
    accepted_slots = steps[:num_draft] < out.num_accepted[:, None]
    assert torch.equal(out.tokens[:, :num_draft][accepted_slots], draft_tokens.long()[accepted_slots])
    assert bool((out.tokens[steps >= out.num_emitted[:, None]] == -1).all())
    rows = torch.arange(batch)
    last = out.tokens[rows, out.num_accepted]
    assert bool((target[rows, out.num_accepted, last] > 0).all()), "emitted a token of target probability 0"
    if case == "all_accepted":
        assert bool((out.num_accepted == num_draft).all())
    if case in ("all_rejected", "zero_proposal"):
        assert bool((out.num_accepted == 0).all())


@pytest.mark.parametrize("case", CASES)
def test_reference_output_follows_the_contract(case, generator):
    inputs = make_probs_inputs(6, 3, 200, torch.float32, case, generator)
    check_output_contract(run_reference(inputs), inputs, case)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch, num_draft, vocab", CPP_SHAPES)
def test_cpp_matches_reference(batch, num_draft, vocab, dtype, case, generator):
    inputs = make_probs_inputs(batch, num_draft, vocab, dtype, case, generator)
    out = ops.speculative_verify_probs(**inputs, backend="cpp")
    check_output_contract(out, inputs, case)
    assert_same_output(out, run_reference(inputs))


@pytest.mark.parametrize("shape, dtype, case", TRITON_CASES)
def test_triton_matches_reference(shape, dtype, case, generator):
    inputs = make_probs_inputs(*shape, dtype, case, generator)
    out = ops.speculative_verify_probs(**inputs, backend="triton")
    check_output_contract(out, inputs, case)
    assert_same_output(out, run_reference(inputs))


def test_rows_need_not_sum_to_one(generator):
    """Probabilities scaled per row (as after rounding or truncation without renormalising) still give
    the reference's tokens on every backend that runs fast here."""
    inputs = make_probs_inputs(16, 3, 400, torch.float32, "zeros", generator)
    inputs["target_probs"] = inputs["target_probs"] * (0.9 + 0.2 * torch.rand(16, 4, 1, generator=generator))
    inputs["draft_probs"] = inputs["draft_probs"] * (0.9 + 0.2 * torch.rand(16, 3, 1, generator=generator))
    assert_same_output(ops.speculative_verify_probs(**inputs, backend="cpp"), run_reference(inputs))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_int32_draft_tokens_give_the_int64_result(backend, generator):
    inputs = make_probs_inputs(3, 2, 300, torch.float32, "random", generator)
    expected = run_reference(inputs)
    inputs["draft_tokens"] = inputs["draft_tokens"].int()
    assert_same_output(ops.speculative_verify_probs(**inputs, backend=backend), expected)


def test_default_backend_is_cpp_on_cpu(generator):
    inputs = make_probs_inputs(8, 4, 500, torch.float32, "zeros", generator)
    assert_same_output(ops.speculative_verify_probs(**inputs), ops.speculative_verify_probs(**inputs, backend="cpp"))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_rows_do_not_depend_on_the_rest_of_the_batch(backend, generator):
    shape = (4, 3, 300) if backend == "triton" else (24, 3, 500)
    inputs = make_probs_inputs(*shape, torch.float32, "random", generator)
    out = ops.speculative_verify_probs(**inputs, backend=backend)
    subset = torch.randperm(shape[0], generator=generator)[: shape[0] // 2]
    out_subset = ops.speculative_verify_probs(**{k: v[subset] for k, v in inputs.items()}, backend=backend)
    assert torch.equal(out_subset.tokens, out.tokens[subset])
    assert torch.equal(out_subset.num_emitted, out.num_emitted[subset])


# Exactness: fixed probabilities repeated over EXACTNESS_ROWS rows with distinct seeds.
EXACTNESS_BACKEND = "cpp"
NUM_DRAFT = 3


def make_fixed_probs(regime, vocab, generator):
    """(draft [K, V], target [K+1, V]) probabilities, fp32."""
    target_logits = random_logits((NUM_DRAFT + 1, vocab), generator, scale=1.5)
    if regime == "residual":  # an unrelated draft: rejections are common
        draft_logits = random_logits((NUM_DRAFT, vocab), generator, scale=1.0)
    else:  # "bonus": a close draft, most rows emit the bonus token
        noise_scale = 0.3 if regime == "bonus" else 1.0
        draft_logits = target_logits[:NUM_DRAFT] + random_logits((NUM_DRAFT, vocab), generator, scale=noise_scale)
    if regime == "zeros":  # the target forbids a token the draft proposes, and the reverse
        target_logits[:, 1] = -torch.inf
        draft_logits[:, 2] = -torch.inf
    return torch.softmax(draft_logits, -1), torch.softmax(target_logits, -1)


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["residual", "bonus", "zeros"])
@pytest.mark.parametrize("vocab", [6, 7])
def test_tokens_follow_the_target_exactly(vocab, regime, generator):
    draft, target = make_fixed_probs(regime, vocab, generator)
    draft_tokens = draw_drafts(draft, EXACTNESS_ROWS, generator)
    out = ops.speculative_verify_probs(
        draft_tokens, draft.expand(EXACTNESS_ROWS, -1, -1), target.expand(EXACTNESS_ROWS, -1, -1),
        seeds=torch.arange(EXACTNESS_ROWS, dtype=torch.int64),
        positions=torch.randint(0, 2**40, (EXACTNESS_ROWS,), generator=generator), backend=EXACTNESS_BACKEND)
    assert_exact(out, draft.double(), target.double(), f"probs {regime} V={vocab}")
