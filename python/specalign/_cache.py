"""Cache adapters: what the decoding engines may do to each kind of Hugging Face cache layer.

The engines change a cache in these ways, each over every layer at once:

- repeat each row ``n`` times after the prompt's prefill (:func:`repeat_rows`);
- keep a subset of rows, in place (:func:`keep_rows`, :func:`specalign.ops.compact_rows`): every
  layer kind, recurrent state included, since a row's state is its own;
- fork rows, keeping some several times, in place within the batch (:func:`fork_rows`,
  :func:`specalign.ops.fork_rows`): every layer kind, as for keeping;
- remove a ragged per-row suffix, the entries of rejected draft tokens (:func:`remove_columns`,
  :func:`specalign.ops.compact_columns`): attention layers only. The kept entries of each row are
  right-aligned (its left padding grows), so a row's entries stay contiguous and the distance
  between two of them, counted in columns, stays their distance in tokens; that is what ALiBi
  (MPT), GPT-Neo's local window and the sliding and chunked masks read;
- report the bytes a row and each of its cached tokens take (:func:`cache_bytes`), for memory
  budgets; split a batch's rows off to host memory and bring them back (:func:`split_rows`,
  :func:`move`), and roll back a forward that ran out of memory part-way (:func:`roll_back`).

A recurrent (state-space, linear-attention) layer folds every token it sees into its state, so
rejected drafts cannot be taken out of it: speculative decoding refuses such models (Hugging Face's
assisted generation refuses them too).

Sliding-window and chunked layers keep only the last ``window - 1`` tokens in Hugging Face's
cache; speculative decoding must be able to take back up to ``K`` of them, so for it they are
replaced by full-history layers (:func:`speculation_cache`) and the model's own sliding or chunked
mask, which does not depend on the cache class, limits what each query sees. They then hold the
whole sequence, as a full-attention layer does.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers import cache_utils

from specalign import _compat, ops

_LINEAR_ATTENTION = getattr(cache_utils, "LinearAttentionCacheLayerMixin", None)
_INDEXED = getattr(cache_utils, "DynamicIndexedLayer", None)
_DUMMY = getattr(cache_utils, "DummyLayer", None)


@dataclass(frozen=True)
class _Field:
    """One tensor of a layer: ``holder[key]`` (a dict) or ``getattr(holder, key)``, its row dimension
    and, for attention entries, its sequence dimension (``None`` for a recurrent state)."""

    holder: object
    key: object
    row_dim: int
    seq_dim: int | None

    def get(self) -> torch.Tensor | None:
        """The tensor, or ``None`` where this release's layer has no such attribute."""
        return self.holder[self.key] if isinstance(self.holder, dict) else getattr(self.holder, self.key, None)

    def set(self, tensor: torch.Tensor) -> None:
        if isinstance(self.holder, dict):
            self.holder[self.key] = tensor
        else:
            setattr(self.holder, self.key, tensor)


