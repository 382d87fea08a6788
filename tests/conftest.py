"""Shared set-up of the specalign tests: Triton in interpreter mode, random inputs, a chi-square test."""
import os

# Before anything imports triton or specalign: Triton kernels then run on CPU tensors (slowly).
# TRITON_INTERPRET=0 (set by bench/gpu_run.sh for tests/test_cuda.py) keeps the compiled kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def pytest_make_parametrize_id(config, val, argname):
    """Readable test ids: ``float32`` rather than ``dtype0``, ``3x3x300`` for a shape."""
    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    if isinstance(val, tuple) and all(isinstance(v, int) for v in val):
        return "x".join(map(str, val))
    return None

# Bins whose expected count is below this are pooled into one bin before the chi-square test.
MIN_EXPECTED_COUNT = 5.0
# A chi-square p-value below this fails a goodness-of-fit assertion.
SIGNIFICANCE = 1e-3


@pytest.fixture(scope="module")
def one_thread():
    """For modules that decode tiny models: all per-op overhead, so a second thread only adds
    contention on a busy 2-core machine (20x slower seen). Use with ``pytestmark``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def generator():
    """A fresh, seeded generator per test: every test sees the same inputs on every run."""
    return torch.Generator().manual_seed(20240601)


def random_logits(shape, generator, dtype=torch.float32, scale=2.0):
    """Normal logits times ``scale`` (larger scale: more peaked distributions), cast to ``dtype``."""
    return (torch.randn(shape, generator=generator) * scale).to(dtype)


def random_seeds(batch, generator):
    """int64 seeds over the whole int64 range, negative ones included (both key words vary)."""
    return torch.randint(-(2**63), 2**63 - 1, (batch,), generator=generator, dtype=torch.int64)


def random_positions(batch, generator, span=8):
    """int64 positions >= 0: small ones, and ones whose next ``span`` steps cross 2**32 (high word)."""
    small = torch.randint(0, 4096, (batch,), generator=generator)
    crossing = 2**32 - torch.randint(1, span, (batch,), generator=generator)
    return torch.where(torch.rand(batch, generator=generator) < 0.5, small, crossing)


def draw_from_logits(logits, generator):
    """One token per row of ``logits [..., V]`` from softmax, with torch's own generator.

    Used to draft tokens: a stream independent of every specalign noise stream.
    """
    probs = torch.softmax(logits.double(), dim=-1)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:-1])


def chi_square_p_value(samples, probs):
    """p-value of Pearson's chi-square test that ``samples`` (token ids) were drawn from ``probs [V]``.

    Bins expected to hold fewer than ``MIN_EXPECTED_COUNT`` samples are pooled; a sample on a token
    of probability zero, or outside ``[0, V)``, gives p = 0.
    """
    probs = probs.double() / probs.double().sum()
    vocab = probs.numel()
    if samples.numel() == 0:
        raise ValueError("no samples to test")
    if int(samples.min()) < 0 or int(samples.max()) >= vocab:
        return 0.0
    observed = torch.bincount(samples, minlength=vocab).double()
    expected = probs * samples.numel()
    if bool((observed[expected == 0] > 0).any()):
        return 0.0
    large = expected >= MIN_EXPECTED_COUNT
    observed_bins = [observed[large]]
    expected_bins = [expected[large]]
    if bool((~large & (expected > 0)).any()):
        observed_bins.append(observed[~large].sum(0, keepdim=True))
        expected_bins.append(expected[~large].sum(0, keepdim=True))
    observed, expected = torch.cat(observed_bins), torch.cat(expected_bins)
    degrees_of_freedom = observed.numel() - 1
    if degrees_of_freedom == 0:  # a single possible outcome: the sample check above is the whole test
        return 1.0
    statistic = ((observed - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor(degrees_of_freedom / 2, dtype=torch.float64), statistic / 2))


def assert_follows(samples, probs, what):
    """Assert by a chi-square test (p > ``SIGNIFICANCE``) that ``samples`` follow ``probs``."""
    p_value = chi_square_p_value(samples, probs)
    print(f"{what}: {samples.numel()} samples, chi-square p-value {p_value:.3g}")
    assert p_value > SIGNIFICANCE, f"{what} do not follow the expected distribution (p = {p_value:.3g})"


def keep_top_k(logits, k):
    """Top-k truncation: every logit below the k-th largest of its row becomes -inf."""
    threshold = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, -torch.inf)


def assert_same_output(out, expected):
    """Two VerifyOutputs are identical, token for token."""
    assert torch.equal(out.num_accepted, expected.num_accepted)
    assert torch.equal(out.num_emitted, expected.num_emitted)
    assert torch.equal(out.tokens, expected.tokens)


# Exactness tests repeat fixed distributions over EXACTNESS_ROWS rows with distinct seeds: enough to
# detect a total-variation error of 0.01 at V <= 8 (see test_sample.py, the chi-square power test).
EXACTNESS_ROWS = 300_000
MIN_ROWS_PER_POSITION = 10_000


def draw_drafts(proposals, rows, generator):
    """``[rows, K]`` draft tokens, column j drawn from ``proposals[j]`` with torch's own generator."""
    return torch.stack(
        [torch.multinomial(q.double(), rows, replacement=True, generator=generator) for q in proposals], dim=1)


def assert_exact(out, proposals, targets, label):
    """Verification over fixed distributions is exact.

    Given that drafts 0..j-1 were accepted, the token emitted at position j follows ``targets[j]``, and
    draft j is accepted with probability ``sum_v min(targets[j], proposals[j])`` (rows of
    ``proposals`` beyond ``K`` are not used). ``targets`` has a row per position that emits a token:
    ``K+1``, or ``K`` when no bonus token is drawn (then rows that accept all ``K`` drafts must emit
    nothing more).
    """
    num_draft = out.tokens.shape[1] - 1
    for j in range(num_draft + 1):
        reached = out.num_accepted >= j
        assert int(reached.sum()) >= MIN_ROWS_PER_POSITION, f"{label}: too few rows reach position {j}"
        if j == targets.shape[0]:
            assert bool((out.num_emitted[reached] == num_draft).all())
            assert bool((out.tokens[reached, j] == -1).all())
            continue
        assert_follows(out.tokens[reached, j], targets[j], f"{label}: tokens at position {j}")
        if j < num_draft:
            acceptance = torch.minimum(targets[j], proposals[j]).sum()
            accepted = (out.num_accepted[reached] > j).long()
            assert_follows(accepted, torch.stack([1 - acceptance, acceptance]), f"{label}: acceptances at {j}")
