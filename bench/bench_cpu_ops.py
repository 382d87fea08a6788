"""CPU benchmarks of the C++ kernels against the PyTorch reference and what HF transformers does today.

    python -m pytest bench/bench_cpu_ops.py --benchmark-only

Verification and sampling at B=64, K=4, V=32000 fp32 (drafts drawn from a draft close to the target,
about 45% of drafts accepted); HF's ``_speculative_sampling`` handles one row, so it is looped over
the batch. Compaction on a Llama-like ``DynamicCache`` (16 layers, keys and values [64, 8, 512, 64]
bf16, 1 GiB): keep half the rows (``compact_rows`` vs HF's ``batch_select_indices``), and remove
0..K trailing positions per row (``compact_columns``; HF has no per-row crop). A table of the
fastest round of each and the speedups is printed at the end.
"""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache
from transformers.generation.utils import _speculative_sampling

from specalign import ops

B, K, V = 64, 4, 32000
LAYERS, HEADS, LENGTH, HEAD_DIM = 16, 8, 512, 64

FASTEST: dict[tuple[str, str], float] = {}  # (op, implementation) -> seconds


def run(benchmark, op, implementation, function, rounds, setup=None):
    """Time `function` (called with the (args, kwargs) that `setup` returns, if given) and keep its fastest round."""
    benchmark.group = op
    benchmark.pedantic(function, setup=setup, rounds=rounds, warmup_rounds=1)
    if benchmark.stats is not None:
        FASTEST[(op, implementation)] = benchmark.stats.stats.min


@pytest.fixture(scope="module", autouse=True)
def speedup_table(request):
    yield
    if not FASTEST:
        return
    lines = [f"{'op':28s} {'ours ms':>9s} {'reference':>10s} {'HF':>9s} {'ref/ours':>9s} {'HF/ours':>8s}"]
    for op in dict.fromkeys(op for op, _ in FASTEST):
        ours, ref, hf = (FASTEST.get((op, name)) for name in ("ours", "reference", "HF"))
        cells = [f"{t * 1e3:.2f}" if t else "-" for t in (ours, ref, hf)]
        ratios = [f"{t / ours:.1f}x" if t and ours else "-" for t in (ref, hf)]
        lines.append(f"{op:28s} {cells[0]:>9s} {cells[1]:>10s} {cells[2]:>9s} {ratios[0]:>9s} {ratios[1]:>8s}")
    plugins = request.config.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        reporter = plugins.get_plugin("terminalreporter")
        reporter.write_line("\n\nFastest round of each (ms) and speedups of the C++ kernels:")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture(scope="module")
def verify_inputs():
    g = torch.Generator().manual_seed(0)
    target = 2.0 * torch.randn(B, K + 1, V, generator=g)
    draft = target + 0.7 * torch.randn(B, K + 1, V, generator=g)
    ref = draft + 0.3 * torch.randn(B, K + 1, V, generator=g)
    drafts = torch.multinomial(torch.softmax(draft[:, :K], -1).flatten(0, 1), 1, generator=g).view(B, K)
    return dict(drafts=drafts, draft=draft, target=target, ref=ref, draft_k=draft[:, :K].contiguous(),
                seeds=torch.arange(B), positions=torch.full((B,), 100))


def verify_args(x, sss):
    draft = x["draft"] if sss else x["draft_k"]
    return (x["drafts"], draft, x["target"], x["ref"] if sss else None)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("sss", [False, True], ids=["standard", "SSS"])
def test_speculative_verify(benchmark, verify_inputs, sss, backend):
    x = verify_inputs
    args = verify_args(x, sss)
    run(benchmark, f"speculative_verify {'SSS' if sss else 'standard'}", "ours" if backend == "cpp" else "reference",
        lambda: ops.speculative_verify(*args, seeds=x["seeds"], positions=x["positions"], backend=backend,
                                       check_values=False),
        rounds=20 if backend == "cpp" else 3)


def test_speculative_verify_hf(benchmark, verify_inputs):
    x = verify_inputs
    context = torch.zeros(B, 16, dtype=torch.long)  # HF takes the drafts as the tail of the sequence
    candidates = torch.cat([context, x["drafts"]], 1)

    def verify_rows():
        return [_speculative_sampling(candidates[b : b + 1], x["draft_k"][b : b + 1], K, x["target"][b : b + 1])
                for b in range(B)]

    run(benchmark, "speculative_verify standard", "HF", verify_rows, rounds=3)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_speculative_verify_probs(benchmark, verify_inputs, backend):
    x = verify_inputs
    draft_probs, target_probs = torch.softmax(x["draft_k"], -1), torch.softmax(x["target"], -1)
    run(benchmark, "speculative_verify_probs", "ours" if backend == "cpp" else "reference",
        lambda: ops.speculative_verify_probs(x["drafts"], draft_probs, target_probs, seeds=x["seeds"],
                                             positions=x["positions"], backend=backend, check_values=False),
        rounds=20 if backend == "cpp" else 3)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_sample(benchmark, verify_inputs, backend):
    x = verify_inputs
    logits = x["target"][:, 0].contiguous()
    run(benchmark, "sample", "ours" if backend == "cpp" else "reference",
        lambda: ops.sample(logits, seeds=x["seeds"], positions=x["positions"], backend=backend, check_values=False),
        rounds=20 if backend == "cpp" else 3)


def test_sample_hf(benchmark, verify_inputs):
    logits = verify_inputs["target"][:, 0].contiguous()  # HF's _sample: softmax, then multinomial
    run(benchmark, "sample", "HF", lambda: torch.multinomial(torch.softmax(logits, -1), 1), rounds=20)


@pytest.fixture(scope="module")
def cache():
    g = torch.Generator().manual_seed(1)
    cache = DynamicCache()
    for layer in range(LAYERS):
        keys, values = (torch.randn(B, HEADS, LENGTH, HEAD_DIM, generator=g).bfloat16() for _ in range(2))
        cache.update(keys, values, layer)
    return cache


def cache_tensors(cache):
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


KEEP = torch.randperm(B, generator=torch.Generator().manual_seed(2))[: B // 2].sort().values


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_compact_rows(benchmark, cache, backend):
    tensors = cache_tensors(cache)  # the same keep moves the same bytes every round
    run(benchmark, "compact_rows (cache)", "ours" if backend == "cpp" else "reference",
        lambda: ops.compact_rows(tensors, KEEP, backend=backend), rounds=10 if backend == "cpp" else 3)


def test_compact_rows_hf(benchmark, cache):
    full = [(layer.keys, layer.values) for layer in cache.layers]

    def restore():
        for layer, (keys, values) in zip(cache.layers, full):
            layer.keys, layer.values = keys, values
        return (KEEP,), {}

    run(benchmark, "compact_rows (cache)", "HF", cache.batch_select_indices, rounds=3, setup=restore)
    restore()


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_compact_columns(benchmark, cache, backend):
    tensors = cache_tensors(cache)
    keep_mask = torch.ones(B, LENGTH, dtype=torch.bool)
    for b in range(B):  # row b drops its last b % (K + 1) positions (rejected drafts)
        keep_mask[b, LENGTH - b % (K + 1) :] = False
    run(benchmark, "compact_columns (cache)", "ours" if backend == "cpp" else "reference",
        lambda: ops.compact_columns(tensors, keep_mask, dim=2, backend=backend), rounds=10 if backend == "cpp" else 3)