def _is_filled(tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.dim() > 0 and tensor.numel() > 0


def _fields(layer) -> list[_Field]:
    """The per-row tensors of one cache layer; raises for a layer kind no adapter knows."""
    fields = []
    known = False
    if _DUMMY is not None and isinstance(layer, _DUMMY):
        return fields
    if type(layer).__module__ != cache_utils.__name__:
        # A model's own layer class (e.g. DeepSeek-V4's compressed-attention layers) keeps state of
        # its own beside keys and values, which no adapter here keeps in step with the rows.
        raise ValueError(f"{type(layer).__name__} cache layers (the model's own cache layer class) are not supported: "
                         "specalign decodes with Hugging Face's DynamicCache layers")
    if isinstance(layer, cache_utils.DynamicLayer):
        if "Quantized" in type(layer).__name__:
            raise ValueError(f"{type(layer).__name__} cache layers are not supported: use the default DynamicCache")
        known = True
        fields += [_Field(layer, "keys", 0, 2), _Field(layer, "values", 0, 2)]
    if _INDEXED is not None and isinstance(layer, _INDEXED):
        fields += [_Field(layer, "indexer_keys", 0, 1), _Field(layer, "indexer_position_ids", 1, 2)]
    if _LINEAR_ATTENTION is not None and isinstance(layer, _LINEAR_ATTENTION):
        known = True
        for states in (layer.conv_states, layer.recurrent_states):
            fields += [_Field(states, index, 0, None) for index in states]
    if not known:
        raise ValueError(
            f"{type(layer).__name__} cache layers are not supported: specalign decodes with a DynamicCache "
            "of attention, sliding-window, chunked or recurrent-state layers"
        )
    return [field for field in fields if _is_filled(field.get())]


def fields(cache) -> list[_Field]:
    layer_fields = [field for layer in cache.layers for field in _fields(layer)]
    # Before transformers 5.24, Qwen4-Exp keeps the [3, rows, tokens] positions of its indexer on the cache itself.
    on_cache = [_Field(cache, "position_ids", 1, 2)] if _is_filled(getattr(cache, "position_ids", None)) else []
    return layer_fields + on_cache


def check_layers(cache, name: str) -> None:
    """Raise a clear error now if a cache layer has no adapter (rather than deep inside a round)."""
    for layer in cache.layers:
        _fields(layer)
    if getattr(cache, "offloading", False):
        raise ValueError(f"{name}: offloaded caches are not supported")


def is_recurrent_layer(layer) -> bool:
    return _LINEAR_ATTENTION is not None and isinstance(layer, _LINEAR_ATTENTION)


def is_recurrent(cache) -> bool:
    return any(is_recurrent_layer(layer) for layer in cache.layers)


def is_state_only(cache) -> bool:
    """Whether every layer keeps only a recurrent state (no attention entries), as in Mamba."""
    return all(is_recurrent_layer(layer) and not isinstance(layer, cache_utils.DynamicLayer) for layer in cache.layers)


def keep_rows(caches, keep: torch.Tensor, state: list[torch.Tensor], backend: str | None) -> list[torch.Tensor]:
    """Keep rows ``keep`` (increasing) of every tensor of ``caches`` and of ``state`` (tensors with
    the row at dimension 0), in place, in one op call; returns the compacted ``state``."""
    cache_fields = [field for cache in caches for field in fields(cache)]
    tensors = [field.get() for field in cache_fields] + list(state)
    dims = [field.row_dim for field in cache_fields] + [0] * len(state)
    compacted = ops.compact_rows(tensors, keep, dim=dims, backend=backend)
    for field, tensor in zip(cache_fields, compacted):
        field.set(tensor)
    return compacted[len(cache_fields):]


def fork_rows(caches, index: torch.Tensor, state: list[torch.Tensor], backend: str | None) -> list[torch.Tensor]:
    """Rows ``0..len(index)-1`` of every tensor of ``caches`` and of ``state`` (row at dimension 0)
    take the rows ``index`` (increasing, repeats allowed), in place, in one op call
    (:func:`specalign.ops.fork_rows`); returns the forked ``state``. Every layer kind, recurrent
    state included: a forked row starts from a copy of its parent's state."""
    cache_fields = [field for cache in caches for field in fields(cache)]
    tensors = [field.get() for field in cache_fields] + list(state)
    dims = [field.row_dim for field in cache_fields] + [0] * len(state)
    forked = ops.fork_rows(tensors, index, dim=dims, backend=backend)
    for field, tensor in zip(cache_fields, forked):
        field.set(tensor)
    return forked[len(cache_fields):]


def remove_columns(caches, keep_mask: torch.Tensor, backend: str | None) -> torch.Tensor:
    """Keep, per row, the cached positions where ``keep_mask [B, S]`` is true in every tensor of
    ``caches``, right-aligned, in one op call, then drop the left columns that no row uses. Returns
    the new cache attention mask ``[B, S']``."""
    cache_fields = [field for cache in caches for field in fields(cache) if field.seq_dim is not None]
    tensors = [field.get() for field in cache_fields]
    # compact_columns wants the row at dimension 0: a view with it moved there writes in place.
    views = [t.movedim(field.row_dim, 0) for t, field in zip(tensors, cache_fields)]
    seq_dims = [field.seq_dim + (field.seq_dim < field.row_dim) for field in cache_fields]
    lengths, mask = ops.compact_columns(views, keep_mask, dim=seq_dims, backend=backend)
    unused = int((mask.shape[1] - lengths).min())
    for field, tensor in zip(cache_fields, tensors):
        field.set(tensor.narrow(field.seq_dim, unused, tensor.shape[field.seq_dim] - unused))
    return mask[:, unused:]


def speculation_cache(model) -> DynamicCache:
    """A cache for speculative decoding: the model's own layer kinds, sliding and chunked layers
    replaced by full-history ones (see the module docstring). Refuses recurrent-state models."""
    cache = DynamicCache(config=model.config)
    check_layers(cache, type(model).__name__)
    if _INDEXED is not None and any(isinstance(layer, _INDEXED) for layer in cache.layers):
        raise ValueError(
            f"{type(model).__name__} has indexed sparse attention (each query attends to the top-k keys its indexer "
            "picks), which picks differently in one forward over several tokens than token by token: verifying "
            "drafts in one forward would not reproduce its own decoding (nor does Hugging Face's assisted generation)"
        )
    if "position_ids" not in _compat.forward_parameters(model) and any("position" in name for name, _ in model.named_modules()):
        raise ValueError(
            f"{type(model).__name__} takes no position_ids: its position embeddings count the cached columns, "
            "which speculative sampling removes per row (rows accept different numbers of draft tokens)"
        )
    for index, layer in enumerate(cache.layers):
        if isinstance(layer, cache_utils.DynamicSlidingWindowLayer) and not is_recurrent_layer(layer):
            cache.layers[index] = cache_utils.DynamicLayer()
    if is_recurrent(cache):
        raise ValueError(
            f"{type(model).__name__} keeps a recurrent (state-space or linear-attention) state, which cannot "
            "take back rejected draft tokens: speculative sampling needs attention-only models"
        )
    return cache


def cache_bytes(cache) -> tuple[int, int]:
    """``(bytes per row and cached token, bytes per row)`` of a filled cache: the attention entries,
    which grow with the sequence, and the recurrent state, which does not. Measured from the
    tensors themselves, so it holds for every layer kind, dtype and head layout."""
    per_token = per_row = 0.0
    for field in fields(cache):
        tensor = field.get()
        rows = tensor.shape[field.row_dim]
        if field.seq_dim is None:
            per_row += tensor.nbytes / rows
        else:
            per_token += tensor.nbytes / (rows * max(tensor.shape[field.seq_dim], 1))
    return int(round(per_token)), int(round(per_row))


def repeat_rows(cache, repeats: int) -> None:
    """Repeat every row of every cache tensor ``repeats`` times, each copy next to its original."""
    for field in fields(cache):
        field.set(field.get().repeat_interleave(repeats, dim=field.row_dim))


def seq_lengths(cache) -> list[int]:
    """The cached length of every attention tensor, to roll back a forward that failed midway."""
    return [field.get().shape[field.seq_dim] for field in fields(cache) if field.seq_dim is not None]


def roll_back(cache, lengths: list[int]) -> None:
    """Undo a forward that failed part-way (e.g. out of memory after some layers appended their
    entry): cut every attention tensor back to ``lengths``. Raises ``RuntimeError`` where that cannot
    restore the cache: a recurrent state already folded the token in, or a full sliding window
    already dropped its oldest entry."""
    attention = [field for field in fields(cache) if field.seq_dim is not None]
    for layer in cache.layers:
        grown = any(field.holder is layer and field.get().shape[field.seq_dim] > length
                    for field, length in zip(attention, lengths))
        if is_recurrent_layer(layer) or (isinstance(layer, cache_utils.DynamicSlidingWindowLayer)
                                         and grown and layer.cumulative_length >= layer.sliding_window):
            raise RuntimeError(f"a failed forward left a {type(layer).__name__} cache layer that cannot be rolled back")
    for field, length in zip(attention, lengths):
        tensor = field.get()
        if tensor.shape[field.seq_dim] > length:
            field.set(tensor.narrow(field.seq_dim, 0, length))
            if hasattr(field.holder, "cumulative_length"):
                field.holder.cumulative_length = length


def split_rows(cache, at: int, device) -> object:
    """Move rows ``at:`` of ``cache`` into a new cache on ``device`` (host memory frees the
    accelerator) and keep rows ``:at`` in ``cache``."""
    tail = copy.copy(cache)
    tail.layers = []
    for layer in cache.layers:
        copied = copy.copy(layer)
        for name, value in vars(layer).items():
            if isinstance(value, dict):
                setattr(copied, name, dict(value))
        tail.layers.append(copied)
    for field, copied in zip(fields(cache), fields(tail)):
        tensor = field.get()
        copied.set(tensor.narrow(field.row_dim, at, tensor.shape[field.row_dim] - at).to(device, copy=True))
        field.set(tensor.narrow(field.row_dim, 0, at))
    return tail


def move(cache, device) -> None:
    for field in fields(cache):
        field.set(field.get().to(device))
