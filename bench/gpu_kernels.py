"""Stage ``kernels`` of bench/gpu_run.py: copy bandwidth, then every op at the issue's shapes.

    python bench/gpu_kernels.py --results OUT/<device>.json [--dry-run] [--deadline EPOCH]

1. Device-to-device copy bandwidth: ``dst.copy_(src)`` of 2 GiB, bytes read plus written over the
   median time. The ceiling every fraction below is taken against.
2. Compaction on a Llama-3-8B-shaped cache (32 layers, keys and values ``[rows, 8, 128, 128]``
   bf16), rows in {256, 512, 1024}: ``compact_rows`` keeping a random half against the batched
   PyTorch version (``backend="reference"``: gather, copy back) and HF's
   ``DynamicCache.batch_select_indices``; ``compact_columns`` dropping the last ``b % 5`` positions of
   row ``b`` (rejected drafts) against a batched ``torch.gather`` version.
3. ``speculative_verify`` (standard, SSS), ``speculative_verify_probs`` and ``sample`` at B in
   {1, 32, 256}, K in {4, 8}, V in {32000, 128256}, fp32 and bf16; target logits 2 N(0, 1), draft =
   target + 0.7 N(0, 1), SSS ref = draft + 0.3 N(0, 1), drafts drawn from the draft. Beside each: a
   batched PyTorch version (softmax, gather, ``torch.rand``, ``multinomial``) and, for standard
   verification, HF's ``_speculative_sampling`` looped over the rows.

Timing: medians. Every op is timed twice: eager (CUDA events around each call, launch overhead
included: what a decoding loop sees) and, for the verify and sample ops, as CUDA-graph replays
(kernel time: the figure against the floor). A cold L2 throughout: each timed call reads an input
set the previous calls did not, the sets rotating over at least 4x the L2 size.

Bytes: "minimum" is what any exact algorithm must read for the acceptances that happened (each
verified position's rows once for the normalisers, the bonus row of all-accepting rows; from
probabilities one row pair per rejection, one row per full acceptance; a sample reads its logits
once; compaction reads and writes each moved row once). "design" is what our kernels read (every
one of the K positions normalised, then one row of each input per request). The fraction of copy
bandwidth is minimum bytes over kernel time over the copy bandwidth.

Agreement: the op's tokens against the reference backend on the device (every row of the first
input set) and, where the set is under 600 MB, against the C++ backend on CPU copies.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
from gpu_run import Results, out_of_time, stage_arguments
from transformers import DynamicCache
from transformers.generation import utils as generation_utils

from specalign import ops

FULL = dict(batches=(32, 1, 256), drafts=(8, 4), vocabs=(128256, 32000), dtypes=(torch.bfloat16, torch.float32),
            cache=dict(layers=32, heads=8, head_dim=128, length=128, rows=(256, 512, 1024)), copy_bytes=2 << 30)
DRY = dict(batches=(4, 1), drafts=(2,), vocabs=(300,), dtypes=(torch.bfloat16, torch.float32),
           cache=dict(layers=2, heads=2, head_dim=16, length=32, rows=(8, 16)), copy_bytes=64 << 20)
ROTATION_L2_MULTIPLE = 4
MAX_SETS = 2048
CPP_CHECK_MAX_BYTES = 600 << 20


class Timer:
    """Medians of a call's time on ``device``: CUDA events on a GPU, the host clock on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.graph_error = None

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def once(self, call) -> float:
        """Seconds of one call (after a sync)."""
        self.sync()
        if not self.cuda:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def eager(self, call, inputs: list, budget_s: float, max_reps: int = 30, before=None) -> float:
        """Median seconds of ``call(inputs[i % len(inputs)])``, as many calls as fit ``budget_s`` (3 to
        ``max_reps``) after an untimed warm-up; ``before`` (untimed) runs before each call."""
        for x in inputs[:2]:  # compilation, allocator and library start-up stay out of the numbers
            if before is not None:
                before()
            call(x)
        if before is not None:
            before()
        first = self.once(lambda: call(inputs[0]))
        reps = max(3, min(max_reps, int(budget_s / max(first, 1e-6))))
        times = []
        for i in range(reps):
            if before is not None:
                before()
            times.append(self.once(lambda: call(inputs[(i + 1) % len(inputs)])))
        return statistics.median(times)

    def graph(self, call, inputs: list, replays: int = 7) -> float | None:
        """Median seconds per call of a CUDA graph calling ``call`` once per input set; None on a CPU
        or when the capture fails (the reason is kept in ``graph_error``)."""
        if not self.cuda:
            return None
        try:
            return self._graph(call, inputs, replays)
        except Exception as error:  # noqa: BLE001 - eager timing stands in; the reason is reported
            self.graph_error = repr(error)[:300]
            torch.cuda.synchronize(self.device)
            return None

    def _graph(self, call, inputs: list, replays: int) -> float:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up off the capture, as torch's graph docs ask
            for x in inputs[:2]:
                call(x)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for x in inputs:
                call(x)
        graph.replay()
        times = [self.once(graph.replay) for _ in range(replays)]
        del graph
        return statistics.median(times) / len(inputs)


