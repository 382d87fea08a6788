"""Bad arguments raise ValueError naming the argument, before any kernel runs (every backend)."""
import pytest
import torch

from specalign import ops

B, K, V = 2, 3, 11
META = torch.device("meta")  # a second device on a CPU-only machine


def verify_args():
    g = torch.Generator().manual_seed(0)
    return dict(draft_tokens=torch.randint(0, V, (B, K), generator=g), draft_logits=torch.randn(B, K, V, generator=g),
                target_logits=torch.randn(B, K + 1, V, generator=g), ref_logits=None,
                seeds=torch.arange(B), positions=torch.zeros(B, dtype=torch.int64))


def sss_args():
    args = verify_args()
    return dict(args, draft_logits=torch.randn(B, K + 1, V), ref_logits=torch.randn(B, K + 1, V))


def probs_args():
    args = verify_args()
    return dict(draft_tokens=args["draft_tokens"], draft_probs=torch.softmax(args["draft_logits"], -1),
                target_probs=torch.softmax(args["target_logits"], -1), seeds=args["seeds"], positions=args["positions"])


def sample_args():
    return dict(logits=torch.randn(B, V), seeds=torch.arange(B), positions=torch.zeros(B, dtype=torch.int64))


def with_value(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


VERIFY_CASES = {
    # draft_tokens
    "draft_tokens float": (lambda a: dict(draft_tokens=a["draft_tokens"].float()), "draft_tokens"),
    "draft_tokens 1-D": (lambda a: dict(draft_tokens=a["draft_tokens"][0]), "draft_tokens"),
    "draft_tokens K=0": (lambda a: dict(draft_tokens=a["draft_tokens"][:, :0]), "draft_tokens"),
    "draft_tokens id V": (lambda a: dict(draft_tokens=with_value(a["draft_tokens"], (1, 2), V)), "draft_tokens"),
    "draft_tokens id -1": (lambda a: dict(draft_tokens=with_value(a["draft_tokens"], (0, 0), -1)), "draft_tokens"),
    "draft_tokens seeds positions on meta": (
        lambda a: dict(draft_tokens=a["draft_tokens"].to(META), seeds=a["seeds"].to(META),
                       positions=a["positions"].to(META)), "draft_tokens|draft_logits|target_logits"),
    # draft_logits
    "draft_logits float64": (lambda a: dict(draft_logits=a["draft_logits"].double()), "draft_logits"),
    "draft_logits int64": (lambda a: dict(draft_logits=a["draft_logits"].long()), "draft_logits"),
    "draft_logits 2-D": (lambda a: dict(draft_logits=a["draft_logits"][:, 0]), "draft_logits"),
    "draft_logits K-1 rows": (lambda a: dict(draft_logits=a["draft_logits"][:, 1:]), "draft_logits"),
    "draft_logits K+2 rows": (lambda a: dict(draft_logits=torch.randn(B, K + 2, V)), "draft_logits"),
    "draft_logits batch": (lambda a: dict(draft_logits=a["draft_logits"][:1]), "draft_logits"),
    "draft_logits other V": (lambda a: dict(draft_logits=torch.randn(B, K, V + 1)), "draft_logits"),
    "draft_logits bfloat16": (lambda a: dict(draft_logits=a["draft_logits"].bfloat16()), "draft_logits"),
    "draft_logits on meta": (lambda a: dict(draft_logits=a["draft_logits"].to(META)), "draft_logits"),
    "draft_logits NaN": (lambda a: dict(draft_logits=with_value(a["draft_logits"], (1, 1, 3), torch.nan)), "draft_logits"),
    "draft_logits +inf": (lambda a: dict(draft_logits=with_value(a["draft_logits"], (0, 2, 0), torch.inf)), "draft_logits"),
    "draft_logits -inf row": (lambda a: dict(draft_logits=with_value(a["draft_logits"], (1, 0), -torch.inf)), "draft_logits"),
    # target_logits
    "target_logits K rows": (lambda a: dict(target_logits=a["target_logits"][:, :K]), "target_logits"),
    "target_logits float64": (lambda a: dict(target_logits=a["target_logits"].double()), "target_logits"),
    "target_logits empty V": (lambda a: dict(draft_logits=torch.randn(B, K, 0), target_logits=torch.randn(B, K + 1, 0)),
                              "target_logits"),
    "target_logits on meta": (lambda a: dict(target_logits=a["target_logits"].to(META)), "target"),
    "target_logits NaN": (lambda a: dict(target_logits=with_value(a["target_logits"], (0, 3, 4), torch.nan)), "target_logits"),
    "target_logits +inf": (lambda a: dict(target_logits=with_value(a["target_logits"], (1, 0, 10), torch.inf)), "target_logits"),
    "target_logits -inf row": (lambda a: dict(target_logits=with_value(a["target_logits"], (0, K), -torch.inf)), "target_logits"),
    # seeds, positions
    "seeds int32": (lambda a: dict(seeds=a["seeds"].int()), "seeds"),
    "seeds B+1": (lambda a: dict(seeds=torch.arange(B + 1)), "seeds"),
    "seeds 2-D": (lambda a: dict(seeds=a["seeds"][:, None]), "seeds"),
    "seeds on meta": (lambda a: dict(seeds=a["seeds"].to(META)), "seeds"),
    "positions int32": (lambda a: dict(positions=a["positions"].int()), "positions"),
    "positions float": (lambda a: dict(positions=a["positions"].float()), "positions"),
    "positions B-1": (lambda a: dict(positions=a["positions"][1:]), "positions"),
    "positions negative": (lambda a: dict(positions=with_value(a["positions"], 1, -1)), "positions"),
    "positions on meta": (lambda a: dict(positions=a["positions"].to(META)), "positions"),
    # backend
    "backend name": (lambda a: dict(backend="cuda"), "backend"),
}

SSS_CASES = {
    "ref_logits other V": (lambda a: dict(ref_logits=torch.randn(B, K + 1, V - 1)), "ref_logits"),
    "ref_logits K rows, draft K+1": (lambda a: dict(ref_logits=a["ref_logits"][:, :K]), "ref_logits"),
    "ref_logits float16": (lambda a: dict(ref_logits=a["ref_logits"].half()), "ref_logits"),
    "ref_logits on meta": (lambda a: dict(ref_logits=a["ref_logits"].to(META)), "ref_logits"),
    "ref_logits NaN": (lambda a: dict(ref_logits=with_value(a["ref_logits"], (0, 1, 1), torch.nan)), "ref_logits"),
    "ref_logits +inf": (lambda a: dict(ref_logits=with_value(a["ref_logits"], (0, 1, 1), torch.inf)), "ref_logits"),
    "ref_logits -inf where draft finite": (
        lambda a: dict(ref_logits=with_value(a["ref_logits"], (1, 2, 5), -torch.inf)), "ref_logits"),
    "shifted target zero everywhere": (
        lambda a: dict(draft_logits=with_value(a["draft_logits"], (0, 1, slice(0, 6)), -torch.inf),
                       ref_logits=with_value(a["ref_logits"], (0, 1, slice(0, 6)), -torch.inf),
                       target_logits=with_value(a["target_logits"], (0, 1, slice(6, None)), -torch.inf)),
        "draft_logits and target_logits"),
}

PROBS_CASES = {
    "draft_tokens id V": (lambda a: dict(draft_tokens=with_value(a["draft_tokens"], (0, 1), V)), "draft_tokens"),
    "draft_tokens int16": (lambda a: dict(draft_tokens=a["draft_tokens"].short()), "draft_tokens"),
    "draft_probs negative": (lambda a: dict(draft_probs=with_value(a["draft_probs"], (0, 0, 0), -0.1)), "draft_probs"),
    "draft_probs NaN": (lambda a: dict(draft_probs=with_value(a["draft_probs"], (1, 2, 3), torch.nan)), "draft_probs"),
    "draft_probs +inf": (lambda a: dict(draft_probs=with_value(a["draft_probs"], (1, 2, 3), torch.inf)), "draft_probs"),
    "draft_probs zero row": (lambda a: dict(draft_probs=with_value(a["draft_probs"], (1, 1), 0.0)), "draft_probs"),
    "draft_probs K+1 rows": (lambda a: dict(draft_probs=torch.rand(B, K + 1, V)), "draft_probs"),
    "draft_probs other V": (lambda a: dict(draft_probs=torch.rand(B, K, V + 2)), "draft_probs"),
    "draft_probs float16": (lambda a: dict(draft_probs=a["draft_probs"].half()), "draft_probs"),
    "draft_probs on meta": (lambda a: dict(draft_probs=a["draft_probs"].to(META)), "draft_probs"),
    "target_probs negative": (lambda a: dict(target_probs=with_value(a["target_probs"], (1, K, 2), -1.0)), "target_probs"),
    "target_probs zero row": (lambda a: dict(target_probs=with_value(a["target_probs"], (0, K), 0.0)), "target_probs"),
    "target_probs K rows": (lambda a: dict(target_probs=a["target_probs"][:, :K]), "target_probs"),
    "target_probs float64": (lambda a: dict(target_probs=a["target_probs"].double()), "target_probs"),
    "seeds B-1": (lambda a: dict(seeds=a["seeds"][1:]), "seeds"),
    "positions negative": (lambda a: dict(positions=with_value(a["positions"], 0, -5)), "positions"),
    "backend name": (lambda a: dict(backend="torch"), "backend"),
}

SAMPLE_CASES = {
    "logits 3-D": (lambda a: dict(logits=a["logits"][:, None]), "logits"),
    "logits 1-D": (lambda a: dict(logits=a["logits"][0]), "logits"),
    "logits float64": (lambda a: dict(logits=a["logits"].double()), "logits"),
    "logits int64": (lambda a: dict(logits=a["logits"].long()), "logits"),
    "logits empty V": (lambda a: dict(logits=torch.randn(B, 0)), "logits"),
    "logits on meta": (lambda a: dict(logits=a["logits"].to(META)), "logits"),
    "logits NaN": (lambda a: dict(logits=with_value(a["logits"], (1, 4), torch.nan)), "logits"),
    "logits +inf": (lambda a: dict(logits=with_value(a["logits"], (0, 4), torch.inf)), "logits"),
    "logits -inf row": (lambda a: dict(logits=with_value(a["logits"], 1, -torch.inf)), "logits"),
    "seeds B+1": (lambda a: dict(seeds=torch.arange(B + 1)), "seeds"),
    "seeds float": (lambda a: dict(seeds=a["seeds"].float()), "seeds"),
    "positions int32": (lambda a: dict(positions=a["positions"].int()), "positions"),
    "positions negative": (lambda a: dict(positions=with_value(a["positions"], 0, -1)), "positions"),
    "backend name": (lambda a: dict(backend="CPP"), "backend"),
}


@pytest.mark.parametrize("change, match", VERIFY_CASES.values(), ids=VERIFY_CASES.keys())
def test_speculative_verify_rejects(change, match):
    args = verify_args()
    with pytest.raises(ValueError, match=match):
        ops.speculative_verify(**dict(args, **change(args)))


@pytest.mark.parametrize("change, match", SSS_CASES.values(), ids=SSS_CASES.keys())
def test_speculative_verify_sss_rejects(change, match):
    args = sss_args()
    with pytest.raises(ValueError, match=match):
        ops.speculative_verify(**dict(args, **change(args)))


@pytest.mark.parametrize("change, match", PROBS_CASES.values(), ids=PROBS_CASES.keys())
def test_speculative_verify_probs_rejects(change, match):
    args = probs_args()
    with pytest.raises(ValueError, match=match):
        ops.speculative_verify_probs(**dict(args, **change(args)))


@pytest.mark.parametrize("change, match", SAMPLE_CASES.values(), ids=SAMPLE_CASES.keys())
def test_sample_rejects(change, match):
    args = sample_args()
    with pytest.raises(ValueError, match=match):
        ops.sample(**dict(args, **change(args)))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend"):
        ops.sample(**sample_args(), backend="triton")


def rows_args():
    return dict(tensors=[torch.randn(4, 3), torch.arange(8).view(4, 2)], keep=torch.tensor([0, 2]), dim=0)


ROWS_CASES = {
    "keep index B": (lambda a: dict(keep=torch.tensor([1, 4])), "keep"),
    "keep index -1": (lambda a: dict(keep=torch.tensor([-1, 2])), "keep"),
    "keep repeated": (lambda a: dict(keep=torch.tensor([2, 0, 2])), "keep"),
    "keep bool": (lambda a: dict(keep=torch.tensor([True, False, True, False])), "keep"),
    "keep float": (lambda a: dict(keep=torch.tensor([0.0, 2.0])), "keep"),
    "keep 2-D": (lambda a: dict(keep=torch.tensor([[0, 2]])), "keep"),
    "batch sizes differ": (lambda a: dict(tensors=[a["tensors"][0], torch.zeros(5, 2)]), r"tensors\[1\]"),
    "dim out of range": (lambda a: dict(dim=2), "dim"),
    "dim below -ndim": (lambda a: dict(dim=-3), "dim"),
    "one dim per tensor, wrong count": (lambda a: dict(dim=[0, 0, 0]), "dim"),
    "not a tensor": (lambda a: dict(tensors=[a["tensors"][0], [1, 2, 3, 4]]), r"tensors\[1\]"),
    "zero stride (expanded)": (lambda a: dict(tensors=[torch.zeros(1, 3).expand(4, 3)]), r"tensors\[0\]"),
    "second tensor on meta": (lambda a: dict(tensors=[a["tensors"][0], a["tensors"][1].to(META)]), r"tensors\[1\]"),
    "same tensor twice": (lambda a: dict(tensors=[a["tensors"][0], a["tensors"][1], a["tensors"][0]]), r"tensors\[2\]"),
    "backend name": (lambda a: dict(backend="triton-cpu"), "backend"),
}


@pytest.mark.parametrize("change, match", ROWS_CASES.values(), ids=ROWS_CASES.keys())
def test_compact_rows_rejects(change, match):
    args = rows_args()
    with pytest.raises(ValueError, match=match):
        ops.compact_rows(**dict(args, **change(args)))


def columns_args():
    return dict(tensors=[torch.randn(2, 3, 5, 4), torch.arange(10).view(2, 5)],
                keep_mask=torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]]).bool(), dim=[2, 1])


