"""specalign.ops.sample_with_stats: the tokens of sample bit for bit on every backend, and the
statistics of softmax(logits) (token log-probability, entropy, self-certainty) to float rounding."""
import math

import pytest
import torch
from helpers import FLOAT_DTYPES

from specalign import ops
from test_sample import make_sample_inputs

CPP_SHAPES = [(1, 1000), (7, 257), (64, 4096), (3, 1)]
TRITON_SHAPES = [(1, 257), (4, 300)]


def exact_stats(logits, tokens):
    """float64 statistics straight from the definitions, over the finite logits."""
    log_p = torch.log_softmax(logits.double(), -1)
    support = log_p > -torch.inf
    p = log_p.exp()
    entropy = -(p * log_p.masked_fill(~support, 0)).sum(-1)
    certainty = torch.tensor([-math.log(int(s.sum())) - float(row[s].mean()) for row, s in zip(log_p, support)],
                             dtype=torch.float64)
    return log_p.gather(1, tokens[:, None]).squeeze(1), entropy, certainty


def check_backend(backend, batch, vocab, dtype, with_neg_inf, generator, **launch):
    logits, seeds, positions = make_sample_inputs(batch, vocab, dtype, with_neg_inf, generator)
    out = ops.sample_with_stats(logits, seeds=seeds, positions=positions, backend=backend)
    assert torch.equal(out.tokens, ops.sample(logits, seeds=seeds, positions=positions, backend="reference"))
    for name, value, expected in zip(("log_prob", "entropy", "certainty"), out[1:], exact_stats(logits, out.tokens)):
        assert value.dtype == torch.float32 and value.shape == (batch,), name
        torch.testing.assert_close(value.double(), expected, rtol=2e-5, atol=2e-5, msg=name)


@pytest.mark.parametrize("with_neg_inf", [False, True], ids=["finite", "neg_inf"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch, vocab", CPP_SHAPES)
def test_cpp_matches_sample_and_the_definitions(batch, vocab, dtype, with_neg_inf, generator):
    check_backend("cpp", batch, vocab, dtype, with_neg_inf, generator)


@pytest.mark.parametrize("with_neg_inf", [False, True], ids=["finite", "neg_inf"])
@pytest.mark.parametrize("batch, vocab", CPP_SHAPES[:2])
def test_reference_matches_sample_and_the_definitions(batch, vocab, with_neg_inf, generator):
    check_backend("reference", batch, vocab, torch.float32, with_neg_inf, generator)


@pytest.mark.parametrize("dtype, with_neg_inf", [(torch.float32, True), (torch.bfloat16, False), (torch.float16, True)])
@pytest.mark.parametrize("batch, vocab", TRITON_SHAPES)
def test_triton_matches_sample_and_the_definitions(batch, vocab, dtype, with_neg_inf, generator):
    check_backend("triton", batch, vocab, dtype, with_neg_inf, generator)


def test_triton_vocab_splits_merge_exactly(generator):
    """Many splits of one row (one block each, some all -inf): the merged moments are the row's."""
    logits, seeds, positions = make_sample_inputs(2, 600, torch.float32, True, generator)
    logits[:, 64:200] = -torch.inf
    from specalign.triton_kernels.sample_with_stats import sample_with_stats

    split = sample_with_stats(logits, seeds, positions, block_size=64, num_splits=10)
    whole = ops.sample_with_stats(logits, seeds=seeds, positions=positions, backend="reference")
    assert torch.equal(split[0], whole.tokens)
    for value, expected in zip(split[1:4], whole[1:]):
        torch.testing.assert_close(value, expected, rtol=2e-5, atol=2e-5)


def test_known_values():
    """Uniform over 4 of 8 tokens: entropy log 4, certainty 0; a peaked row: certainty > 0."""
    logits = torch.tensor([[0.0] * 4 + [-math.inf] * 4, [5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    for backend in ("reference", "cpp"):
        out = ops.sample_with_stats(logits, seeds=torch.tensor([1, 2]), positions=torch.tensor([0, 0]), backend=backend)
        assert int(out.tokens[0]) < 4
        torch.testing.assert_close(out.entropy[0], torch.tensor(math.log(4)))
        torch.testing.assert_close(out.log_prob[0], torch.tensor(-math.log(4)))
        torch.testing.assert_close(out.certainty[0], torch.tensor(0.0))
        assert float(out.certainty[1]) > 1.0 and float(out.entropy[1]) < 0.5


def test_large_logits_keep_the_statistics_finite(generator):
    """An offset of 1e4 on every logit changes no statistic (the moments are taken about the max)."""
    logits, seeds, positions = make_sample_inputs(4, 3000, torch.float32, True, generator)
    base = ops.sample_with_stats(logits, seeds=seeds, positions=positions, backend="cpp")
    shifted = ops.sample_with_stats(logits + 1e4, seeds=seeds, positions=positions, backend="cpp")
    for value, expected in zip(shifted[1:], base[1:]):
        torch.testing.assert_close(value, expected, rtol=0, atol=2e-2)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_empty_batch(backend, generator):
    logits, seeds, positions = make_sample_inputs(0, 50, torch.float32, False, generator)
    out = ops.sample_with_stats(logits, seeds=seeds, positions=positions, backend=backend)
    assert out.tokens.shape == (0,) and out.entropy.shape == (0,)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compiles_to_the_eager_result_and_passes_opcheck(dynamic, generator):
    torch._dynamo.reset()
    logits, seeds, positions = make_sample_inputs(3, 40, torch.float32, True, generator)

    def draw(logits, seeds, positions):
        return tuple(ops.sample_with_stats(logits, seeds=seeds, positions=positions, check_values=False))

    compiled = torch.compile(draw, fullgraph=True, dynamic=dynamic, backend="aot_eager")(logits, seeds, positions)
    for value, expected in zip(compiled, draw(logits, seeds, positions)):
        assert torch.equal(value, expected)
    torch.library.opcheck(torch.ops.specalign.sample_with_stats.default, (logits, seeds, positions))
