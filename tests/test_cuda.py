"""The ops and the generate methods on CUDA with the compiled Triton kernels: tokens, counts and
buffers bit-identical to the reference and to the C++ backend run on CPU copies of the same inputs.

Needs a CUDA device and compiled Triton kernels, so the Triton interpreter must be off (the suite's
conftest turns it on unless ``TRITON_INTERPRET`` is already set)::

    TRITON_INTERPRET=0 python -m pytest tests/test_cuda.py     # bench/gpu_run.sh runs this

Skipped otherwise. Besides the CPU suite's small shapes, the real ones (V = 128256, K = 8, B = 256):
there the vocab-split grids differ from one batch size to another, which must never change a token.
"""
import copy
import os

import pytest
import test_compact_columns as columns_tests
import test_compact_rows as rows_tests
import test_fork_rows as fork_tests
import test_sample as sample_tests
import test_sample_with_stats as stats_tests
import test_speculative_rejection as spr_tests
import test_speculative_sampling as sps_tests
import test_speculative_verify as verify_tests
import test_speculative_verify_probs as probs_tests
import torch
from helpers import assert_same_output
from transformers import LlamaConfig, LlamaForSequenceClassification

from specalign import RewardModel, RewardShiftedSpeculativeSampling, SpeculativeRejection, SpeculativeSampling, ops
from specalign import speculative_rejection

CUDA = torch.device("cuda")
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="the Triton interpreter is on: set TRITON_INTERPRET=0 to test the compiled kernels"),
]
REAL_VOCAB = 128256


def on(device, inputs: dict) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def on_cpu(out) -> ops.VerifyOutput:
    return ops.VerifyOutput(*(t.cpu() for t in out))


def assert_verify_matches(op, inputs: dict) -> ops.VerifyOutput:
    """``op`` on CUDA, by dispatch and by ``backend='triton'``, gives the reference's and the C++
    backend's outputs on the CPU inputs; returns the CUDA output, on the CPU."""
    cuda_inputs = on(CUDA, inputs)
    dispatched = op(**cuda_inputs)
    assert dispatched.tokens.device.type == "cuda"
    dispatched = on_cpu(dispatched)
    assert_same_output(dispatched, op(**inputs, backend="reference"))
    assert_same_output(dispatched, op(**inputs, backend="cpp"))
    assert_same_output(on_cpu(op(**cuda_inputs, backend="triton")), dispatched)
    return dispatched


# --- speculative_verify, speculative_verify_probs, sample --------------------------------------------

VERIFY_CASES = verify_tests.TRITON_CASES + [
    ((32, 8, REAL_VOCAB), dtype, "random", mode) for dtype in (torch.float32, torch.bfloat16) for mode in verify_tests.MODES
] + [((256, 4, 32000), torch.float32, "neg_inf", "sss_bonus"), ((1, 8, REAL_VOCAB), torch.bfloat16, "all_accepted", "standard")]


@pytest.mark.parametrize("shape, dtype, case, mode", VERIFY_CASES)
def test_verify_matches_reference_and_cpp(shape, dtype, case, mode, generator):
    inputs = verify_tests.make_verify_inputs(*shape, dtype, case, mode, generator)
    verify_tests.check_output_contract(assert_verify_matches(ops.speculative_verify, inputs), inputs, case)


PROBS_CASES = probs_tests.TRITON_CASES + [
    ((32, 8, REAL_VOCAB), dtype, "random") for dtype in (torch.float32, torch.bfloat16)
] + [((256, 4, 32000), torch.float32, "zeros")]


@pytest.mark.parametrize("shape, dtype, case", PROBS_CASES)
def test_verify_probs_matches_reference_and_cpp(shape, dtype, case, generator):
    inputs = probs_tests.make_probs_inputs(*shape, dtype, case, generator)
    probs_tests.check_output_contract(assert_verify_matches(ops.speculative_verify_probs, inputs), inputs, case)


