"""Bad arguments raise a ValueError or TypeError naming the argument: types, shapes, dtypes and devices
before any kernel runs, values from the kernels' own checks (on every backend)."""
import pytest
import torch

from specalign import ops

B, K, V = 2, 3, 11
META = torch.device("meta")  # a second device on a CPU-only machine


def verify_args():
    """Drafts whose distribution is the target's: every draft is accepted, so the verification reads
    every row (up to a row a bad value makes it reject at), the bonus row included."""
    g = torch.Generator().manual_seed(0)
    target_logits = torch.randn(B, K + 1, V, generator=g)
    return dict(draft_tokens=torch.randint(0, V, (B, K), generator=g), draft_logits=target_logits[:, :K].clone(),
                target_logits=target_logits, ref_logits=None, seeds=torch.arange(B), positions=torch.zeros(B, dtype=torch.int64))


def sss_args():
    """SSS with target == ref: the shifted target is the draft's, so again every draft is accepted."""
    ref_logits = torch.randn(B, K + 1, V, generator=torch.Generator().manual_seed(1))
    return dict(verify_args(), draft_logits=torch.randn(B, K + 1, V), target_logits=ref_logits.clone(), ref_logits=ref_logits)


def probs_args():
    args = verify_args()
    return dict(draft_tokens=args["draft_tokens"], draft_probs=torch.softmax(args["draft_logits"], -1),
                target_probs=torch.softmax(args["target_logits"], -1), seeds=args["seeds"], positions=args["positions"])


def sample_args():
    return dict(logits=torch.randn(B, V), seeds=torch.arange(B), positions=torch.zeros(B, dtype=torch.int64))


def sample_with_stats_args():
    return sample_args()


def with_value(tensor, index, value):
    tensor = tensor.clone()
    tensor[index] = value
    return tensor


def at_draft(a, b, j):
    """The index of row b's j-th drafted token in a [B, rows, V] tensor: an entry acceptance reads."""
    return b, j, int(a["draft_tokens"][b, j])


VERIFY_CASES = {
    # draft_tokens
    "draft_tokens float": (lambda a: dict(draft_tokens=a["draft_tokens"].float()), "draft_tokens"),
    "draft_tokens 1-D": (lambda a: dict(draft_tokens=a["draft_tokens"][0]), "draft_tokens"),
    "draft_tokens K=0": (lambda a: dict(draft_tokens=a["draft_tokens"][:, :0]), "draft_tokens"),
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
    # target_logits
    "target_logits K rows": (lambda a: dict(target_logits=a["target_logits"][:, :K]), "target_logits"),
    "target_logits float64": (lambda a: dict(target_logits=a["target_logits"].double()), "target_logits"),
    "target_logits empty V": (lambda a: dict(draft_logits=torch.randn(B, K, 0), target_logits=torch.randn(B, K + 1, 0)),
                              "target_logits"),
    "target_logits on meta": (lambda a: dict(target_logits=a["target_logits"].to(META)), "target"),
    # seeds, positions
    "seeds int32": (lambda a: dict(seeds=a["seeds"].int()), "seeds"),
    "seeds B+1": (lambda a: dict(seeds=torch.arange(B + 1)), "seeds"),
    "seeds 2-D": (lambda a: dict(seeds=a["seeds"][:, None]), "seeds"),
    "seeds on meta": (lambda a: dict(seeds=a["seeds"].to(META)), "seeds"),
    "positions int32": (lambda a: dict(positions=a["positions"].int()), "positions"),
    "positions float": (lambda a: dict(positions=a["positions"].float()), "positions"),
    "positions B-1": (lambda a: dict(positions=a["positions"][1:]), "positions"),
    "positions on meta": (lambda a: dict(positions=a["positions"].to(META)), "positions"),
    # backend
    "backend name": (lambda a: dict(backend="cuda"), "backend"),
}

SSS_CASES = {
    "ref_logits other V": (lambda a: dict(ref_logits=torch.randn(B, K + 1, V - 1)), "ref_logits"),
    "ref_logits K rows, draft K+1": (lambda a: dict(ref_logits=a["ref_logits"][:, :K]), "ref_logits"),
    "ref_logits float16": (lambda a: dict(ref_logits=a["ref_logits"].half()), "ref_logits"),
    "ref_logits on meta": (lambda a: dict(ref_logits=a["ref_logits"].to(META)), "ref_logits"),
}

