"""specalign.ops.sample: backends agree token for token, tokens follow softmax, rows are independent."""
import pytest
import torch

from helpers import (
    FLOAT_DTYPES,
    SIGNIFICANCE,
    assert_follows,
    chi_square_p_value,
    random_logits,
    random_positions,
    random_seeds,
)
from specalign import ops

CPP_SHAPES = [(1, 1000), (7, 257), (64, 4096), (3, 1)]
TRITON_SHAPES = [(1, 257), (4, 300)]


def make_sample_inputs(batch, vocab, dtype, with_neg_inf, generator):
    logits = random_logits((batch, vocab), generator, scale=3.0)
    if with_neg_inf and vocab > 1:
        forbidden = torch.rand(batch, vocab, generator=generator) < 0.5
        forbidden[:, 0] = False  # never a whole row
        logits = logits.masked_fill(forbidden, -torch.inf)
    return logits.to(dtype), random_seeds(batch, generator), random_positions(batch, generator)


def check_against_reference(backend, batch, vocab, dtype, with_neg_inf, generator):
    logits, seeds, positions = make_sample_inputs(batch, vocab, dtype, with_neg_inf, generator)
    tokens = ops.sample(logits, seeds=seeds, positions=positions, backend=backend)
    expected = ops.sample(logits, seeds=seeds, positions=positions, backend="reference")
    assert tokens.dtype == torch.int64 and tokens.shape == (batch,)
    assert torch.equal(tokens, expected)
    assert bool((logits.gather(1, tokens[:, None]) > -torch.inf).all())


@pytest.mark.parametrize("with_neg_inf", [False, True], ids=["finite", "neg_inf"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch, vocab", CPP_SHAPES)
def test_cpp_matches_reference(batch, vocab, dtype, with_neg_inf, generator):
    check_against_reference("cpp", batch, vocab, dtype, with_neg_inf, generator)


@pytest.mark.parametrize("dtype, with_neg_inf", [(torch.float32, True), (torch.bfloat16, False), (torch.float16, True)])
@pytest.mark.parametrize("batch, vocab", TRITON_SHAPES)
def test_triton_matches_reference(batch, vocab, dtype, with_neg_inf, generator):
    check_against_reference("triton", batch, vocab, dtype, with_neg_inf, generator)


def test_default_backend_is_cpp_on_cpu(generator):
    logits, seeds, positions = make_sample_inputs(16, 500, torch.float32, True, generator)
    assert torch.equal(ops.sample(logits, seeds=seeds, positions=positions),
                       ops.sample(logits, seeds=seeds, positions=positions, backend="cpp"))


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_row_token_does_not_depend_on_the_rest_of_the_batch(backend, generator):
    batch, vocab = (4, 300) if backend == "triton" else (48, 1000)
    logits, seeds, positions = make_sample_inputs(batch, vocab, torch.float32, True, generator)
    tokens = ops.sample(logits, seeds=seeds, positions=positions, backend=backend)
    permutation = torch.randperm(batch, generator=generator)
    permuted = ops.sample(logits[permutation], seeds=seeds[permutation], positions=positions[permutation], backend=backend)
    assert torch.equal(permuted, tokens[permutation])
    subset = permutation[: batch // 2 - 1]
    alone = ops.sample(logits[subset], seeds=seeds[subset], positions=positions[subset], backend=backend)
    assert torch.equal(alone, tokens[subset])


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_empty_batch(backend, generator):
    logits, seeds, positions = make_sample_inputs(0, 50, torch.float32, False, generator)
    tokens = ops.sample(logits, seeds=seeds, positions=positions, backend=backend)
    assert tokens.shape == (0,) and tokens.dtype == torch.int64


def test_position_selects_the_noise(generator):
    """One seed, same logits, consecutive positions: the draws vary (the position keys the noise)."""
    vocab = 50
    logits = torch.zeros(200, vocab)
    seeds = torch.full((200,), 42)
    tokens = ops.sample(logits, seeds=seeds, positions=torch.arange(200), backend="reference")
    assert tokens.unique().numel() > vocab // 2


SAMPLES = 200_000


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [5, 8])
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_tokens_follow_softmax(backend, vocab, dtype, generator):
    logits = random_logits((vocab,), generator, dtype=dtype, scale=1.5)
    logits[vocab // 2] = -torch.inf
    probs = torch.softmax(logits.double(), dim=-1)  # of the logits as given, in their dtype
    seeds = torch.arange(SAMPLES, dtype=torch.int64)
    positions = torch.randint(0, 2**40, (SAMPLES,), generator=generator)
    tokens = ops.sample(logits.expand(SAMPLES, vocab), seeds=seeds, positions=positions, backend=backend)
    assert_follows(tokens, probs, f"sample ({backend}, V={vocab}, {dtype})")


@pytest.mark.parametrize("vocab", [5, 8])
def test_chi_square_detects_one_percent_total_variation(vocab, generator):
    """The power behind the exactness tests: SAMPLES draws 0.01 TV away from probs are rejected.

    The mass moves between the two likeliest tokens, where a shift is hardest to see.
    """
    probs = torch.softmax(random_logits((vocab,), generator, scale=1.5).double(), dim=-1)
    first, second = probs.topk(2).indices
    shifted = probs.clone()
    shifted[first] -= 0.01
    shifted[second] += 0.01
    tokens = torch.multinomial(shifted, SAMPLES, replacement=True, generator=generator)
    assert chi_square_p_value(tokens, probs) < SIGNIFICANCE
    assert chi_square_p_value(torch.multinomial(probs, SAMPLES, replacement=True, generator=generator), probs) > SIGNIFICANCE