SAMPLE_CASES = [((1, 257), torch.float32, True), ((4, 300), torch.float16, True), ((1, REAL_VOCAB), torch.bfloat16, False),
                ((64, REAL_VOCAB), torch.float32, True), ((256, 32000), torch.bfloat16, True)]


@pytest.mark.parametrize("shape, dtype, with_neg_inf", SAMPLE_CASES)
def test_sample_matches_reference_and_cpp(shape, dtype, with_neg_inf, generator):
    logits, seeds, positions = sample_tests.make_sample_inputs(*shape, dtype, with_neg_inf, generator)
    tokens = ops.sample(logits.to(CUDA), seeds=seeds.to(CUDA), positions=positions.to(CUDA))
    assert tokens.device.type == "cuda" and tokens.dtype == torch.int64
    assert torch.equal(tokens.cpu(), ops.sample(logits, seeds=seeds, positions=positions, backend="reference"))
    assert torch.equal(tokens.cpu(), ops.sample(logits, seeds=seeds, positions=positions, backend="cpp"))


@pytest.mark.parametrize("shape, dtype, with_neg_inf", SAMPLE_CASES)
def test_sample_with_stats_matches_reference_and_cpp(shape, dtype, with_neg_inf, generator):
    logits, seeds, positions = sample_tests.make_sample_inputs(*shape, dtype, with_neg_inf, generator)
    out = ops.sample_with_stats(logits.to(CUDA), seeds=seeds.to(CUDA), positions=positions.to(CUDA))
    assert out.tokens.device.type == "cuda"
    tokens = out.tokens.cpu()
    assert torch.equal(tokens, ops.sample(logits, seeds=seeds, positions=positions, backend="reference"))
    assert torch.equal(tokens, ops.sample_with_stats(logits, seeds=seeds, positions=positions, backend="cpp").tokens)
    for name, value, expected in zip(("log_prob", "entropy", "certainty"), out[1:], stats_tests.exact_stats(logits, tokens)):
        torch.testing.assert_close(value.cpu().double(), expected, rtol=2e-5, atol=2e-5, msg=name)


def test_verify_rows_do_not_depend_on_the_batch(generator):
    """48 rows and 5 of them split the vocabulary over different grids: the same tokens."""
    inputs = on(CUDA, verify_tests.make_verify_inputs(48, 4, REAL_VOCAB, torch.bfloat16, "random", "sss_bonus", generator))
    subset = torch.tensor([0, 7, 21, 33, 47], device=CUDA)
    whole = ops.speculative_verify(**inputs)
    part = ops.speculative_verify(**{k: v[subset] for k, v in inputs.items()})
    assert_same_output(on_cpu(part), on_cpu(ops.VerifyOutput(*(t[subset] for t in whole))))


def test_sample_rows_do_not_depend_on_the_batch(generator):
    logits, seeds, positions = (t.to(CUDA) for t in sample_tests.make_sample_inputs(256, REAL_VOCAB, torch.float32, True,
                                                                                     generator))
    whole = ops.sample(logits, seeds=seeds, positions=positions)
    for rows in (slice(0, 1), slice(3, 11)):
        assert torch.equal(ops.sample(logits[rows], seeds=seeds[rows], positions=positions[rows]), whole[rows])


def test_verify_repeats_itself_on_a_large_batch(generator):
    """Same inputs, same outputs, three times over: no race between the programs of a launch."""
    inputs = on(CUDA, verify_tests.make_verify_inputs(256, 8, 32000, torch.float32, "neg_inf", "sss_bonus", generator))
    first = on_cpu(ops.speculative_verify(**inputs))
    for _ in range(2):
        assert_same_output(on_cpu(ops.speculative_verify(**inputs)), first)


