"""specalign.ops.fork_rows: in-place forking of rows (a gather with repeated indices) equals
``index_select`` on every backend, dtype and layout, for every cache adapter, in one call."""
import pytest
import torch
from transformers import DynamicCache
from transformers import cache_utils

from specalign import _cache, ops
from test_compact_rows import make_buffers

BACKENDS = ["reference", "cpp", "triton"]


def index_sets(batch, generator):
    """Named ``[n]`` row indices, ``n <= batch``, with repeats."""
    beams = torch.tensor([1, batch - 2])
    return {
        "empty": torch.tensor([], dtype=torch.long),
        "identity": torch.arange(batch),
        "beams forked into equal shares": beams.repeat_interleave(batch // 2),
        "one row everywhere": torch.full((batch,), batch // 2),
        "last row, up to three times": torch.full((min(3, batch),), batch - 1),
        "first row, twice, then the rest": torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(batch - 1)]),
        "unsorted with repeats": torch.randint(0, batch, (batch - 1,), generator=generator),
        "int32 indices": torch.randint(0, batch, (batch // 2,), generator=generator).int(),
    }


INDEX_NAMES = list(index_sets(8, torch.Generator().manual_seed(0)))


def check_fork(backend, batch, index_name, generator):
    """Fork every buffer layout of test_compact_rows in one call; each buffer equals the reference's
    (nothing outside the views written), and the forked rows equal index_select of the original."""
    index = index_sets(batch, generator)[index_name]
    layouts = make_buffers(batch, generator)
    originals = [buffer.clone() for _, buffer, _, _ in layouts]
    expected_buffers = [buffer.clone() for buffer in originals]
    dims = [dim for _, _, _, dim in layouts]
    returned = ops.fork_rows([view(buffer) for _, buffer, view, _ in layouts], index, dims, backend=backend)
    ops.fork_rows([view(buffer) for (_, _, view, _), buffer in zip(layouts, expected_buffers)], index, dims,
                  backend="reference")
    sorted_index = torch.sort(index.long()).values
    for (name, buffer, view, dim), original, expected, result in zip(layouts, originals, expected_buffers, returned):
        assert torch.equal(result, view(original).index_select(dim, sorted_index)), f"{name}: wrong rows"
        assert torch.equal(buffer, expected), f"{name}: differs from the reference"
        assert result.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr(), f"{name}: not a view"


@pytest.mark.parametrize("index_name", INDEX_NAMES)
def test_reference_equals_index_select(index_name, generator):
    check_fork("reference", 9, index_name, generator)


@pytest.mark.parametrize("index_name", INDEX_NAMES)
@pytest.mark.parametrize("batch", [2, 9, 64])
def test_cpp_equals_index_select(batch, index_name, generator):
    check_fork("cpp", batch, index_name, generator)


@pytest.mark.parametrize("index_name", ["empty", "beams forked into equal shares", "first row, twice, then the rest",
                                        "unsorted with repeats"])
def test_triton_equals_index_select(index_name, generator):
    check_fork("triton", 6, index_name, generator)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_large_rows_are_copied_whole(backend, generator):
    """Rows far larger than one block or work item: every element of every forked row moves."""
    batch, row = (6, 3000) if backend == "triton" else (40, 70_001)
    keys = torch.randn(batch, row, generator=generator)
    original = keys.clone()
    index = torch.randint(0, batch, (batch,), generator=generator)
    (forked,) = ops.fork_rows([keys], index, backend=backend)
    assert torch.equal(forked, original.index_select(0, index.sort().values))


def test_random_indices_match_index_select_many_times(generator):
    """Every order of down- and up-moves: 200 random sorted indices with repeats on the cpp backend."""
    for _ in range(200):
        batch = int(torch.randint(1, 12, (), generator=generator))
        index = torch.randint(0, batch, (int(torch.randint(0, batch + 1, (), generator=generator)),), generator=generator)
        rows = torch.randn(batch, 3, generator=generator)
        expected = rows.index_select(0, index.sort().values)
        (forked,) = ops.fork_rows([rows], index, backend="cpp")
        assert torch.equal(forked, expected), index.tolist()


def test_compact_rows_is_fork_rows_without_repeats(generator):
    compacted = torch.randn(9, 5, generator=generator)
    forked = compacted.clone()
    keep = torch.tensor([0, 3, 4, 7])
    ops.compact_rows([compacted], keep)
    ops.fork_rows([forked], keep)
    assert torch.equal(compacted, forked)


def filled_cache(batch, generator):
    """A DynamicCache with one layer of each kind the adapters know (those this transformers has),
    filled through the layers' own update methods."""
    def randn(*shape):
        return torch.randn(shape, generator=generator)

    layers = [cache_utils.DynamicLayer(), cache_utils.DynamicSlidingWindowLayer(sliding_window=4)]
    for name in ("LinearAttentionLayer", "LinearAttentionAndFullAttentionLayer", "DynamicIndexedLayer"):
        if hasattr(cache_utils, name):
            layers.append(getattr(cache_utils, name)())
    for layer in layers:
        if isinstance(layer, cache_utils.DynamicLayer):
            layer.update(randn(batch, 2, 5, 3), randn(batch, 2, 5, 3))
        if _cache.is_recurrent_layer(layer):
            layer.update_conv_state(randn(batch, 6, 4))
            layer.update_recurrent_state(randn(batch, 2, 3, 3))
        if hasattr(layer, "update_indexer"):
            layer.update_indexer(randn(batch, 5, 4))
            layer.indexer_position_ids = torch.arange(3 * batch * 5).view(3, batch, 5)
    cache = DynamicCache()
    cache.layers = layers
    return cache


def field_tensors(cache):
    return [(field.row_dim, field.get().clone()) for field in _cache.fields(cache)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_cache_adapter_forks_rows(backend, generator):
    batch = 5
    cache = filled_cache(batch, generator)
    before = field_tensors(cache)
    kinds = {type(layer).__name__ for layer in cache.layers}
    assert {"DynamicLayer", "DynamicSlidingWindowLayer"} <= kinds
    index = torch.tensor([0, 0, 3, 3, 3])
    seeds = torch.arange(batch) * 10
    (forked_seeds,) = _cache.fork_rows([cache], index, [seeds], backend)
    assert torch.equal(forked_seeds, torch.tensor([0, 0, 30, 30, 30]))
    after = field_tensors(cache)
    assert len(after) == len(before) >= 4
    for (dim, original), (_, forked) in zip(before, after):
        assert torch.equal(forked, original.index_select(dim, index))


def test_agrees_with_hf_reorder_cache():
    """Hugging Face's own beam reordering (out of place) gives the same cache."""
    ours, theirs = (filled_cache(5, torch.Generator().manual_seed(3)) for _ in range(2))
    index = torch.tensor([1, 1, 2, 4, 4])
    _cache.fork_rows([ours], index, [], "cpp")
    theirs.reorder_cache(index)
    for (_, mine), (_, hf) in zip(field_tensors(ours), field_tensors(theirs)):
        assert torch.equal(mine, hf)


def test_no_tensors_is_a_no_op():
    assert ops.fork_rows([], torch.tensor([0, 0])) == []


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compiles_to_the_eager_result_and_passes_opcheck(dynamic, generator):
    torch._dynamo.reset()
    tensors = [torch.randn(6, 2, 4, generator=generator), torch.randint(0, 9, (6, 3), generator=generator)]
    index = torch.tensor([1, 1, 4, 5, 5])

    def fork(tensors, index):
        torch.ops.specalign.fork_rows(tensors, index, [0, 0])

    compiled = [t.clone() for t in tensors]
    torch.compile(fork, fullgraph=True, dynamic=dynamic, backend="aot_eager")(compiled, index)
    for result, original in zip(compiled, tensors):
        assert torch.equal(result[:5], original.index_select(0, index))
    torch.library.opcheck(torch.ops.specalign.fork_rows.default, ([t.clone() for t in tensors], index, [0, 0]))