def rotation_count(set_bytes: int, device: torch.device) -> int:
    """How many input sets a cold-L2 rotation needs: together at least 4x the L2 (2 on a CPU)."""
    if device.type != "cuda":
        return 2
    l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
    return max(2, min(MAX_SETS, math.ceil(ROTATION_L2_MULTIPLE * l2_bytes / max(set_bytes, 1))))


def tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


# --- copy bandwidth ----------------------------------------------------------------------------------

def copy_bandwidth(results: Results, timer: Timer, size_bytes: int) -> float:
    results.section("copy", "Device-to-device copy bandwidth (the ceiling)")
    source = torch.randn(size_bytes // 4, device=timer.device)  # never zeros: see METHOD.md
    target = torch.empty_like(source)
    seconds = timer.eager(lambda _: target.copy_(source), [None], budget_s=0.5, max_reps=30)
    bandwidth = 2 * size_bytes / seconds
    results.add_row("copy", dict(bytes=size_bytes, median_ms=seconds * 1e3, GB_per_s=bandwidth / 1e9))
    results.headline("copy", f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write, {size_bytes >> 20} MiB)")
    return bandwidth


# --- compaction --------------------------------------------------------------------------------------

def llama_cache(rows: int, shape: dict, device: torch.device) -> DynamicCache:
    cache = DynamicCache()
    for layer in range(shape["layers"]):
        keys, values = (torch.randn(rows, shape["heads"], shape["length"], shape["head_dim"], device=device,
                                    dtype=torch.bfloat16) for _ in range(2))
        cache.update(keys, values, layer)
    return cache


def cache_tensors(cache: DynamicCache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def torch_compact_columns(tensors: list[torch.Tensor], keep_mask: torch.Tensor) -> None:
    """Batched PyTorch right-alignment: a stable sort puts each row's dropped positions first and its
    kept ones, in order, last; one gather per tensor, then the freed positions are zeroed."""
    kept_last, order = torch.sort(keep_mask.to(torch.int8), dim=1, stable=True)
    freed = kept_last == 0
    for tensor in tensors:
        rows, heads, length, head_dim = tensor.shape
        index = order[:, None, :, None].expand(rows, heads, length, head_dim)
        tensor.copy_(tensor.gather(2, index).masked_fill_(freed[:, None, :, None], 0))


def compact_rows_measure(results: Results, timer: Timer, rows: int, shape: dict, bandwidth: float):
    cache = llama_cache(rows, shape, timer.device)
    tensors = cache_tensors(cache)
    keep = torch.randperm(rows, device=timer.device)[: rows // 2].sort().values
    row_bytes = sum(t[0].numel() * t.element_size() for t in tensors)
    moved = int((keep != torch.arange(keep.numel(), device=keep.device)).sum())
    minimum = 2 * moved * row_bytes

    expected = [tensors[i].index_select(0, keep) for i in (0, -1)]
    ops.compact_rows(tensors, keep)
    correct = all(torch.equal(tensors[i][: keep.numel()], e) for i, e in zip((0, -1), expected))
    del expected
    ours = timer.eager(lambda _: ops.compact_rows(tensors, keep), [None], budget_s=1.0, max_reps=20)
    reference = timer.eager(lambda _: ops.compact_rows(tensors, keep, backend="reference"), [None], budget_s=1.0,
                            max_reps=10)
    full = [(layer.keys, layer.values) for layer in cache.layers]

    def restore():
        for layer, (keys, values) in zip(cache.layers, full):
            layer.keys, layer.values = keys, values

    hf = timer.eager(lambda _: cache.batch_select_indices(keep), [None], budget_s=1.0, max_reps=10, before=restore)
    restore()
    results.add_row("compaction", dict(
        op="compact_rows", rows=rows, kept=keep.numel(), length=shape["length"], cache_GB=rows * row_bytes / 1e9,
        min_GB=minimum / 1e9, ours_ms=ours * 1e3, GB_per_s=minimum / ours / 1e9, pct_copy=100 * minimum / ours / bandwidth,
        torch_ms=reference * 1e3, torch_over_ours=reference / ours, hf_ms=hf * 1e3, hf_over_ours=hf / ours,
        same_as_gather=correct))


def fork_rows_measure(results: Results, timer: Timer, rows: int, shape: dict, bandwidth: float):
    """A beam-search round: a random quarter of the rows survive, each forked into four."""
    cache = llama_cache(rows, shape, timer.device)
    tensors = cache_tensors(cache)
    survivors = torch.randperm(rows, device=timer.device)[: rows // 4]
    index = survivors.repeat_interleave(4).sort().values
    row_bytes = sum(t[0].numel() * t.element_size() for t in tensors)
    moved = int((index != torch.arange(index.numel(), device=index.device)).sum())
    minimum = 2 * moved * row_bytes

    expected = [tensors[i].index_select(0, index) for i in (0, -1)]
    ops.fork_rows(tensors, index)
    correct = all(torch.equal(tensors[i][: index.numel()], e) for i, e in zip((0, -1), expected))
    del expected
    ours = timer.eager(lambda _: ops.fork_rows(tensors, index), [None], budget_s=1.0, max_reps=20)
    gathered = timer.eager(lambda _: [t.copy_(t.index_select(0, index)) for t in tensors], [None], budget_s=1.0,
                           max_reps=10)
    results.add_row("compaction", dict(
        op="fork_rows", rows=rows, kept=f"{rows // 4} x 4", length=shape["length"], cache_GB=rows * row_bytes / 1e9,
        min_GB=minimum / 1e9, ours_ms=ours * 1e3, GB_per_s=minimum / ours / 1e9, pct_copy=100 * minimum / ours / bandwidth,
        torch_ms=gathered * 1e3, torch_over_ours=gathered / ours, hf_ms=None, hf_over_ours=None, same_as_gather=correct))


def compact_columns_measure(results: Results, timer: Timer, rows: int, shape: dict, bandwidth: float,
                            num_draft: int = 4):
    cache = llama_cache(rows, shape, timer.device)
    tensors = cache_tensors(cache)
    length = shape["length"]
    dropped = torch.arange(rows, device=timer.device) % (num_draft + 1)  # rejected drafts of row b
    keep_mask = torch.arange(length, device=timer.device) < length - dropped[:, None]
    position_bytes = sum(t[0, :, 0].numel() * t.element_size() for t in tensors)
    minimum = int(((length - dropped) * 2 + dropped)[dropped > 0].sum()) * position_bytes

    expected = [tensors[i].clone() for i in (0, -1)]
    torch_compact_columns(expected, keep_mask)
    ops.compact_columns(tensors, keep_mask, dim=2)
    correct = all(torch.equal(tensors[i], e) for i, e in zip((0, -1), expected))
    del expected
    ours = timer.eager(lambda _: ops.compact_columns(tensors, keep_mask, dim=2), [None], budget_s=1.0, max_reps=20)
    batched = timer.eager(lambda _: torch_compact_columns(tensors, keep_mask), [None], budget_s=1.0, max_reps=10)
    results.add_row("compaction", dict(
        op="compact_columns", rows=rows, kept=f"-{num_draft}..0 positions", length=length,
        cache_GB=rows * length * position_bytes / 1e9, min_GB=minimum / 1e9, ours_ms=ours * 1e3,
        GB_per_s=minimum / ours / 1e9, pct_copy=100 * minimum / ours / bandwidth, torch_ms=batched * 1e3,
        torch_over_ours=batched / ours, hf_ms=None, hf_over_ours=None, same_as_gather=correct))


def compaction(results: Results, timer: Timer, shape: dict, bandwidth: float, deadline: float):
    results.section("compaction", "Compaction of a Llama-3-8B-shaped cache (bf16, keys and values of every layer)", [
        f"{shape['layers']} layers, keys and values [rows, {shape['heads']}, {shape['length']}, {shape['head_dim']}]; "
        "compact_rows keeps a random half, compact_columns drops the last b % 5 positions of row b, "
        "fork_rows forks a random quarter four times each",
        "torch: compact_rows backend='reference' (index_select, copy back) / batched torch.gather / "
        "fork_rows: index_select copied back; "
        "hf: DynamicCache.batch_select_indices (out of place); eager medians, events"])
    for rows in shape["rows"]:
        for measure in (compact_rows_measure, compact_columns_measure, fork_rows_measure):
            if out_of_time(deadline, 15):
                results.add_note("compaction", f"stopped before {measure.__name__} rows={rows}: deadline")
                return
            try:
                measure(results, timer, rows, shape, bandwidth)
            except Exception as error:  # noqa: BLE001 - one failing measure must not stop the others
                results.add_note("compaction", f"{measure.__name__} rows={rows} failed: {error!r}"[:400])
            if timer.cuda:
                torch.cuda.empty_cache()
    rows = results.data["sections"]["compaction"]["rows"]
    for op in ("compact_rows", "compact_columns", "fork_rows"):
        fractions = [r["pct_copy"] for r in rows if r["op"] == op]
        ratios = [r["hf_over_ours"] for r in rows if r["op"] == op and r["hf_over_ours"]]
        if fractions:
            results.headline("compaction", f"{op}: {min(fractions):.0f}-{max(fractions):.0f}% of copy bandwidth"
                             + (f", {min(ratios):.1f}-{max(ratios):.1f}x batch_select_indices" if ratios else ""))


# --- verification and sampling -----------------------------------------------------------------------

MODES = ("standard", "sss", "probs")
HF_TAKES_IS_DONE = "is_done_candidate" in generation_utils._speculative_sampling.__code__.co_varnames


def verify_set(batch: int, num_draft: int, vocab: int, dtype: torch.dtype, mode: str, device: torch.device) -> dict:
    """One input set: target 2 N(0,1), draft = target + 0.7 N(0,1) (SSS ref = draft + 0.3 N(0,1)),
    drafts drawn from the draft."""
    target = 2 * torch.randn(batch, num_draft + 1, vocab, device=device)
    draft = target + 0.7 * torch.randn_like(target)
    proposal = torch.softmax(draft[:, :num_draft], -1)
    inputs = dict(draft_tokens=torch.multinomial(proposal.flatten(0, 1), 1).view(batch, num_draft),
                  seeds=torch.randint(-(2**63), 2**63 - 1, (batch,), device=device),
                  positions=torch.randint(0, 4096, (batch,), device=device))
    if mode == "probs":
        inputs.update(draft_probs=proposal.to(dtype), target_probs=torch.softmax(target, -1).to(dtype))
    elif mode == "sss":  # the drafts' K+1-th rows given: a bonus token from the shifted target
        ref = draft + 0.3 * torch.randn_like(draft)
        inputs.update(draft_logits=draft.to(dtype), target_logits=target.to(dtype), ref_logits=ref.to(dtype))
    else:
        inputs.update(draft_logits=draft[:, :num_draft].to(dtype).contiguous(), target_logits=target.to(dtype))
    return inputs


def run_verify(x: dict, mode: str, backend: str | None = None):
    common = dict(seeds=x["seeds"], positions=x["positions"], backend=backend, check_values=False)
    if mode == "probs":
        return ops.speculative_verify_probs(x["draft_tokens"], x["draft_probs"], x["target_probs"], **common)
    return ops.speculative_verify(x["draft_tokens"], x["draft_logits"], x["target_logits"], x.get("ref_logits"), **common)


def torch_verify(x: dict, mode: str):
    """The batched PyTorch version: softmax, gather, ``torch.rand``, ``multinomial`` on one row each."""
    tokens = x["draft_tokens"]
    num_draft = tokens.shape[1]
    if mode == "probs":
        p, q = x["target_probs"].float(), x["draft_probs"].float()
    else:
        target = x["target_logits"].float()
        if mode == "sss":
            target = target + x["draft_logits"].float() - x["ref_logits"].float()
        p, q = torch.softmax(target, -1), torch.softmax(x["draft_logits"][:, :num_draft].float(), -1)
    index = tokens.unsqueeze(-1)
    ratio = p[:, :num_draft].gather(-1, index).squeeze(-1) / q.gather(-1, index).squeeze(-1)
    num_accepted = (torch.rand_like(ratio) < ratio).long().cumprod(-1).sum(-1)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    p_last = p[rows, num_accepted]
    residual = (p_last - q[rows, num_accepted.clamp(max=num_draft - 1)]).clamp_min(0)
    weights = torch.where((num_accepted < num_draft)[:, None] & (residual.sum(-1, keepdim=True) > 0), residual, p_last)
    return num_accepted, torch.multinomial(weights, 1).squeeze(-1)


def hf_verify(x: dict):
    """HF's ``_speculative_sampling`` (one request per call) looped over the rows."""
    tokens, draft, target = x["draft_tokens"], x["draft_logits"], x["target_logits"]
    candidates = torch.cat([tokens.new_zeros(tokens.shape[0], 1), tokens], dim=1)
    extra = (False,) if HF_TAKES_IS_DONE else ()  # transformers < 5.24: is_done_candidate
    return [generation_utils._speculative_sampling(candidates[b : b + 1], draft[b : b + 1], tokens.shape[1],
                                                   target[b : b + 1], *extra) for b in range(tokens.shape[0])]


def verify_bytes(num_accepted: torch.Tensor, num_draft: int, vocab: int, itemsize: int, mode: str) -> tuple[int, int]:
    """(minimum, design) bytes of one call; see the module docstring."""
    batch = num_accepted.numel()
    full = int((num_accepted == num_draft).sum())
    if mode == "probs":
        minimum = (2 * (batch - full) + full) * vocab
        design = 2 * batch * vocab
    else:
        inputs = 3 if mode == "sss" else 2
        normalised = int(torch.clamp(num_accepted + 1, max=num_draft).sum())
        minimum = (inputs * normalised + (3 if mode == "sss" else 1) * full) * vocab
        design = inputs * (batch * num_draft + batch) * vocab
    return minimum * itemsize, design * itemsize


def differing_rows(out, expected) -> int:
    out, expected = ([t.cpu() for t in o] for o in (out, expected))
    differs = (out[0] != expected[0]).any(-1) | (out[1] != expected[1]) | (out[2] != expected[2])
    return int(differs.sum())


def on_cpu(x: dict) -> dict:
    return {k: v.cpu() for k, v in x.items()}


def cpp_check(timer: Timer, inputs: dict) -> bool:
    return not timer.cuda or tensor_bytes(inputs) <= CPP_CHECK_MAX_BYTES


def verify_measure(results: Results, timer: Timer, bandwidth: float, batch, num_draft, vocab, dtype, mode):
    device = timer.device
    first = verify_set(batch, num_draft, vocab, dtype, mode, device)
    sets = [first] + [verify_set(batch, num_draft, vocab, dtype, mode, device)
                      for _ in range(rotation_count(tensor_bytes(first), device) - 1)]
    out = run_verify(first, mode)
    minimum, design = verify_bytes(out.num_accepted, num_draft, vocab, dtype.itemsize, mode)
    eager = timer.eager(lambda x: run_verify(x, mode), sets, budget_s=0.3)
    graph = timer.graph(lambda x: run_verify(x, mode), sets)
    batched = timer.eager(lambda x: torch_verify(x, mode), sets, budget_s=0.3, max_reps=10)
    hf = timer.eager(hf_verify, sets, budget_s=0.5, max_reps=5) if mode == "standard" else None
    results.add_row("verify", dict(
        op="verify_probs" if mode == "probs" else f"verify {mode}", B=batch, K=num_draft, V=vocab,
        dtype=str(dtype).removeprefix("torch."), sets=len(sets), accepted=float(out.num_accepted.float().mean()),
        **timing_columns(graph, eager, minimum, bandwidth), design_MB=design / 1e6,
        pct_copy_design=100 * design / (graph or eager) / bandwidth, torch_us=batched * 1e6,
        torch_over_ours=batched / eager, hf_us=hf * 1e6 if hf else None, hf_over_ours=hf / eager if hf else None,
        diff_rows_ref=differing_rows(out, run_verify(first, mode, "reference")),
        diff_rows_cpp=differing_rows(out, run_verify(on_cpu(first), mode, "cpp")) if cpp_check(timer, first) else None))


def timing_columns(graph: float | None, eager: float, minimum: int, bandwidth: float) -> dict:
    """The kernel time (graph replay, else eager), the floor and the fraction of copy bandwidth."""
    kernel = graph or eager
    return dict(kernel_us=kernel * 1e6, timing="graph" if graph else "eager", eager_us=eager * 1e6,
                floor_us=minimum / bandwidth * 1e6, min_MB=minimum / 1e6, pct_copy=100 * minimum / kernel / bandwidth)


def sample_set(batch: int, vocab: int, dtype: torch.dtype, device: torch.device) -> dict:
    return dict(logits=(2 * torch.randn(batch, vocab, device=device)).to(dtype),
                seeds=torch.randint(-(2**63), 2**63 - 1, (batch,), device=device),
                positions=torch.randint(0, 4096, (batch,), device=device))


def torch_sample(x: dict) -> torch.Tensor:
    return torch.multinomial(torch.softmax(x["logits"].float(), -1), 1)


def run_sample(x: dict, backend: str | None = None) -> torch.Tensor:
    return ops.sample(x["logits"], seeds=x["seeds"], positions=x["positions"], backend=backend, check_values=False)


def sample_measure(results: Results, timer: Timer, bandwidth: float, batch, vocab, dtype):
    first = sample_set(batch, vocab, dtype, timer.device)
    sets = [first] + [sample_set(batch, vocab, dtype, timer.device)
                      for _ in range(rotation_count(tensor_bytes(first), timer.device) - 1)]
    tokens = run_sample(first)
    minimum = batch * vocab * dtype.itemsize
    eager = timer.eager(run_sample, sets, budget_s=0.3)
    graph = timer.graph(run_sample, sets)
    batched = timer.eager(torch_sample, sets, budget_s=0.3, max_reps=10)
    results.add_row("sample", dict(
        op="sample", B=batch, V=vocab, dtype=str(dtype).removeprefix("torch."), sets=len(sets),
        **timing_columns(graph, eager, minimum, bandwidth), torch_us=batched * 1e6, torch_over_ours=batched / eager,
        diff_rows_ref=int((tokens.cpu() != run_sample(first, "reference").cpu()).sum()),
        diff_rows_cpp=int((tokens.cpu() != run_sample(on_cpu(first), "cpp")).sum()) if cpp_check(timer, first) else None))


def sample_with_stats_measure(results: Results, timer: Timer, bandwidth: float, batch, vocab, dtype):
    """The fused statistics against sample alone (same inputs) and sample followed by a PyTorch pass."""
    first = sample_set(batch, vocab, dtype, timer.device)
    sets = [first] + [sample_set(batch, vocab, dtype, timer.device)
                      for _ in range(rotation_count(tensor_bytes(first), timer.device) - 1)]

    def fused(x, backend=None):
        return ops.sample_with_stats(x["logits"], seeds=x["seeds"], positions=x["positions"], backend=backend,
                                     check_values=False)

    def two_passes(x):
        log_probs = torch.log_softmax(x["logits"].float(), -1)
        tokens = run_sample(x)
        return tokens, log_probs.gather(-1, tokens[:, None]), -(log_probs.exp() * log_probs).sum(-1)

    out = fused(first)
    minimum = batch * vocab * dtype.itemsize
    eager = timer.eager(fused, sets, budget_s=0.3)
    graph = timer.graph(fused, sets)
    alone = timer.eager(run_sample, sets, budget_s=0.3)
    separate = timer.eager(two_passes, sets, budget_s=0.3, max_reps=10)
    reference = fused(first, "reference")
    results.add_row("sample", dict(
        op="sample_with_stats", B=batch, V=vocab, dtype=str(dtype).removeprefix("torch."), sets=len(sets),
        **timing_columns(graph, eager, minimum, bandwidth), torch_us=separate * 1e6, torch_over_ours=separate / eager,
        sample_alone_us=alone * 1e6,
        diff_rows_ref=int((out.tokens.cpu() != reference.tokens.cpu()).sum()),
        max_entropy_diff=float((out.entropy.double().cpu() - reference.entropy.double().cpu()).abs().max()),
        diff_rows_cpp=int((out.tokens.cpu() != fused(on_cpu(first), "cpp").tokens).sum())
        if cpp_check(timer, first) else None))


def guarded(results: Results, section: str, label: str, deadline: float, measure, *args) -> bool:
    """Run one measure; a failure becomes a note. False once the deadline is near."""
    if out_of_time(deadline, 10):
        results.add_note(section, f"stopped before {label}: deadline")
        return False
    try:
        measure(*args)
    except Exception as error:  # noqa: BLE001 - one failing shape must not stop the others
        results.add_note(section, f"{label} failed: {error!r}"[:400])
    return True


def verify_and_sample(results: Results, timer: Timer, shapes: dict, bandwidth: float, deadline: float):
    timing = ("kernel: CUDA-graph replay per call (eager where no graph); eager: events around one call; "
              "inputs rotate over >= 4x L2; floor = minimum bytes / copy bandwidth; ratios are eager over eager")
    results.section("sample", "sample and sample_with_stats (Gumbel-max, one row per request)", [
        timing, "torch: multinomial(softmax); for sample_with_stats: sample, then log_softmax, gather and entropy "
        "in PyTorch; sample_alone: sample on the same inputs"])
    results.section("verify", "speculative_verify / speculative_verify_probs", [
        timing, "accepted: mean drafts accepted per row", "torch: batched softmax/gather/rand/multinomial; "
        "hf: transformers' _speculative_sampling looped over the rows (standard mode only)",
        "diff_rows: rows (tokens, num_accepted, num_emitted) differing from the reference on the device / "
        "the C++ backend on CPU copies (sets under 600 MB)"])
    for batch in shapes["batches"]:
        for vocab in shapes["vocabs"]:
            for dtype in shapes["dtypes"]:
                for measure in (sample_measure, sample_with_stats_measure):
                    if not guarded(results, "sample", f"{measure.__name__} B={batch} V={vocab} {dtype}", deadline,
                                   measure, results, timer, bandwidth, batch, vocab, dtype):
                        return
    for batch in shapes["batches"]:
        for num_draft in shapes["drafts"]:
            for vocab in shapes["vocabs"]:
                for dtype in shapes["dtypes"]:
                    for mode in MODES:
                        label = f"verify {mode} B={batch} K={num_draft} V={vocab} {dtype}"
                        if not guarded(results, "verify", label, deadline, verify_measure, results, timer, bandwidth,
                                       batch, num_draft, vocab, dtype, mode):
                            return
                    if timer.cuda:
                        torch.cuda.empty_cache()


def fraction_headline(results: Results, section: str, label: str, rows: list[dict]):
    if rows:
        fractions = [row["pct_copy"] for row in rows]
        results.headline(section, f"{label}: {min(fractions):.0f}-{max(fractions):.0f}% of copy bandwidth "
                         f"over {len(rows)} shapes")


def verify_headlines(results: Results):
    rows = results.data["sections"]["verify"]["rows"]
    for row in rows[:3]:  # the first shape measured: B=32, K=8, V=128256, bf16 on a GPU
        hf = f", HF {row['hf_over_ours']:.0f}x" if row["hf_over_ours"] else ""
        results.headline("verify", f"{row['op']} B={row['B']} K={row['K']} V={row['V']} {row['dtype']}: "
                         f"{row['kernel_us']:.1f} us (floor {row['floor_us']:.1f}, {row['pct_copy']:.0f}% of copy), "
                         f"torch {row['torch_over_ours']:.1f}x{hf}")
    for op in dict.fromkeys(row["op"] for row in rows):
        fraction_headline(results, "verify", op, [row for row in rows if row["op"] == op])
    samples = results.data["sections"]["sample"]["rows"]
    for op in ("sample", "sample_with_stats"):
        fraction_headline(results, "sample", op, [row for row in samples if row["op"] == op])
    mismatches = sum(row["diff_rows_ref"] + (row["diff_rows_cpp"] or 0) for row in rows + samples)
    results.headline("verify", f"rows differing from the reference or the C++ backend, all shapes: {mismatches}")


def main():
    args = stage_arguments(__doc__.splitlines()[0]).parse_args()
    results = Results(args.results)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
    torch.manual_seed(0)
    shapes = DRY if args.dry_run else FULL
    timer = Timer(device)
    if timer.cuda:
        properties = torch.cuda.get_device_properties(device)
        results.data["meta"].update(gpu=properties.name, multiprocessors=properties.multi_processor_count,
                                    l2_MB=properties.L2_cache_size / 1e6, memory_GB=properties.total_memory / 1e9)
    results.data["meta"].update(torch_threads=torch.get_num_threads())
    bandwidth = copy_bandwidth(results, timer, shapes["copy_bytes"])
    compaction(results, timer, shapes["cache"], bandwidth, args.deadline)
    verify_and_sample(results, timer, shapes, bandwidth, args.deadline)
    if timer.graph_error:
        results.add_note("verify", f"CUDA-graph timing failed, eager times stand in: {timer.graph_error}")
    verify_headlines(results)


if __name__ == "__main__":
    main()