def test_int32_draft_tokens_and_empty_batches(generator):
    inputs = verify_tests.make_verify_inputs(3, 2, 300, torch.float32, "random", "sss_bonus", generator)
    expected = ops.speculative_verify(**inputs, backend="reference")
    inputs["draft_tokens"] = inputs["draft_tokens"].int()
    assert_same_output(on_cpu(ops.speculative_verify(**on(CUDA, inputs))), expected)
    empty = on(CUDA, verify_tests.make_verify_inputs(0, 2, 50, torch.float32, "random", "standard", generator))
    assert ops.speculative_verify(**empty).tokens.shape == (0, 3)
    assert ops.sample(torch.zeros(0, 50, device=CUDA), seeds=empty["seeds"], positions=empty["positions"]).shape == (0,)


def test_compiled_wrappers_on_cuda_give_the_eager_result(generator):
    inputs = on(CUDA, verify_tests.make_verify_inputs(4, 3, 1000, torch.float32, "random", "sss_bonus", generator))

    def step(**x):
        out = ops.speculative_verify(**x, check_values=False)
        logits = x["target_logits"][:, 0]
        return out.tokens, out.num_emitted, ops.sample(logits, seeds=x["seeds"], positions=x["positions"], check_values=False)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)(**inputs)
    for result, expected in zip(compiled, step(**inputs)):
        assert torch.equal(result, expected)


# --- compact_rows, compact_columns -------------------------------------------------------------------

def compact_on_cuda_and_cpu(layouts, run):
    """Run ``run(views, backend)`` on CUDA copies of the buffers and on two CPU copies (reference, C++);
    return the buffers and each run's result."""
    buffers = {"cuda": [b.to(CUDA) for _, b, _, _ in layouts],
               "reference": [b.clone() for _, b, _, _ in layouts], "cpp": [b.clone() for _, b, _, _ in layouts]}
    results = {}
    for backend, owned in buffers.items():
        views = [view(b) for (_, _, view, _), b in zip(layouts, owned)]
        results[backend] = run(views, None if backend == "cuda" else backend)
    return buffers, results


def assert_buffers_equal(layouts, buffers):
    for i, (name, *_) in enumerate(layouts):
        on_device = buffers["cuda"][i].cpu()
        assert torch.equal(on_device, buffers["reference"][i]), f"{name}: CUDA differs from the reference"
        assert torch.equal(on_device, buffers["cpp"][i]), f"{name}: CUDA differs from the C++ backend"


@pytest.mark.parametrize("keep_name", rows_tests.KEEP_NAMES)
@pytest.mark.parametrize("batch", [9, 64])
def test_compact_rows_matches_reference_and_cpp(batch, keep_name, generator):
    layouts = rows_tests.make_buffers(batch, generator)
    keep = rows_tests.keep_sets(batch, generator)[keep_name]
    dims = [dim for *_, dim in layouts]
    buffers, _ = compact_on_cuda_and_cpu(
        layouts, lambda views, backend: ops.compact_rows(views, keep.to(views[0].device), dims, backend=backend))
    assert_buffers_equal(layouts, buffers)


@pytest.mark.parametrize("index_name", fork_tests.INDEX_NAMES)
@pytest.mark.parametrize("batch", [9, 64])
def test_fork_rows_matches_reference_and_cpp(batch, index_name, generator):
    layouts = rows_tests.make_buffers(batch, generator)
    index = fork_tests.index_sets(batch, generator)[index_name]
    dims = [dim for *_, dim in layouts]
    buffers, _ = compact_on_cuda_and_cpu(
        layouts, lambda views, backend: ops.fork_rows(views, index.to(views[0].device), dims, backend=backend))
    assert_buffers_equal(layouts, buffers)


def llama_cache_layouts(batch, length, generator, tensors=16):
    """Keys and values ``[B, 8, S, 128]`` bf16 (in place as the engines use them) plus ids."""
    layouts = [(f"cache {i}", torch.randn(batch, 8, length, 128, generator=generator).bfloat16(), lambda t: t, None)
               for i in range(tensors)]
    return layouts + [("ids", torch.randint(0, REAL_VOCAB, (batch, length), generator=generator), lambda t: t, None)]


