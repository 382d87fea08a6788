"""specalign.ops.speculative_verify: every backend gives the reference's tokens, and the tokens follow
the exact target distribution (standard mode: p; SSS: norm(pi_ref * pi_r / pi_d))."""
import pytest
import torch

from helpers import (
    EXACTNESS_ROWS,
    FLOAT_DTYPES,
    SIGNIFICANCE,
    assert_exact,
    assert_follows,
    assert_same_output,
    chi_square_p_value,
    draw_drafts,
    draw_from_logits,
    keep_top_k,
    random_logits,
    random_positions,
    random_seeds,
)
from specalign import ops

CASES = (
    "random",
    "all_accepted",  # the (shifted) target equals the proposal at every draft position
    "all_rejected",  # the target forbids (-inf) every drafted token
    "zero_proposal",  # the draft's own logit of every drafted token is -inf (q = 0: a rejection)
    "neg_inf",  # a top-k truncated target, drafts with forbidden tokens
)
MODES = (
    "standard",
    "sss",  # ref_logits given, drafts' logits have K rows: no bonus token
    "sss_bonus",  # ref_logits given, drafts' logits have K+1 rows
)
CPP_SHAPES = [(1, 1, 1000), (4, 3, 257), (16, 5, 1000)]  # (B, K, V)
TRITON_CASES = [((3, 3, 300), dtype, case, mode) for dtype in FLOAT_DTYPES for case in CASES for mode in MODES] + [
    ((1, 1, 257), torch.float32, case, mode) for case in ("random", "neg_inf") for mode in MODES
]


