"""specalign.value_checks: the kernels' own value checks agree across backends flag for flag, cover
exactly what the ops read, and leave nothing out of bounds when the checks are off."""
import pytest
import torch
from helpers import assert_same_output, draw_from_logits, random_logits, random_positions, random_seeds

from specalign import _library, ops, value_checks

BACKENDS = ["reference", "cpp", "triton"]
B, K, V = 6, 3, 40


def verify_inputs(generator, sss=False):
    target = random_logits((B, K + 1, V), generator)
    draft = random_logits((B, K + 1 if sss else K, V), generator)
    return dict(draft_tokens=draw_from_logits(draft[:, :K], generator), draft_logits=draft, target_logits=target,
                ref_logits=random_logits((B, K + 1, V), generator) if sss else None,
                seeds=random_seeds(B, generator), positions=random_positions(B, generator))


def accepting_inputs(generator, sss):
    """Drafts whose distribution is the (shifted) target's: every draft is accepted, so every row is read
    (up to a row a bad value makes the request reject at)."""
    inputs = verify_inputs(generator, sss)
    if sss:  # target == ref: the shifted target is the draft
        inputs["target_logits"] = inputs["ref_logits"].clone()
    else:
        inputs["draft_logits"] = inputs["target_logits"][:, :K].clone()
    return inputs


def raw_status(name, backend, *args):
    """The status the op's kernel returns on ``backend`` (the last output)."""
    return int(_library.call(name, backend, torch.device("cpu"), *args)[-1])


def verify_status(backend, inputs):
    keys = ("draft_tokens", "draft_logits", "target_logits", "ref_logits", "seeds", "positions")
    return raw_status("speculative_verify", backend, *(inputs[k] for k in keys))


def test_every_verify_flag_on_every_backend(generator):
    """One problem per request, each in a row the verification reads."""
    x = accepting_inputs(generator, sss=False)
    x["draft_logits"][0, 1, 5] = torch.nan
    x["target_logits"][1, 0, 7] = torch.inf
    x["target_logits"][2, K] = -torch.inf  # the bonus row
    x["draft_tokens"][3, 2] = V
    x["positions"][3] = -2
    x["draft_logits"][4, 2] = -torch.inf
    expected = (value_checks.DRAFT_NOT_FINITE | value_checks.TARGET_NOT_FINITE | value_checks.TARGET_EMPTY_ROW
                | value_checks.DRAFT_TOKEN_OUT_OF_RANGE | value_checks.NEGATIVE_POSITION | value_checks.DRAFT_EMPTY_ROW)
    assert {backend: verify_status(backend, x) for backend in BACKENDS} == dict.fromkeys(BACKENDS, expected)


def test_every_sss_flag_on_every_backend(generator):
    x = accepting_inputs(generator, sss=True)
    x["ref_logits"][0, 1, 3] = torch.nan
    x["ref_logits"][1, 0, 2] = -torch.inf
    x["draft_logits"][2, 1, :6] = -torch.inf  # the drafts share no token with the target at position 1
    x["ref_logits"][2, 1, :6] = -torch.inf
    x["target_logits"][2, 1, 6:] = -torch.inf
    x["draft_logits"][3, K, 0] = torch.nan  # the bonus row
    x["target_logits"][4, 2, 1] = torch.inf
    expected = (value_checks.REF_NOT_FINITE | value_checks.REF_ZERO_WHERE_DRAFT_IS_NOT | value_checks.TARGET_EMPTY_ROW
                | value_checks.DRAFT_NOT_FINITE | value_checks.TARGET_NOT_FINITE)
    assert {backend: verify_status(backend, x) for backend in BACKENDS} == dict.fromkeys(BACKENDS, expected)


