"""What the op benchmarks share: the measured copy bandwidth, timing, the table they print, and the
inputs two of them use (verification logits, a KV cache).

Each ``bench_<op>.py`` states its op's minimum bytes (``min_bytes``: what any implementation must
read and write for the inputs at hand) and times the implementations side by side in one process:
the C++ kernel (CPU), the Triton kernel (CUDA, when a device is present), the reference, Hugging
Face where it has the operation, and a plain batched PyTorch version. For each it prints the median
time, the bandwidth ``min_bytes / time`` and that bandwidth as a percentage of the measured copy
bandwidth of the same device (``torch.Tensor.copy_`` of a buffer far larger than the CPU caches, counting
the read and the write): the floor is ``min_bytes / copy bandwidth``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """``--threads`` (CPU threads for every implementation, default 1) and ``--rounds``, plus ``extra``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads on the CPU (default 1)")
    parser.add_argument("--rounds", type=int, default=20, help="timed calls of the fast implementations")
    parser.add_argument("--pairs", type=int, default=40, help="interleaved pairs behind each ratio of two implementations")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def devices() -> list[torch.device]:
    """The CPU, and the CUDA device when there is one (the Triton kernels run there)."""
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(function: Callable[[], object], device: torch.device, rounds: int, setup: Callable[[], None] | None = None,
            warmup: int = 1) -> float:
    """Median wall time of ``function()`` over ``rounds`` calls after ``warmup`` calls; ``setup`` runs
    untimed before each call (e.g. to restore inputs an in-place op changed)."""
    times = []
    for call in range(warmup + rounds):
        if setup is not None:
            setup()
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        if call >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_ratio(function, baseline, device: torch.device, rounds: int) -> float:
    """Median over ``rounds`` interleaved pairs of time(function) / time(baseline): on a shared machine
    the pair sees the same load, so small differences survive the noise that separate medians drown."""
    ratios = []
    for _ in range(rounds + 1):
        pair = [seconds(f, device, rounds=1, warmup=0) for f in (function, baseline)]
        ratios.append(pair[0] / pair[1])
    return statistics.median(ratios[1:])


def make_verify_inputs(batch, num_draft, vocab, device):
    """Verification inputs at B x K x V fp32: target logits 2*N(0,1), draft = target + 0.7*N(0,1), ref =
    draft + 0.3*N(0,1) (K+1 rows each), drafts drawn from the draft's first K rows."""
    g = torch.Generator().manual_seed(0)
    target = 2.0 * torch.randn(batch, num_draft + 1, vocab, generator=g)
    draft = target + 0.7 * torch.randn(batch, num_draft + 1, vocab, generator=g)
    ref = draft + 0.3 * torch.randn(batch, num_draft + 1, vocab, generator=g)
    drafts = torch.multinomial(torch.softmax(draft[:, :num_draft], -1).flatten(0, 1), 1, generator=g).view(batch, num_draft)
    inputs = dict(drafts=drafts, draft=draft, target=target, ref=ref, draft_k=draft[:, :num_draft].contiguous(),
                  seeds=torch.arange(batch), positions=torch.full((batch,), 100))
    return {name: t.to(device) for name, t in inputs.items()}


def make_cache(args, device):
    """A ``DynamicCache`` of ``args.layers`` layers, keys and values [batch, heads, length, head_dim] bf16."""
    g = torch.Generator().manual_seed(1)
    cache = DynamicCache()
    for layer in range(args.layers):
        keys, values = (torch.randn(args.batch, args.heads, args.length, args.head_dim, generator=g)
                        .bfloat16().to(device) for _ in range(2))
        cache.update(keys, values, layer)
    return cache


def cache_tensors(cache):
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


_COPY_BANDWIDTH: dict[torch.device, float] = {}


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20) -> float:
    """Bytes per second of ``dst.copy_(src)`` on ``device`` (read plus write), fastest of 5."""
    if device not in _COPY_BANDWIDTH:
        src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        dst.copy_(src)
        fastest = min(seconds(lambda: dst.copy_(src), device, rounds=1, warmup=0) for _ in range(5))
        _COPY_BANDWIDTH[device] = 2 * nbytes / fastest
    return _COPY_BANDWIDTH[device]


@dataclass
class Timing:
    name: str
    device: torch.device
    seconds: float


class Table:
    """Rows of one op's implementations on one shape, printed with bandwidth against the floor."""

    def __init__(self, title: str, min_bytes: int, baseline: str | None = None):
        self.title, self.min_bytes, self.baseline = title, min_bytes, baseline
        self.timings: list[Timing] = []
        self.notes: list[str] = []

    def time(self, name: str, device: torch.device, function: Callable[[], object], rounds: int,
             setup: Callable[[], None] | None = None) -> None:
        self.timings.append(Timing(name, device, seconds(function, device, rounds, setup)))

    def note(self, line: str) -> None:
        self.notes.append(line)

    def skip(self, name: str, why: str) -> None:
        self.notes.append(f"{name}: skipped ({why})")

    def print(self) -> None:
        print(f"\n{self.title}")
        print(f"min bytes {self.min_bytes / 2**20:.1f} MiB; threads {torch.get_num_threads()}")
        for device in dict.fromkeys(t.device for t in self.timings):
            bandwidth = copy_bandwidth(device)
            print(f"  {device.type}: copy bandwidth {bandwidth / 1e9:.1f} GB/s, floor {self.min_bytes / bandwidth * 1e3:.3f} ms")
        baseline = {t.device: t.seconds for t in self.timings if t.name == self.baseline}
        header = f"  {'implementation':<42}{'device':>7}{'ms':>10}{'GB/s':>9}{'% copy':>8}"
        print(header + (f"  vs {self.baseline}" if self.baseline else ""))
        for t in self.timings:
            rate = self.min_bytes / t.seconds
            line = (f"  {t.name:<42}{t.device.type:>7}{t.seconds * 1e3:>10.3f}{rate / 1e9:>9.2f}"
                    f"{100 * rate / copy_bandwidth(t.device):>7.1f}%")
            if t.device in baseline:
                line += f"{baseline[t.device] / t.seconds:>8.2f}x"
            print(line)
        for note in self.notes:
            print(f"  {note}")