def test_compact_rows_on_a_llama_cache(generator):
    layouts = llama_cache_layouts(64, 130, generator)
    keep = torch.randperm(64, generator=generator)[:32]
    buffers, _ = compact_on_cuda_and_cpu(layouts, lambda views, backend: ops.compact_rows(views, keep, backend=backend))
    assert_buffers_equal(layouts, buffers)


def test_fork_rows_on_a_llama_cache(generator):
    layouts = llama_cache_layouts(64, 130, generator)
    index = torch.randperm(64, generator=generator)[:16].repeat_interleave(4)
    buffers, _ = compact_on_cuda_and_cpu(
        layouts, lambda views, backend: ops.fork_rows(views, index.to(views[0].device), backend=backend))
    assert_buffers_equal(layouts, buffers)


@pytest.mark.parametrize("pattern", columns_tests.PATTERNS)
@pytest.mark.parametrize("batch, length", [(6, 9), (33, 70)])
def test_compact_columns_matches_reference_and_cpp(batch, length, pattern, generator):
    layouts = columns_tests.make_buffers(batch, length, generator)
    keep_mask = columns_tests.make_keep_mask(batch, length, pattern, generator)
    dims = [dim for *_, dim in layouts]
    buffers, results = compact_on_cuda_and_cpu(
        layouts, lambda views, backend: ops.compact_columns(views, keep_mask.to(views[0].device), dims, backend=backend))
    assert_buffers_equal(layouts, buffers)
    for expected in (results["reference"], results["cpp"]):
        assert all(torch.equal(r.cpu(), e) for r, e in zip(results["cuda"], expected))


def test_compact_columns_on_a_llama_cache(generator):
    layouts = llama_cache_layouts(32, 200, generator, tensors=8)
    dims = [2] * 8 + [1]
    keep_mask = columns_tests.make_keep_mask(32, 200, "rejected drafts at the end", generator)
    buffers, results = compact_on_cuda_and_cpu(
        layouts, lambda views, backend: ops.compact_columns(views, keep_mask.to(views[0].device), dims, backend=backend))
    assert_buffers_equal(layouts, buffers)
    assert torch.equal(results["cuda"][1].cpu(), results["reference"][1])


# --- generate integrations ---------------------------------------------------------------------------

def cpu_and_cuda(model):
    model = model.double().eval()  # float64: CPU and CUDA logits agree far below float32 rounding
    return model, copy.deepcopy(model).to(CUDA)


def rejection_run(model, method, max_new_tokens=12):
    device = model.device
    return model.generate(input_ids=spr_tests.PROMPTS.to(device), attention_mask=spr_tests.MASK.to(device),
                          custom_generate=method, do_sample=True, max_new_tokens=max_new_tokens,
                          return_dict_in_generate=True)


def assert_same_rejection_run(cuda_out, cpu_out):
    assert cuda_out.batch_sizes == cpu_out.batch_sizes
    assert cuda_out.decision_lengths == cpu_out.decision_lengths
    assert torch.equal(cuda_out.candidate_tokens.cpu(), cpu_out.candidate_tokens)
    assert torch.equal(cuda_out.sequences.cpu(), cpu_out.sequences)


@pytest.fixture(scope="module")
def generators():
    torch.manual_seed(0)
    return cpu_and_cuda(spr_tests.tiny_llama())


def test_speculative_rejection_on_cuda_matches_cpu(generators):
    cpu_model, cuda_model = generators
    method = spr_tests.spr(decision_tokens=[2, 4, 8], seed=3)
    cuda_out, cpu_out = rejection_run(cuda_model, method), rejection_run(cpu_model, method)
    assert cuda_out.sequences.device.type == "cuda"
    assert_same_rejection_run(cuda_out, cpu_out)
    assert torch.equal(cuda_out.candidate_rewards, cpu_out.candidate_rewards)


# Bytes of working memory in which the tiny float64 generator's 16 rows outgrow the budget within a few tokens.
SMALL_BUDGET = 220_000