COLUMNS_CASES = {
    "keep_mask int64": (lambda a: dict(keep_mask=a["keep_mask"].long()), "keep_mask"),
    "keep_mask 1-D": (lambda a: dict(keep_mask=a["keep_mask"][0]), "keep_mask"),
    "keep_mask other S": (lambda a: dict(keep_mask=a["keep_mask"][:, :4]), "keep_mask"),
    "keep_mask other B": (lambda a: dict(keep_mask=a["keep_mask"][:1]), "keep_mask"),
    "dim 0": (lambda a: dict(dim=[0, 1]), "dim"),
    "dim out of range": (lambda a: dict(dim=[4, 1]), "dim"),
    "one dim for both, wrong for one": (lambda a: dict(dim=2), "dim"),
    "one dim per tensor, wrong count": (lambda a: dict(dim=[2]), "dim"),
    "tensor on meta": (lambda a: dict(tensors=[a["tensors"][0].to(META), a["tensors"][1]]), r"tensors\[0\]"),
    "zero stride (expanded)": (lambda a: dict(tensors=[torch.zeros(2, 1).expand(2, 5)], dim=1), r"tensors\[0\]"),
    "backend name": (lambda a: dict(backend=""), "backend"),
    "same tensor twice": (lambda a: dict(tensors=[a["tensors"][1], a["tensors"][1]], dim=1), r"tensors\[1\]"),
    "cpp backend, meta tensors": (
        lambda a: dict(tensors=[a["tensors"][0].to(META)], keep_mask=a["keep_mask"].to(META), dim=2, backend="cpp"),
        "backend"),
}


@pytest.mark.parametrize("change, match", COLUMNS_CASES.values(), ids=COLUMNS_CASES.keys())
def test_compact_columns_rejects(change, match):
    args = columns_args()
    with pytest.raises(ValueError, match=match):
        ops.compact_columns(**dict(args, **change(args)))
