"""The ops under torch.compile(fullgraph=True) give the eager results, and pass torch.library.opcheck."""
import pytest
import torch

from specalign import ops

B, K, V = 3, 2, 40


def verify_inputs(sss):
    g = torch.Generator().manual_seed(1)
    draft_rows = K + 1 if sss else K
    return dict(draft_tokens=torch.randint(0, V, (B, K), generator=g), draft_logits=torch.randn(B, draft_rows, V, generator=g),
                target_logits=torch.randn(B, K + 1, V, generator=g),
                ref_logits=torch.randn(B, draft_rows, V, generator=g) if sss else None,
                seeds=torch.tensor([4, -9, 2**40]), positions=torch.tensor([0, 7, 2**32 - 1]))


def probs_inputs():
    args = verify_inputs(sss=False)
    return dict(draft_tokens=args["draft_tokens"], draft_probs=torch.softmax(args["draft_logits"], -1),
                target_probs=torch.softmax(args["target_logits"], -1), seeds=args["seeds"], positions=args["positions"])


def sample_inputs():
    args = verify_inputs(sss=False)
    return dict(logits=args["target_logits"][:, 0].contiguous(), seeds=args["seeds"], positions=args["positions"])


def rows_inputs():
    g = torch.Generator().manual_seed(2)
    return dict(tensors=[torch.randn(5, 2, 3, 4, generator=g), torch.randint(0, 9, (5, 6), generator=g)],
                keep=torch.tensor([1, 3, 4]), dims=[0, 0])


def columns_inputs():
    g = torch.Generator().manual_seed(3)
    return dict(tensors=[torch.randn(3, 2, 6, 4, generator=g), torch.randint(1, 9, (3, 6), generator=g)],
                keep_mask=torch.rand(3, 6, generator=g) < 0.6, dims=[2, 1])


def clone_inputs(inputs):
    def clone(value):
        if isinstance(value, torch.Tensor):
            return value.clone()
        if isinstance(value, list):
            return [clone(v) for v in value]
        return value

    return {k: clone(v) for k, v in inputs.items()}


def assert_same(result, expected):
    if isinstance(result, torch.Tensor):
        assert torch.equal(result, expected)
    elif isinstance(result, dict):
        assert result.keys() == expected.keys()
        for key in result:
            assert_same(result[key], expected[key])
    elif isinstance(result, (tuple, list)):
        assert len(result) == len(expected)
        for r, e in zip(result, expected):
            assert_same(r, e)
    else:
        assert result == expected


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: no shapes marked dynamic by an earlier test's recompilation."""
    torch._dynamo.reset()


def run_compiled_and_eager(function, inputs, dynamic):
    """(compiled result, compiled inputs after the call, eager result, eager inputs after the call)."""
    compiled_inputs, eager_inputs = clone_inputs(inputs), clone_inputs(inputs)
    compiled = torch.compile(function, fullgraph=True, dynamic=dynamic, backend="aot_eager")(**compiled_inputs)
    eager = function(**eager_inputs)
    return compiled, compiled_inputs, eager, eager_inputs


RAW_OPS = {
    "speculative_verify": (lambda **a: torch.ops.specalign.speculative_verify(**a), lambda: verify_inputs(sss=False)),
    "speculative_verify SSS": (lambda **a: torch.ops.specalign.speculative_verify(**a), lambda: verify_inputs(sss=True)),
    "speculative_verify_probs": (lambda **a: torch.ops.specalign.speculative_verify_probs(**a), probs_inputs),
    "sample": (lambda **a: torch.ops.specalign.sample(**a), sample_inputs),
    "compact_rows": (lambda **a: torch.ops.specalign.compact_rows(**a), rows_inputs),
    "compact_columns": (lambda **a: torch.ops.specalign.compact_columns(**a), columns_inputs),
}


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("function, make_inputs", RAW_OPS.values(), ids=RAW_OPS.keys())
def test_op_compiles_to_the_eager_result(function, make_inputs, dynamic):
    compiled, compiled_inputs, eager, eager_inputs = run_compiled_and_eager(function, make_inputs(), dynamic)
    assert_same(compiled, eager)
    assert_same(compiled_inputs, eager_inputs)  # the in-place ops mutated their inputs the same way


def wrapped_verify(**a):
    return tuple(ops.speculative_verify(**a, check_values=False))


def wrapped_verify_probs(**a):
    return tuple(ops.speculative_verify_probs(**a, check_values=False))


def wrapped_sample(**a):
    return ops.sample(**a, check_values=False)


def wrapped_compact_columns(tensors, keep_mask, dims):
    return ops.compact_columns(tensors, keep_mask, dims)


WRAPPERS = {
    "speculative_verify": (wrapped_verify, lambda: verify_inputs(sss=False)),
    "speculative_verify SSS": (wrapped_verify, lambda: verify_inputs(sss=True)),
    "speculative_verify_probs": (wrapped_verify_probs, probs_inputs),
    "sample": (wrapped_sample, sample_inputs),
    "compact_columns": (wrapped_compact_columns, columns_inputs),
}


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("function, make_inputs", WRAPPERS.values(), ids=WRAPPERS.keys())
def test_wrapper_without_value_checks_compiles_to_the_eager_result(function, make_inputs, dynamic):
    """check_values=False promises no host sync, so the public wrappers trace as one graph."""
    compiled, compiled_inputs, eager, eager_inputs = run_compiled_and_eager(function, make_inputs(), dynamic)
    assert_same(compiled, eager)
    assert_same(compiled_inputs, eager_inputs)


OPCHECKS = {
    "speculative_verify": (torch.ops.specalign.speculative_verify.default, lambda: verify_inputs(sss=False)),
    "speculative_verify SSS": (torch.ops.specalign.speculative_verify.default, lambda: verify_inputs(sss=True)),
    "speculative_verify_probs": (torch.ops.specalign.speculative_verify_probs.default, probs_inputs),
    "sample": (torch.ops.specalign.sample.default, sample_inputs),
    "compact_rows": (torch.ops.specalign.compact_rows.default, rows_inputs),
    "compact_columns": (torch.ops.specalign.compact_columns.default, columns_inputs),
}


@pytest.mark.parametrize("op, make_inputs", OPCHECKS.values(), ids=OPCHECKS.keys())
def test_opcheck(op, make_inputs):
    """Schema (declared mutations), fake implementation, autograd registration, AOT dispatch."""
    torch.library.opcheck(op, tuple(make_inputs().values()))