def test_byte_budget_on_cuda_gives_the_cpu_schedule(generators):
    cpu_model, cuda_model = generators
    cpu_out = rejection_run(cpu_model, spr_tests.spr(memory_budget=SMALL_BUDGET))
    assert cpu_out.decision_lengths, "the budget should force decisions"
    assert_same_rejection_run(rejection_run(cuda_model, spr_tests.spr(memory_budget=SMALL_BUDGET)), cpu_out)


def test_default_budget_on_cuda_reads_the_free_device_memory(generators, monkeypatch):
    """Without a budget, a share of torch.cuda.mem_get_info of the model's device, less a reserve."""
    cpu_model, cuda_model = generators
    asked = []

    def mem_get_info(device=None):
        asked.append(torch.device(device))
        free = speculative_rejection.CUDA_RESERVE_BYTES + int(SMALL_BUDGET / speculative_rejection.DEFAULT_BUDGET_SHARE)
        return free, 80 << 30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    cuda_out = rejection_run(cuda_model, spr_tests.spr())
    assert asked and all(device.type == "cuda" for device in asked)
    assert_same_rejection_run(cuda_out, rejection_run(cpu_model, spr_tests.spr(memory_budget=SMALL_BUDGET)))


def test_reward_model_on_cuda(generators):
    cpu_model, cuda_model = generators
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=spr_tests.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=spr_tests.PAD)
    cpu_reward, cuda_reward = cpu_and_cuda(LlamaForSequenceClassification(config))
    runs = [rejection_run(model, SpeculativeRejection(RewardModel(reward), n=spr_tests.N, decision_tokens=[3, 6], seed=5))
            for model, reward in ((cuda_model, cuda_reward), (cpu_model, cpu_reward))]
    assert_same_rejection_run(*runs)
    torch.testing.assert_close(runs[0].candidate_rewards, runs[1].candidate_rewards)


@pytest.fixture(scope="module")
def speculative_models():
    return [cpu_and_cuda(sps_tests.tiny_llama(seed)) for seed in (0, 1, 2)]  # target, draft, aligned draft


def speculative_run(target, method, do_sample=True):
    """Three left-padded prompts, each twice (the copies differ by their row seeds)."""
    ids, mask = (t.repeat(2, 1).to(target.device) for t in sps_tests.prompts_with_left_padding())
    return target.generate(input_ids=ids, attention_mask=mask, custom_generate=method, do_sample=do_sample, top_k=5,
                           max_new_tokens=12, pad_token_id=sps_tests.PAD)


@pytest.mark.parametrize("backend", [None, "reference"])
def test_speculative_sampling_on_cuda_matches_cpu(speculative_models, backend):
    (cpu_target, cuda_target), (cpu_draft, cuda_draft), _ = speculative_models
    cuda_out = speculative_run(cuda_target, SpeculativeSampling(cuda_draft, 3, seed=11, backend=backend))
    assert torch.equal(cuda_out.cpu(), speculative_run(cpu_target, SpeculativeSampling(cpu_draft, 3, seed=11)))


def test_reward_shifted_sampling_on_cuda_matches_cpu(speculative_models):
    (cpu_target, cuda_target), (cpu_draft, cuda_draft), (cpu_aligned, cuda_aligned) = speculative_models
    cuda_out = speculative_run(cuda_target, RewardShiftedSpeculativeSampling(cuda_aligned, cuda_draft, 3, seed=11))
    cpu_out = speculative_run(cpu_target, RewardShiftedSpeculativeSampling(cpu_aligned, cpu_draft, 3, seed=11))
    assert torch.equal(cuda_out.cpu(), cpu_out)


def test_greedy_speculative_sampling_on_cuda_is_the_target_greedy(speculative_models):
    (_, cuda_target), (_, cuda_draft), _ = speculative_models
    ids, mask = (t.to(CUDA) for t in sps_tests.prompts_with_left_padding())
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=sps_tests.PAD)
    expected = cuda_target.generate(**kwargs)
    assert torch.equal(cuda_target.generate(**kwargs, custom_generate=SpeculativeSampling(cuda_draft, 3)), expected)
