"""Helpers shared by the tests: random inputs, the chi-square goodness-of-fit test and the exactness
assertions built on it, and the tiny models and exact sequence distributions of the generate tests."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Bins whose expected count is below this are pooled into one bin before the chi-square test.
MIN_EXPECTED_COUNT = 5.0
# A chi-square p-value below this fails a goodness-of-fit assertion.
SIGNIFICANCE = 1e-3


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


# --- speculative sampling through generate: a tiny target and draft, exact sequence distributions ---
BACKEND = None
VOCAB = 10
BOS, EOS, PAD = 1, 2, 0
PROMPT = torch.tensor([[BOS, 5, 7]])
NEW_TOKENS = 3
SAMPLES = 100_000
SAMPLES_PER_CALL = 20_000


def tiny_llama(seed, vocab=VOCAB, hidden=16, scale=5.0, dtype=torch.float64):
    """A random tiny Llama; weights scaled up so that its next-token distributions are far from flat."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=2 * hidden, bos_token_id=BOS, eos_token_id=EOS)
    model = LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model


def processed_log_probs(logits, temperature=1.0, top_k=None):
    """log softmax after HF's temperature then top-k warpers, in float64."""
    logits = logits.double() / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    return logits.log_softmax(-1)


def all_continuations(vocab=VOCAB, length=NEW_TOKENS):
    return torch.cartesian_prod(*[torch.arange(vocab)] * length).view(-1, length)


@torch.no_grad()
def step_log_probs(model, prompt, continuations):
    """Logits ``[N, length, V]`` of ``model`` before each token of every continuation."""
    ids = torch.cat([prompt.expand(continuations.shape[0], -1), continuations[:, :-1]], dim=1)
    return model(ids).logits[:, -continuations.shape[1]:]


def canonical_codes(continuations, vocab=VOCAB):
    """One integer per continuation, with every token after the first EOS replaced by the pad id."""
    after_eos = (continuations == EOS).long().cumsum(-1) - (continuations == EOS).long() > 0
    canonical = continuations.masked_fill(after_eos, PAD)
    return (canonical * vocab ** torch.arange(canonical.shape[1] - 1, -1, -1)).sum(-1)


def exact_distribution(log_probs, continuations, vocab=VOCAB):
    """Probability of each canonical code, from per-step log-probabilities ``[N, length, V]``."""
    sequence_probs = log_probs.gather(-1, continuations.unsqueeze(-1)).squeeze(-1).sum(-1).exp()
    probs = torch.zeros(vocab ** continuations.shape[1], dtype=torch.float64)
    return probs.index_add_(0, canonical_codes(continuations, vocab), sequence_probs)


def sample_codes(target, make_generator, generate_kwargs, samples=SAMPLES, per_call=SAMPLES_PER_CALL, seed_offset=0):
    """Draw ``samples`` continuations through ``target.generate`` and return their canonical codes."""
    codes = []
    for start in range(0, samples, per_call):
        seeds = torch.arange(start, start + per_call) + seed_offset
        out = target.generate(input_ids=PROMPT.expand(per_call, -1), custom_generate=make_generator(seeds),
                              do_sample=True, max_new_tokens=NEW_TOKENS, pad_token_id=PAD, **generate_kwargs)
        new = out[:, PROMPT.shape[1]:]
        new = torch.nn.functional.pad(new, (0, NEW_TOKENS - new.shape[1]), value=PAD)
        codes.append(canonical_codes(new))
    return torch.cat(codes)


PROCESSING = [pytest.param({}, id="plain"), pytest.param({"temperature": 0.7, "top_k": 4}, id="temperature-top_k")]


def prompts_with_left_padding():
    ids = torch.tensor([[BOS, 3, 4, 5, 6, 7], [PAD, PAD, BOS, 8, 9, 3], [PAD, PAD, PAD, PAD, BOS, 4]])
    return ids, (torch.arange(ids.shape[1]) >= (ids == PAD).sum(1, keepdim=True)).long()