def make_verify_inputs(batch, num_draft, vocab, dtype, case, mode, generator):
    """Keyword arguments of speculative_verify for one of CASES in one of MODES."""
    sss = mode != "standard"
    draft_rows = num_draft + 1 if mode == "sss_bonus" else num_draft
    target = random_logits((batch, num_draft + 1, vocab), generator)
    draft = random_logits((batch, draft_rows, vocab), generator)
    ref = random_logits((batch, draft_rows, vocab), generator) if sss else None
    if case == "all_accepted":
        if sss:  # target + draft - ref == draft
            target[:, :draft_rows] = ref
        else:
            draft = target[:, :num_draft].clone()
    if case == "neg_inf":
        target = keep_top_k(target, vocab // 4)
        forbidden = torch.rand(draft.shape, generator=generator) < 0.3
        forbidden[..., 0] = False
        draft = draft.masked_fill(forbidden, -torch.inf)
        if sss:  # pi_d may be zero only where pi_r is
            ref = ref.masked_fill(forbidden, -torch.inf)
    target, draft = target.to(dtype), draft.to(dtype)
    ref = None if ref is None else ref.to(dtype)
    draft_tokens = draw_from_logits(draft[:, :num_draft].float(), generator)
    if case == "all_rejected":
        target[:, :num_draft].scatter_(-1, draft_tokens.unsqueeze(-1), -torch.inf)
    if case == "zero_proposal":
        draft[:, :num_draft].scatter_(-1, draft_tokens.unsqueeze(-1), -torch.inf)
    return dict(draft_tokens=draft_tokens, draft_logits=draft, target_logits=target, ref_logits=ref,
                seeds=random_seeds(batch, generator), positions=random_positions(batch, generator))


def run_reference(inputs):
    return ops.speculative_verify(**inputs, backend="reference")


def check_output_contract(out, inputs, case):
    """What every output must satisfy, whatever the random numbers."""
    draft_tokens, draft, target, ref = (inputs[k] for k in ("draft_tokens", "draft_logits", "target_logits", "ref_logits"))
    batch, num_draft = draft_tokens.shape
    assert out.tokens.dtype == out.num_accepted.dtype == out.num_emitted.dtype == torch.int64
    assert out.tokens.shape == (batch, num_draft + 1)
    assert out.num_accepted.shape == out.num_emitted.shape == (batch,)
    has_bonus = ref is None or draft.shape[1] == num_draft + 1
    all_accepted = out.num_accepted == num_draft
    assert bool(((out.num_accepted >= 0) & (out.num_accepted <= num_draft)).all())
    expected_emitted = torch.where(all_accepted & (not has_bonus), out.num_accepted, out.num_accepted + 1)
    assert torch.equal(out.num_emitted, expected_emitted)
    steps = torch.arange(num_draft + 1)
    accepted_slots = steps[:num_draft] < out.num_accepted[:, None]
    assert torch.equal(out.tokens[:, :num_draft][accepted_slots], draft_tokens.long()[accepted_slots])
    assert bool((out.tokens[steps >= out.num_emitted[:, None]] == -1).all())
    shifted = target.float() if ref is None else ops.shifted_target_logits(
        target[:, : draft.shape[1]].float(), draft.float(), ref.float())
    for b in range(batch):
        n = int(out.num_accepted[b])
        if int(out.num_emitted[b]) > n:
            assert shifted[b, n, out.tokens[b, n]] > -torch.inf, "emitted a token the target forbids"
    if case == "all_accepted":
        assert bool(all_accepted.all())
    if case in ("all_rejected", "zero_proposal"):
        assert bool((out.num_accepted == 0).all())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_reference_output_follows_the_contract(case, mode, generator):
    inputs = make_verify_inputs(6, 3, 200, torch.float32, case, mode, generator)
    check_output_contract(run_reference(inputs), inputs, case)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch, num_draft, vocab", CPP_SHAPES)
def test_cpp_matches_reference(batch, num_draft, vocab, dtype, case, mode, generator):
    inputs = make_verify_inputs(batch, num_draft, vocab, dtype, case, mode, generator)
    out = ops.speculative_verify(**inputs, backend="cpp")
    check_output_contract(out, inputs, case)
    assert_same_output(out, run_reference(inputs))


@pytest.mark.parametrize("shape, dtype, case, mode", TRITON_CASES)
def test_triton_matches_reference(shape, dtype, case, mode, generator):
    inputs = make_verify_inputs(*shape, dtype, case, mode, generator)
    out = ops.speculative_verify(**inputs, backend="triton")
    check_output_contract(out, inputs, case)
    assert_same_output(out, run_reference(inputs))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_int32_draft_tokens_give_the_int64_result(backend, generator):
    inputs = make_verify_inputs(3, 2, 300, torch.float32, "random", "sss_bonus", generator)
    expected = run_reference(inputs)
    inputs["draft_tokens"] = inputs["draft_tokens"].int()
    assert_same_output(ops.speculative_verify(**inputs, backend=backend), expected)


def test_default_backend_is_cpp_on_cpu(generator):
    inputs = make_verify_inputs(8, 4, 500, torch.float32, "neg_inf", "sss_bonus", generator)
    assert_same_output(ops.speculative_verify(**inputs), ops.speculative_verify(**inputs, backend="cpp"))


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_sss_with_ref_equal_to_draft_is_standard_mode(backend, generator):
    batch, num_draft, vocab = (4, 3, 300) if backend == "triton" else (32, 4, 700)
    target = random_logits((batch, num_draft + 1, vocab), generator)
    draft = target + random_logits((batch, num_draft + 1, vocab), generator, scale=0.3)  # close: many accept all
    # A truncated target; the drafts stay finite (SSS drafts are never truncated: docs/math.md).
    inputs = dict(draft_tokens=draw_from_logits(draft[:, :num_draft], generator), draft_logits=draft,
                  target_logits=keep_top_k(target, vocab // 2), seeds=random_seeds(batch, generator),
                  positions=random_positions(batch, generator))
    standard = ops.speculative_verify(**inputs, backend=backend)
    with_bonus_rows = ops.speculative_verify(**dict(inputs, ref_logits=inputs["draft_logits"]), backend=backend)
    assert_same_output(with_bonus_rows, standard)

    draft_rows = inputs["draft_logits"][:, :num_draft]
    without_bonus_rows = ops.speculative_verify(**dict(inputs, draft_logits=draft_rows, ref_logits=draft_rows), backend=backend)
    all_accepted = standard.num_accepted == num_draft
    assert 0 < int(all_accepted.sum()) < batch, "the case should mix full acceptance and rejections"
    assert torch.equal(without_bonus_rows.num_accepted, standard.num_accepted)
    assert torch.equal(without_bonus_rows.num_emitted, standard.num_emitted - all_accepted.long())
    assert torch.equal(without_bonus_rows.tokens[~all_accepted], standard.tokens[~all_accepted])
    assert torch.equal(without_bonus_rows.tokens[all_accepted, :num_draft], standard.tokens[all_accepted, :num_draft])
    assert bool((without_bonus_rows.tokens[all_accepted, num_draft] == -1).all())


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_standard_mode_ignores_a_k_plus_1th_draft_row(backend, generator):
    inputs = make_verify_inputs(4, 2, 300, torch.float32, "neg_inf", "standard", generator)
    with_extra_row = torch.cat([inputs["draft_logits"], random_logits((4, 1, 300), generator)], dim=1)
    assert_same_output(ops.speculative_verify(**dict(inputs, draft_logits=with_extra_row), backend=backend),
                       ops.speculative_verify(**inputs, backend=backend))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_empty_batch(backend, mode, generator):
    inputs = make_verify_inputs(0, 2, 50, torch.float32, "random", mode, generator)
    out = ops.speculative_verify(**inputs, backend=backend)
    assert out.tokens.shape == (0, 3) and out.num_accepted.shape == out.num_emitted.shape == (0,)
    assert out.tokens.dtype == out.num_accepted.dtype == out.num_emitted.dtype == torch.int64


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_rows_do_not_depend_on_the_rest_of_the_batch(backend, generator):
    shape = (4, 3, 300) if backend == "triton" else (24, 3, 500)
    inputs = make_verify_inputs(*shape, torch.float32, "random", "sss_bonus", generator)
    out = ops.speculative_verify(**inputs, backend=backend)
    subset = torch.randperm(shape[0], generator=generator)[: shape[0] // 2]
    out_subset = ops.speculative_verify(**{k: None if v is None else v[subset] for k, v in inputs.items()}, backend=backend)
    assert torch.equal(out_subset.tokens, out.tokens[subset])
    assert torch.equal(out_subset.num_emitted, out.num_emitted[subset])


def test_cpp_repeats_itself_on_a_large_batch(generator):
    """Same seeds, same tokens: the multi-threaded kernel has no order-dependent state."""
    inputs = make_verify_inputs(2048, 4, 300, torch.float32, "neg_inf", "sss_bonus", generator)
    assert_same_output(ops.speculative_verify(**inputs, backend="cpp"), ops.speculative_verify(**inputs, backend="cpp"))


LARGE_BATCH = 200_000
MAX_MISMATCH_RATE = 2e-5


@pytest.mark.slow
def test_cpp_float_boundary_mismatch_rate(generator):
    """On a large batch C++ and the reference may disagree only where float rounding decides."""
    num_draft, vocab = 3, 256
    target = random_logits((LARGE_BATCH, num_draft + 1, vocab), generator, scale=3.0)
    draft = target[:, :num_draft] + random_logits((LARGE_BATCH, num_draft, vocab), generator, scale=1.0)
    inputs = dict(draft_tokens=draw_from_logits(draft, generator), draft_logits=draft, target_logits=target,
                  seeds=random_seeds(LARGE_BATCH, generator), positions=random_positions(LARGE_BATCH, generator))
    out = ops.speculative_verify(**inputs, backend="cpp")
    expected = run_reference(inputs)
    mismatched = ((out.tokens != expected.tokens).any(-1) | (out.num_accepted != expected.num_accepted)
                  | (out.num_emitted != expected.num_emitted))
    mismatches = int(mismatched.sum())
    print(f"C++ vs reference: {mismatches} of {LARGE_BATCH} rows differ; mean accepted "
          f"{expected.num_accepted.float().mean():.2f} of {num_draft}")
    assert mismatches <= MAX_MISMATCH_RATE * LARGE_BATCH


# Exactness: fixed logits repeated over EXACTNESS_ROWS rows with distinct seeds, on the fast backend.
EXACTNESS_BACKEND = "cpp"
NUM_DRAFT = 3


def verify_fixed_logits(draft_logits, target_logits, ref_logits, generator):
    """speculative_verify over EXACTNESS_ROWS copies of the given ``[rows, V]`` logits.

    The drafts are drawn from softmax(draft_logits) by torch's generator, a stream independent of the
    verifier's (seed, position) noise.
    """
    draft_tokens = draw_drafts(torch.softmax(draft_logits[:NUM_DRAFT].double(), -1), EXACTNESS_ROWS, generator)

    def repeat(logits):
        return None if logits is None else logits.expand(EXACTNESS_ROWS, *logits.shape)

    return draft_tokens, ops.speculative_verify(
        draft_tokens, repeat(draft_logits), repeat(target_logits), repeat(ref_logits),
        seeds=torch.arange(EXACTNESS_ROWS, dtype=torch.int64),
        positions=torch.randint(0, 2**40, (EXACTNESS_ROWS,), generator=generator), backend=EXACTNESS_BACKEND)


def make_standard_logits(regime, vocab, generator):
    """(draft [K, V], target [K+1, V]) for a regime of standard speculative sampling."""
    target = random_logits((NUM_DRAFT + 1, vocab), generator, scale=1.5)
    if regime == "residual":  # an unrelated draft: rejections are common
        draft = random_logits((NUM_DRAFT, vocab), generator, scale=1.0)
    else:  # "bonus": a close draft, most rows accept every draft and emit the bonus token
        noise_scale = 0.3 if regime == "bonus" else 1.0
        draft = target[:NUM_DRAFT] + random_logits((NUM_DRAFT, vocab), generator, scale=noise_scale)
    if regime == "truncated":  # the target forbids a token the draft proposes, and the reverse
        target[:, 1] = -torch.inf
        draft[:, 2] = -torch.inf
    return draft, target


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["residual", "bonus", "truncated"])
@pytest.mark.parametrize("vocab", [5, 8])
def test_standard_mode_is_exact(vocab, regime, generator):
    draft, target = make_standard_logits(regime, vocab, generator)
    _, out = verify_fixed_logits(draft, target, None, generator)
    assert_exact(out, torch.softmax(draft.double(), -1), torch.softmax(target.double(), -1),
                 f"standard {regime} V={vocab}")


def make_sss_logits(z_regime, vocab, draft_rows, generator):
    """(draft = pi_r, target = pi_ref, ref = pi_d) logits with Z = sum_v pi_ref pi_r / pi_d far from 1.

    pi_r = pi_d * exp(reward) / const with rewards spread over [-2, 2]; the target is pi_d tilted
    towards high reward (Z > 1) or away from it (Z < 1), plus noise.
    """
    levels = torch.linspace(-2.0, 2.0, vocab)
    reward = torch.stack([levels[torch.randperm(vocab, generator=generator)] for _ in range(NUM_DRAFT + 1)])
    ref = random_logits((NUM_DRAFT + 1, vocab), generator, scale=0.5)
    tilt = 1.0 if z_regime == "high" else -1.0
    target = ref + tilt * reward + random_logits((NUM_DRAFT + 1, vocab), generator, scale=0.3)
    draft = ref + reward
    return draft[:draft_rows], target, ref[:draft_rows]


def shifted_target(draft, target, ref):
    """t = pi_ref * pi_r / pi_d over the drafts' rows, and its mass Z per row."""
    rows = draft.shape[0]
    t = torch.softmax(target[:rows].double(), -1) * torch.softmax(draft.double(), -1) / torch.softmax(ref.double(), -1)
    return t, t.sum(-1)


def assert_z_in_regime(z, z_regime):
    print(f"Z per position: {[round(float(v), 3) for v in z]}")
    assert bool((z < 0.8).all()) if z_regime == "low" else bool((z > 1.5).all())


@pytest.mark.slow
@pytest.mark.parametrize("with_bonus_rows", [True, False], ids=["bonus_rows", "no_bonus_rows"])
@pytest.mark.parametrize("z_regime", ["low", "high"])
@pytest.mark.parametrize("vocab", [6])
def test_sss_is_exact(vocab, z_regime, with_bonus_rows, generator):
    draft_rows = NUM_DRAFT + 1 if with_bonus_rows else NUM_DRAFT
    draft, target, ref = make_sss_logits(z_regime, vocab, draft_rows, generator)
    t, z = shifted_target(draft, target, ref)
    assert_z_in_regime(z, z_regime)
    _, out = verify_fixed_logits(draft, target, ref, generator)
    assert_exact(out, torch.softmax(draft.double(), -1), t / z[:, None],
                 f"SSS Z {z_regime} V={vocab} draft rows {draft_rows}")


def paper_sss_tokens(draft_tokens, pi_ref, pi_r, pi_d, generator):
    """The SSS paper's rule at one position, exact only when Z = 1: accept with min(1, pi_ref / pi_d),
    on rejection draw from norm(max(0, pi_r * (pi_ref / pi_d - 1)))."""
    ratio = pi_ref / pi_d
    accepted = torch.rand(draft_tokens.shape, generator=generator, dtype=torch.float64) < ratio[draft_tokens].clamp(max=1)
    residual = (pi_r * (ratio - 1)).clamp(min=0)
    resampled = torch.multinomial(residual, draft_tokens.numel(), replacement=True, generator=generator)
    return torch.where(accepted, draft_tokens, resampled)


@pytest.mark.slow
@pytest.mark.parametrize("z_regime", ["low", "high"])
def test_exactness_test_rejects_the_papers_sss_rule(z_regime, generator):
    """Negative control: on the same drafts, the paper's rule fails the test that ours passes."""
    vocab = 6
    draft, target, ref = make_sss_logits(z_regime, vocab, NUM_DRAFT, generator)
    t, z = shifted_target(draft, target, ref)
    assert_z_in_regime(z, z_regime)
    draft_tokens, out = verify_fixed_logits(draft, target, ref, generator)
    exact_first = t[0] / z[0]
    assert_follows(out.tokens[:, 0], exact_first, "our SSS, position 0")

    pi_ref, pi_r, pi_d = (torch.softmax(logits[0].double(), -1) for logits in (target, draft, ref))
    paper = paper_sss_tokens(draft_tokens[:, 0], pi_ref, pi_r, pi_d, generator)
    accepted_mass = torch.minimum(pi_r, pi_r * pi_ref / pi_d)
    residual = (pi_r * (pi_ref / pi_d - 1)).clamp(min=0)
    paper_distribution = accepted_mass + (1 - accepted_mass.sum()) * residual / residual.sum()
    print(f"paper's rule: total variation {0.5 * (paper_distribution - exact_first).abs().sum():.3f} from norm(t)")
    p_value = chi_square_p_value(paper, exact_first)
    print(f"paper's rule: chi-square p-value {p_value:.3g}")
    assert p_value < SIGNIFICANCE