PROBS_CASES = {
    "draft_tokens int16": (lambda a: dict(draft_tokens=a["draft_tokens"].short()), "draft_tokens"),
    "draft_probs K+1 rows": (lambda a: dict(draft_probs=torch.rand(B, K + 1, V)), "draft_probs"),
    "draft_probs other V": (lambda a: dict(draft_probs=torch.rand(B, K, V + 2)), "draft_probs"),
    "draft_probs float16": (lambda a: dict(draft_probs=a["draft_probs"].half()), "draft_probs"),
    "draft_probs on meta": (lambda a: dict(draft_probs=a["draft_probs"].to(META)), "draft_probs"),
    "target_probs K rows": (lambda a: dict(target_probs=a["target_probs"][:, :K]), "target_probs"),
    "target_probs float64": (lambda a: dict(target_probs=a["target_probs"].double()), "target_probs"),
    "seeds B-1": (lambda a: dict(seeds=a["seeds"][1:]), "seeds"),
    "backend name": (lambda a: dict(backend="torch"), "backend"),
}

SAMPLE_CASES = {
    "logits 3-D": (lambda a: dict(logits=a["logits"][:, None]), "logits"),
    "logits 1-D": (lambda a: dict(logits=a["logits"][0]), "logits"),
    "logits float64": (lambda a: dict(logits=a["logits"].double()), "logits"),
    "logits int64": (lambda a: dict(logits=a["logits"].long()), "logits"),
    "logits empty V": (lambda a: dict(logits=torch.randn(B, 0)), "logits"),
    "logits on meta": (lambda a: dict(logits=a["logits"].to(META)), "logits"),
    "seeds B+1": (lambda a: dict(seeds=torch.arange(B + 1)), "seeds"),
    "seeds float": (lambda a: dict(seeds=a["seeds"].float()), "seeds"),
    "positions int32": (lambda a: dict(positions=a["positions"].int()), "positions"),
    "backend name": (lambda a: dict(backend="CPP"), "backend"),
}


# Values: found by the kernels, so run on more than one backend. The bad value sits in a row the op reads.
VERIFY_VALUE_CASES = {
    "draft_tokens id V": (lambda a: dict(draft_tokens=with_value(a["draft_tokens"], (1, 2), V)), "draft_tokens"),
    "draft_tokens id -1": (lambda a: dict(draft_tokens=with_value(a["draft_tokens"], (0, 0), -1)), "draft_tokens"),
    "positions negative": (lambda a: dict(positions=with_value(a["positions"], 1, -1)), "positions"),
    "draft_logits NaN": (lambda a: dict(draft_logits=with_value(a["draft_logits"], (1, 1, 3), torch.nan)), "draft_logits"),
    "draft_logits +inf": (lambda a: dict(draft_logits=with_value(a["draft_logits"], (0, 2, 0), torch.inf)), "draft_logits"),
    "draft_logits -inf row": (lambda a: dict(draft_logits=with_value(a["draft_logits"], (1, 0), -torch.inf)), "draft_logits"),
    "target_logits NaN": (lambda a: dict(target_logits=with_value(a["target_logits"], (0, 1, 4), torch.nan)), "target_logits"),
    "target_logits NaN, bonus row": (
        lambda a: dict(target_logits=with_value(a["target_logits"], (0, K, 4), torch.nan)), "target_logits"),
    "target_logits +inf": (lambda a: dict(target_logits=with_value(a["target_logits"], (1, 0, 10), torch.inf)), "target_logits"),
    "target_logits -inf row": (lambda a: dict(target_logits=with_value(a["target_logits"], (0, 2), -torch.inf)), "target_logits"),
    "target_logits -inf row, bonus row": (
        lambda a: dict(target_logits=with_value(a["target_logits"], (0, K), -torch.inf)), "target_logits"),
}

SSS_VALUE_CASES = {
    "ref_logits NaN": (lambda a: dict(ref_logits=with_value(a["ref_logits"], (0, 1, 1), torch.nan)), "ref_logits"),
    "ref_logits +inf": (lambda a: dict(ref_logits=with_value(a["ref_logits"], (0, 1, 1), torch.inf)), "ref_logits"),
    "ref_logits -inf where draft finite": (
        lambda a: dict(ref_logits=with_value(a["ref_logits"], (1, 2, 5), -torch.inf)), "ref_logits"),
    "ref_logits NaN, bonus row": (lambda a: dict(ref_logits=with_value(a["ref_logits"], (1, K, 0), torch.nan)), "ref_logits"),
    "draft_logits NaN, bonus row": (
        lambda a: dict(draft_logits=with_value(a["draft_logits"], (0, K, 2), torch.nan)), "draft_logits"),
    "shifted target zero everywhere": (
        lambda a: dict(draft_logits=with_value(a["draft_logits"], (0, 1, slice(0, 6)), -torch.inf),
                       ref_logits=with_value(a["ref_logits"], (0, 1, slice(0, 6)), -torch.inf),
                       target_logits=with_value(a["target_logits"], (0, 1, slice(6, None)), -torch.inf)),
        "draft_logits and target_logits"),
}

