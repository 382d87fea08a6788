"""specalign.ops.compact_columns: per-row right-alignment of kept positions, in place, bit-identical to
the reference on every backend, for mixed dtypes, sequence dimensions and non-contiguous views."""
import pytest
import torch

from specalign import ops


def make_buffers(batch, length, generator):
    """(name, buffer, view of the buffer passed to the op, sequence dim of the view) for one call.

    Comparing whole buffers also checks that nothing outside the views was written.
    """
    def randn(*shape, dtype=torch.float32):
        return torch.randn(shape, generator=generator).to(dtype)

    return [
        ("keys float32 [B, H, S, D]", randn(batch, 2, length, 4), lambda t: t, 2),
        ("values bfloat16, slice of a longer cache", randn(batch, 2, length + 3, 4, dtype=torch.bfloat16),
         lambda t: t[:, :, :length], 2),
        ("float16 [B, D, S] from a transposed [B, S, D]", randn(batch, length, 3, dtype=torch.float16),
         lambda t: t.transpose(1, 2), 2),
        ("ids int64 [B, S]", torch.randint(1, 1000, (batch, length), generator=generator), lambda t: t, 1),
        ("mask bool [B, S], negative dim", torch.rand(batch, length, generator=generator) < 0.5, lambda t: t, -1),
        ("int32 [B, S, 2], strided sequence", torch.randint(1, 50, (batch, 2 * length, 2), generator=generator,
                                                           dtype=torch.int32), lambda t: t[:, ::2], 1),
        ("five column dims that do not merge", randn(batch, 4, 4, 4, 4, 4, length),
         lambda t: t[:, ::2, ::2, ::2, ::2, ::2], 6),
    ]


def make_keep_mask(batch, length, pattern, generator):
    mask = torch.rand(batch, length, generator=generator) < 0.6
    if pattern == "all kept":
        mask[:] = True
    elif pattern == "none kept":
        mask[:] = False
    elif pattern == "mixed rows":  # a row keeping everything, one keeping nothing, one keeping the last only
        mask[0] = True
        mask[-1] = False
        if batch > 2:
            mask[1] = False
            mask[1, -1] = True
    elif pattern == "rejected drafts at the end":  # what verification leaves: a ragged tail to drop
        drop = torch.randint(0, 4, (batch, 1), generator=generator)
        mask = torch.arange(length) < length - drop
    return mask


def run_compaction(backend, batch, length, pattern, generator):
    layouts = make_buffers(batch, length, generator)
    keep_mask = make_keep_mask(batch, length, pattern, generator)
    originals = [buffer.clone() for _, buffer, _, _ in layouts]
    expected_buffers = [buffer.clone() for buffer in originals]
    dims = [dim for _, _, _, dim in layouts]
    lengths, attention_mask = ops.compact_columns([view(b) for (_, b, view, _) in layouts], keep_mask, dims, backend=backend)
    expected = ops.compact_columns([view(b) for (_, _, view, _), b in zip(layouts, expected_buffers)], keep_mask, dims,
                                   backend="reference")
    return layouts, keep_mask, originals, expected_buffers, (lengths, attention_mask), expected


def check_compaction(backend, batch, length, pattern, generator):
    layouts, keep_mask, originals, expected_buffers, result, expected = run_compaction(
        backend, batch, length, pattern, generator)
    lengths, attention_mask = result
    assert lengths.dtype == attention_mask.dtype == torch.int64
    assert torch.equal(lengths, expected[0])
    assert torch.equal(attention_mask, expected[1])
    for (name, buffer, _, _), expected_buffer in zip(layouts, expected_buffers):
        assert torch.equal(buffer, expected_buffer), f"{name}: differs from the reference"
    return layouts, keep_mask, originals, lengths, attention_mask


PATTERNS = ["random", "all kept", "none kept", "mixed rows", "rejected drafts at the end"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_reference_right_aligns_kept_positions(pattern, generator):
    batch, length = 5, 9
    layouts, keep_mask, originals, lengths, attention_mask = check_compaction("reference", batch, length, pattern, generator)
    assert torch.equal(lengths, keep_mask.sum(-1))
    for b in range(batch):
        n = int(lengths[b])
        assert attention_mask[b].tolist() == [0] * (length - n) + [1] * n
        kept_positions = keep_mask[b].nonzero().squeeze(-1)
        for (name, buffer, view, dim), original in zip(layouts, originals):
            row, original_row = view(buffer)[b], view(original)[b]
            sequence_dim = dim % view(buffer).dim() - 1
            assert torch.equal(row.narrow(sequence_dim, length - n, n), original_row.index_select(sequence_dim, kept_positions)), name
            assert not bool(row.narrow(sequence_dim, 0, length - n).any()), f"{name}: freed positions not zeroed"


def test_reference_matches_the_documented_example():
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    lengths, mask = ops.compact_columns([ids], torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1]]).bool(), dim=1, backend="reference")
    assert ids.tolist() == [[0, 0, 1, 2], [0, 5, 7, 8]]
    assert lengths.tolist() == [2, 3]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("batch, length", [(1, 1), (1, 13), (6, 9), (33, 70)])
def test_cpp_matches_reference(batch, length, pattern, generator):
    check_compaction("cpp", batch, length, pattern, generator)


@pytest.mark.parametrize("pattern", ["random", "none kept", "mixed rows"])
def test_triton_matches_reference(pattern, generator):
    check_compaction("triton", 3, 7, pattern, generator)


def test_default_backend_is_cpp_on_cpu(generator):
    check_compaction(None, 4, 10, "random", generator)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_long_rows_are_compacted_whole(backend, generator):
    """A sequence and a row far longer than one block: every element moves."""
    batch, heads, length, head_dim = (2, 2, 200, 8) if backend == "triton" else (4, 3, 2000, 64)
    keys = torch.randn(batch, heads, length, head_dim, generator=generator)
    expected = keys.clone()
    keep_mask = torch.rand(batch, length, generator=generator) < 0.7
    result = ops.compact_columns([keys], keep_mask, dim=2, backend=backend)
    expected_result = ops.compact_columns([expected], keep_mask, dim=2, backend="reference")
    assert torch.equal(keys, expected)
    assert torch.equal(result[0], expected_result[0]) and torch.equal(result[1], expected_result[1])
