"""specalign.ops.compact_rows: in-place row compaction, bit-identical to the reference on every backend,
for mixed dtypes, batch dimensions and non-contiguous views in one call."""
import pytest
import torch

from specalign import ops


def make_buffers(batch, generator):
    """(name, buffer, view of the buffer passed to the op, batch dim of the view) for one call.

    The buffers own the memory; comparing whole buffers also checks that nothing outside the views
    was written.
    """
    def randn(*shape, dtype=torch.float32):
        return torch.randn(shape, generator=generator).to(dtype)

    return [
        ("keys float32", randn(batch, 2, 5, 4), lambda t: t, 0),
        ("values bfloat16, slice of a longer cache", randn(batch, 2, 8, 4, dtype=torch.bfloat16), lambda t: t[:, :, :5], 0),
        ("float16 cache, batch in dim 1", randn(3, batch, 6, dtype=torch.float16), lambda t: t, 1),
        ("ids int64", torch.randint(0, 1000, (batch, 7), generator=generator), lambda t: t, 0),
        ("mask bool", torch.randint(0, 2, (batch, 7), generator=generator).bool(), lambda t: t, 0),
        ("state, transposed", randn(3, batch), lambda t: t.t(), 0),
        ("strided rows of a wider buffer", randn(2 * batch, 3), lambda t: t[::2], 0),
        ("per-row scalar, negative dim", torch.randint(0, 50, (batch,), generator=generator, dtype=torch.int32), lambda t: t, -1),
        ("five column dims that do not merge", randn(batch, 4, 4, 4, 4, 4), lambda t: t[:, ::2, ::2, ::2, ::2, ::2], 0),
    ]


def keep_sets(batch, generator):
    shuffled = torch.randperm(batch, generator=generator)
    return {
        "empty": torch.tensor([], dtype=torch.long),
        "full": torch.arange(batch),
        "half, unsorted": shuffled[: batch // 2],
        "first row": torch.tensor([0]),
        "last row": torch.tensor([batch - 1]),
        "prefix already in place": torch.arange(batch // 2),
        "all but the first": torch.arange(1, batch),
        "int32 indices": shuffled[: batch // 3].int(),
    }


def run_compaction(backend, batch, keep, generator):
    """Run the op and the reference on copies of the same buffers; return both sets of buffers and
    the views the op returned."""
    layouts = make_buffers(batch, generator)
    originals = [buffer.clone() for _, buffer, _, _ in layouts]
    views = [view(buffer) for _, buffer, view, _ in layouts]
    expected_buffers = [buffer.clone() for buffer in originals]
    expected_views = [view(buffer) for (_, _, view, _), buffer in zip(layouts, expected_buffers)]
    dims = [dim for _, _, _, dim in layouts]
    returned = ops.compact_rows(views, keep, dims, backend=backend)
    ops.compact_rows(expected_views, keep, dims, backend="reference")
    return layouts, originals, expected_buffers, returned


def check_compaction(backend, batch, keep_name, generator):
    keep = keep_sets(batch, generator)[keep_name]
    layouts, originals, expected_buffers, returned = run_compaction(backend, batch, keep, generator)
    kept = torch.sort(keep.long()).values
    for (name, buffer, view, dim), original, expected, result in zip(layouts, originals, expected_buffers, returned):
        assert torch.equal(buffer, expected), f"{name}: differs from the reference"
        assert result.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr(), f"{name}: not a view"
        assert torch.equal(result, view(original).index_select(dim, kept)), f"{name}: wrong rows kept"


KEEP_NAMES = list(keep_sets(8, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("keep_name", KEEP_NAMES)
def test_reference_keeps_the_rows_in_order(keep_name, generator):
    check_compaction("reference", 9, keep_name, generator)


@pytest.mark.parametrize("keep_name", KEEP_NAMES)
@pytest.mark.parametrize("batch", [1, 9, 64])
def test_cpp_matches_reference(batch, keep_name, generator):
    check_compaction("cpp", batch, keep_name, generator)


@pytest.mark.parametrize("keep_name", ["empty", "full", "half, unsorted", "all but the first"])
def test_triton_matches_reference(keep_name, generator):
    check_compaction("triton", 5, keep_name, generator)


def test_default_backend_is_cpp_on_cpu(generator):
    keep = torch.tensor([2, 5, 6])
    layouts, _, expected_buffers, _ = run_compaction(None, 8, keep, generator)
    for (name, buffer, _, _), expected in zip(layouts, expected_buffers):
        assert torch.equal(buffer, expected), name


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_large_rows_are_copied_whole(backend, generator):
    """Rows far larger than one block: the copy covers every element of every kept row."""
    batch, row = (6, 3000) if backend == "triton" else (40, 70_001)
    keys = torch.randn(batch, row, generator=generator)
    expected = keys.clone()
    keep = torch.randperm(batch, generator=generator)[: batch // 2]
    ops.compact_rows([keys], keep, backend=backend)
    ops.compact_rows([expected], keep, backend="reference")
    assert torch.equal(keys, expected)


def test_no_tensors_is_a_no_op():
    assert ops.compact_rows([], torch.tensor([0])) == []