PROBS_VALUE_CASES = {
    "draft_tokens id V": (lambda a: dict(draft_tokens=with_value(a["draft_tokens"], (0, 1), V)), "draft_tokens"),
    "positions negative": (lambda a: dict(positions=with_value(a["positions"], 0, -5)), "positions"),
    "draft_probs negative": (lambda a: dict(draft_probs=with_value(a["draft_probs"], at_draft(a, 0, 0), -0.1)), "draft_probs"),
    "draft_probs NaN": (lambda a: dict(draft_probs=with_value(a["draft_probs"], at_draft(a, 1, 2), torch.nan)), "draft_probs"),
    "draft_probs +inf": (lambda a: dict(draft_probs=with_value(a["draft_probs"], at_draft(a, 1, 2), torch.inf)), "draft_probs"),
    "draft_probs zero row": (lambda a: dict(draft_probs=with_value(a["draft_probs"], (1, 1), 0.0)), "draft_probs"),
    "target_probs NaN": (lambda a: dict(target_probs=with_value(a["target_probs"], at_draft(a, 0, 1), torch.nan)), "target_probs"),
    "target_probs negative": (lambda a: dict(target_probs=with_value(a["target_probs"], (1, K, 2), -1.0)), "target_probs"),
    "target_probs zero row": (lambda a: dict(target_probs=with_value(a["target_probs"], (0, K), 0.0)), "target_probs"),
}

SAMPLE_VALUE_CASES = {
    "logits NaN": (lambda a: dict(logits=with_value(a["logits"], (1, 4), torch.nan)), "logits"),
    "logits +inf": (lambda a: dict(logits=with_value(a["logits"], (0, 4), torch.inf)), "logits"),
    "logits -inf row": (lambda a: dict(logits=with_value(a["logits"], 1, -torch.inf)), "logits"),
    "positions negative": (lambda a: dict(positions=with_value(a["positions"], 0, -1)), "positions"),
}

VALUE_CASES = [(op, make_args, name, change, match) for op, make_args, cases in (
    (ops.speculative_verify, verify_args, VERIFY_VALUE_CASES), (ops.speculative_verify, sss_args, SSS_VALUE_CASES),
    (ops.speculative_verify_probs, probs_args, PROBS_VALUE_CASES), (ops.sample, sample_args, SAMPLE_VALUE_CASES),
    (ops.sample_with_stats, sample_with_stats_args, SAMPLE_VALUE_CASES))
    for name, (change, match) in cases.items()]
VALUE_IDS = [f"{make_args.__name__.removesuffix('_args')}: {name}" for _, make_args, name, _, _ in VALUE_CASES]


@pytest.mark.parametrize("backend", ["reference", "cpp"])  # test_value_checks.py ties Triton's flags to these
@pytest.mark.parametrize("op, make_args, name, change, match", VALUE_CASES, ids=VALUE_IDS)
def test_bad_values_raise(op, make_args, name, change, match, backend):
    args = make_args()
    with pytest.raises(ValueError, match=match):
        op(**dict(args, **change(args)), backend=backend)


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


@pytest.mark.parametrize("change, match", SAMPLE_CASES.values(), ids=SAMPLE_CASES.keys())
def test_sample_with_stats_rejects(change, match):
    args = sample_args()
    with pytest.raises(ValueError, match=match):
        ops.sample_with_stats(**dict(args, **change(args)))


TYPE_CASES = {
    "seeds an int": (ops.sample, sample_args, dict(seeds=3), "seeds"),
    "positions a list": (ops.sample, sample_args, dict(positions=[0, 0]), "positions"),
    "logits a list": (ops.sample, sample_args, dict(logits=[[0.0, 1.0], [1.0, 0.0]]), "logits"),
    "draft_tokens a list": (ops.speculative_verify, verify_args, dict(draft_tokens=[[0, 1, 2], [3, 4, 5]]), "draft_tokens"),
    "ref_logits an array": (ops.speculative_verify, sss_args, dict(ref_logits=torch.zeros(B, K + 1, V).numpy()), "ref_logits"),
    "verify seeds an int": (ops.speculative_verify, verify_args, dict(seeds=3), "seeds"),
    "target_probs a float": (ops.speculative_verify_probs, probs_args, dict(target_probs=0.5), "target_probs"),
    "sample_with_stats seeds an int": (ops.sample_with_stats, sample_args, dict(seeds=3), "seeds"),
    "sample_with_stats logits a list": (ops.sample_with_stats, sample_args, dict(logits=[[0.0, 1.0]]), "logits"),
    "fork_rows index a list": (ops.fork_rows, lambda: fork_args(), dict(index=[0, 0, 2]), "index"),
    "fork_rows tensors a bare tensor": (ops.fork_rows, lambda: fork_args(), dict(tensors=torch.zeros(4, 3)), "tensors"),
}


@pytest.mark.parametrize("op, make_args, change, match", TYPE_CASES.values(), ids=TYPE_CASES.keys())
def test_arguments_of_the_wrong_type_raise_type_errors(op, make_args, change, match):
    with pytest.raises(TypeError, match=match):
        op(**dict(make_args(), **change))


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