def test_every_probs_and_sample_flag_on_every_backend(generator):
    x = accepting_inputs(generator, sss=False)
    p = torch.softmax(x["target_logits"], -1)
    q = p[:, :K].clone()
    tokens, positions = x["draft_tokens"], x["positions"]
    q[0, 0, tokens[0, 0]] = -0.1
    q[1, 1] = 0.0
    p[2, 0, tokens[2, 0]] = torch.nan
    p[3, K] = 0.0  # the bonus row
    tokens[4, 0] = V
    positions[4] = -1
    expected = (value_checks.DRAFT_NOT_FINITE | value_checks.DRAFT_EMPTY_ROW | value_checks.TARGET_NOT_FINITE
                | value_checks.TARGET_EMPTY_ROW | value_checks.DRAFT_TOKEN_OUT_OF_RANGE | value_checks.NEGATIVE_POSITION)
    statuses = {backend: raw_status("speculative_verify_probs", backend, tokens, q, p, x["seeds"], positions)
                for backend in BACKENDS}
    assert statuses == dict.fromkeys(BACKENDS, expected)

    logits = x["target_logits"][:, 0].contiguous()
    logits[0, 3] = torch.nan
    logits[1] = -torch.inf
    expected = value_checks.TARGET_NOT_FINITE | value_checks.TARGET_EMPTY_ROW | value_checks.NEGATIVE_POSITION
    for op in ("sample", "sample_with_stats"):
        statuses = {backend: raw_status(op, backend, logits, x["seeds"], positions) for backend in BACKENDS}
        assert statuses == dict.fromkeys(BACKENDS, expected), op


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_inputs_report_nothing(backend, generator):
    inputs = verify_inputs(generator, sss=True)
    inputs["draft_logits"][:, :, :5] = -torch.inf  # tokens both drafts forbid are valid
    inputs["ref_logits"][:, :, :5] = -torch.inf
    inputs["target_logits"][:, :, 5:9] = -torch.inf
    args = tuple(inputs[k] for k in ("draft_tokens", "draft_logits", "target_logits", "ref_logits", "seeds", "positions"))
    assert raw_status("speculative_verify", backend, *args) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_draft_ids_without_checks_are_rejected(backend, generator):
    """check_values=False: an id outside [0, V) is never read nor emitted; it counts as a rejection."""
    inputs = accepting_inputs(generator, sss=False)
    inputs["draft_tokens"][0, 0] = V
    inputs["draft_tokens"][1, 1] = -1
    inputs["draft_tokens"][2, 2] = 2**40
    out = ops.speculative_verify(**inputs, backend=backend, check_values=False)
    assert out.num_accepted.tolist() == [0, 1, 2] + [K] * (B - 3)
    assert bool(((out.tokens >= 0) & (out.tokens < V) | (out.tokens == -1)).all())
    assert_same_output(out, ops.speculative_verify(**inputs, backend="reference", check_values=False))
    probs = ops.speculative_verify_probs(inputs["draft_tokens"], torch.softmax(inputs["draft_logits"], -1),
                                         torch.softmax(inputs["target_logits"], -1), seeds=inputs["seeds"],
                                         positions=inputs["positions"], backend=backend, check_values=False)
    assert probs.num_accepted.tolist() == [0, 1, 2] + [K] * (B - 3)
    assert bool(((probs.tokens >= 0) & (probs.tokens < V) | (probs.tokens == -1)).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_after_the_first_rejection_are_not_read(backend, generator):
    """A NaN in a row no request reaches changes nothing and is not reported: the checks cover what the
    result depends on."""
    inputs = verify_inputs(generator)
    drafted = inputs["draft_tokens"][:, 0:1]
    inputs["target_logits"][:, 0].scatter_(-1, drafted, -torch.inf)  # every request rejects its first draft
    expected = ops.speculative_verify(**inputs, backend=backend)
    assert bool((expected.num_accepted == 0).all())
    corrupted = dict(inputs, target_logits=inputs["target_logits"].clone(), draft_logits=inputs["draft_logits"].clone())
    corrupted["target_logits"][:, 1:] = torch.nan
    corrupted["draft_logits"][:, 1:] = torch.inf
    assert_same_output(ops.speculative_verify(**corrupted, backend=backend), expected)
