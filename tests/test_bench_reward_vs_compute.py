"""The arithmetic of bench/bench_reward_vs_compute.py on synthetic points: the Best-of-N curve from one pool,
N interpolated log-linearly, the papers' speedup and its interval over seeds."""
import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_reward_vs_compute.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_reward_vs_compute", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_best_of_n_curve_equals_the_average_over_every_subset(bench):
    generator = torch.Generator().manual_seed(0)
    score = torch.randn(3, 7, generator=generator)
    value = torch.randn(3, 7, generator=generator)
    curve = bench.best_of_n_curve(score, value)
    for n in range(1, 8):
        brute = []
        for row in range(3):
            picks = [max(subset, key=lambda i: score[row, i].item()) for subset in itertools.combinations(range(7), n)]
            brute.append(sum(value[row, i].item() for i in picks) / len(picks))
        assert curve[n - 1].item() == pytest.approx(sum(brute) / 3, abs=1e-9)
    assert curve[0].item() == pytest.approx(value.double().mean().item())  # N = 1: any candidate


def test_n_to_reach_interpolates_log_linearly_and_flags_the_ends(bench):
    curve = torch.tensor([0.0, 1.0, 2.0, 3.0])  # Best-of-1..4
    n, bound = bench.n_to_reach(curve, 1.5)
    assert bound == "" and n == pytest.approx(math.sqrt(2 * 3))  # halfway between log 2 and log 3
    assert bench.n_to_reach(curve, 2.0) == (pytest.approx(3.0), "")
    assert bench.n_to_reach(curve, -1.0) == (1.0, "below")
    assert bench.n_to_reach(curve, 3.5) == (4.0, "above")


def test_log_log_interpolate_recovers_a_power_law(bench):
    xs = [1, 4, 16, 64]
    ys = [3 * x**0.5 for x in xs]
    for x in (2.0, 10.0, 64.0, 128.0):  # inside, on a point, and extended past the last one
        assert bench.log_log_interpolate(xs, ys, x) == pytest.approx(3 * x**0.5)


def test_speedup_is_best_of_n_compute_at_equal_reward_over_the_methods(bench):
    curve = torch.log2(torch.arange(1, 65, dtype=torch.float64))  # Best-of-N reaches log2(N)
    tokens_per_candidate = 10.0

    def bon_cost(n):
        return n * tokens_per_candidate

    # three seeds, each reaching Best-of-8's reward (3.0) with 20 tokens: Best-of-8 needs 80, 4x as many
    result = bench.speedup(curve, bon_cost, [3.0, 3.0, 3.0], [20.0, 20.0, 20.0])
    assert result["speedup"] == pytest.approx(4.0) and result["bound"] == ""
    assert result["bon_n"] == pytest.approx(8.0)
    assert result["ci95"] == [pytest.approx(4.0), pytest.approx(4.0)]  # no spread over seeds
    # seeds reaching Best-of-4, -8 and -16 with 10 tokens: per seed 4x, 8x, 16x; the interval on the log scale
    result = bench.speedup(curve, bon_cost, [2.0, 3.0, 4.0], [10.0, 10.0, 10.0])
    assert result["per_seed"] == [pytest.approx(4.0), pytest.approx(8.0), pytest.approx(16.0)]
    assert result["speedup"] == pytest.approx(8.0)  # Best-of-N at the mean reward 3.0
    half_width = 4.303 * math.log(2) / math.sqrt(3)  # t(2 dof) * standard error of log2-spaced values
    assert result["ci95"][0] == pytest.approx(8.0 * math.exp(-half_width))
    assert result["ci95"][1] == pytest.approx(8.0 * math.exp(half_width))
    # a method beyond Best-of-64 gets a lower bound
    assert bench.speedup(curve, bon_cost, [7.0, 7.0], [10.0, 10.0])["bound"] == "above"


def test_t_interval_needs_two_values(bench):
    assert all(math.isnan(v) for v in bench.t_interval([1.0]))
    low, high = bench.t_interval([1.0, 3.0])
    assert (low + high) / 2 == pytest.approx(2.0) and high - low == pytest.approx(2 * 12.706)