def fork_args():
    return dict(tensors=[torch.randn(4, 3), torch.arange(8).view(4, 2)], index=torch.tensor([0, 0, 2]), dim=0)


FORK_CASES = {
    "index row B": (lambda a: dict(index=torch.tensor([1, 4])), "index"),
    "index row -1": (lambda a: dict(index=torch.tensor([-1, 2])), "index"),
    "more rows than the tensors hold": (lambda a: dict(index=torch.zeros(5, dtype=torch.long)), "index has 5 rows"),
    "index bool": (lambda a: dict(index=torch.tensor([True, False, True, False])), "index"),
    "index float": (lambda a: dict(index=torch.tensor([0.0, 2.0])), "index"),
    "index 2-D": (lambda a: dict(index=torch.tensor([[0, 2]])), "index"),
    "batch sizes differ": (lambda a: dict(tensors=[a["tensors"][0], torch.zeros(5, 2)]), r"tensors\[1\]"),
    "dim out of range": (lambda a: dict(dim=2), "dim"),
    "one dim per tensor, wrong count": (lambda a: dict(dim=[0]), "dim"),
    "zero stride (expanded)": (lambda a: dict(tensors=[torch.zeros(1, 3).expand(4, 3)]), r"tensors\[0\]"),
    "second tensor on meta": (lambda a: dict(tensors=[a["tensors"][0], a["tensors"][1].to(META)]), r"tensors\[1\]"),
    "same tensor twice": (lambda a: dict(tensors=[a["tensors"][0], a["tensors"][1], a["tensors"][0]]), r"tensors\[2\]"),
    "backend name": (lambda a: dict(backend="cuda"), "backend"),
}


@pytest.mark.parametrize("change, match", FORK_CASES.values(), ids=FORK_CASES.keys())
def test_fork_rows_rejects(change, match):
    args = fork_args()
    with pytest.raises(ValueError, match=match):
        ops.fork_rows(**dict(args, **change(args)))


def test_compact_rows_rejects_a_bare_tensor_and_leaves_it_alone():
    """A tensor is not a list of tensors: iterating it would compact each row's columns instead."""
    x = torch.arange(12).view(4, 3)
    with pytest.raises(TypeError, match="tensors"):
        ops.compact_rows(x, torch.tensor([1, 3]))
    assert torch.equal(x, torch.arange(12).view(4, 3))


def test_compact_rows_rejects_keep_of_the_wrong_type():
    with pytest.raises(TypeError, match="keep"):
        ops.compact_rows([torch.zeros(4, 3)], [0, 2])


def overlapping_views():
    """Views of one buffer that share memory without being the same tensor, and interleaved ones."""
    buffer = torch.arange(40.0).view(8, 5)
    return {
        "rows 0-4 and 2-6": ([buffer[:5], buffer[2:7]], r"tensors\[1\] and tensors\[0\] share memory"),
        "a view inside another": ([buffer[:, 1:3], buffer[:4]], r"tensors\[1\] and tensors\[0\] share memory"),
        "interleaved columns": ([buffer[:4, ::2], buffer[:4, 1::2]], "share memory"),
    }


@pytest.mark.parametrize("case", list(overlapping_views()))
def test_compaction_rejects_tensors_that_share_memory(case):
    tensors, match = overlapping_views()[case]
    before = [t.clone() for t in tensors]
    with pytest.raises(ValueError, match=match):
        ops.compact_rows(tensors, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match=match):
        ops.compact_columns([t[:, :2] for t in tensors], torch.ones(4, 2, dtype=torch.bool), dim=1)
    with pytest.raises(ValueError, match=match):
        ops.fork_rows(tensors, torch.tensor([0, 0, 3]))
    assert all(torch.equal(t, b) for t, b in zip(tensors, before)), "nothing may move before the error"


def test_compaction_accepts_disjoint_views_of_one_buffer():
    buffer = torch.arange(40.0).view(8, 5)
    keys, values = buffer[:4], buffer[4:]
    ops.compact_rows([keys, values], torch.tensor([1, 3]))
    assert torch.equal(keys[:2], torch.arange(40.0).view(8, 5)[[1, 3]])
    assert torch.equal(values[:2], torch.arange(40.0).view(8, 5)[[5, 7]])


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


@pytest.mark.parametrize("change, match", [(dict(tensors=torch.zeros(2, 5)), "tensors"),
                                           (dict(keep_mask=[[True] * 5] * 2), "keep_mask")], ids=["bare tensor", "mask a list"])
def test_compact_columns_rejects_arguments_of_the_wrong_type(change, match):
    with pytest.raises(TypeError, match=match):
        ops.compact_columns(**dict(columns_args(), **change))
