"""Hugging Face plumbing shared by every decoding loop: what a ``custom_generate`` call may ask
for, which models can run, the forward with explicit positions, and the row seeds.

Version-specific names (the cache's name, the forward's cache argument) come from
:mod:`specalign._compat`; cache layers are handled by :mod:`specalign._cache`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from specalign import _cache, _compat

# What generate hands a custom_generate callable besides the cache; every other input is refused.
# HF's own position_ids are not used: positions come from each row's attention mask.
ACCEPTED_MODEL_KWARGS = {"attention_mask", "position_ids", "use_cache", "logits_to_keep"}

_MASK64 = (1 << 64) - 1


def check_model(name: str, model) -> None:
    """Refuse, at construction, a model the loops cannot decode, with the reason."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{name} ({type(model).__name__}) is an encoder-decoder model; specalign decodes decoder-only models")
    if _compat.cache_argument(model) is None:
        raise ValueError(
            f"{name} ({type(model).__name__}) takes no cache in its forward: every specalign method continues "
            "from the cache, so models without one are not supported"
        )
    if _compat.keeps_state_in_modules(model):
        raise ValueError(
            f"{name} ({type(model).__name__}) keeps its recurrent state in its own modules, outside the cache, and "
            "resets it when the batch changes size: specalign keeps and drops rows through the cache"
        )
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if supports is not None and not supports():
        raise ValueError(
            f"{name} ({type(model).__name__}) does not decode with a DynamicCache (its generate uses a cache class "
            "of its own), which specalign needs to keep and remove rows and entries in place"
        )


def check_call(method: str, model, generation_config, synced_gpus, streamer, model_kwargs: dict,
               cache) -> torch.Tensor | None:
    """Check one ``custom_generate`` call; returns the attention mask (``None`` for no padding)."""
    asked_off = not generation_config.use_cache or not model_kwargs.get("use_cache", True)
    # Some configs (e.g. MPT's) turn the cache off by default; only the caller's own choice is refused.
    if asked_off and getattr(model.config.get_text_config(decoder=True), "use_cache", True):
        raise ValueError(f"use_cache=False: {method} continues from the cache at every step")
    unsupported = set(model_kwargs) - ACCEPTED_MODEL_KWARGS
    if unsupported:
        raise ValueError(f"unsupported model inputs for {method}: {sorted(unsupported)}")
    if cache is not None and _cache.fields(cache):
        raise ValueError(f"the cache already holds tokens: {method} starts from the prompt; pass the prompts as "
                         "input_ids and no filled cache")
    if synced_gpus:
        raise ValueError(f"synced_gpus=True is not supported by {method}")
    if streamer is not None:
        raise ValueError(f"streamer is not supported by {method}")
    if generation_config.num_beams != 1 or generation_config.num_return_sequences != 1:
        raise ValueError(f"num_beams and num_return_sequences must be 1 for {method}")
    for flag in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
        if getattr(generation_config, flag, False):
            raise ValueError(f"{flag}=True is not supported by {method}")
    return model_kwargs.get("attention_mask")


def check_stop_strings(method: str, stop_strings) -> None:
    """``generate(stop_strings=..., tokenizer=...)``: transformers keeps the tokenizer from a
    ``custom_generate`` method, so the criteria cannot be built here; say what works instead."""
    if stop_strings:
        raise ValueError(f"stop_strings={stop_strings!r}: transformers does not pass generate's tokenizer on to "
                         f"{method}, so stop strings cannot be matched; pass "
                         "stopping_criteria=specalign.stop_strings(tokenizer, stop_strings) instead")


def prepare_prompts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    generation_config) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Checked prompts and their mask on the model's device, and the room ``max_length`` leaves."""
    check_prompts(input_ids, attention_mask)
    input_ids = input_ids.to(model.device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(model.device)
    max_new_tokens = generation_config.max_length - input_ids.shape[1]
    if max_new_tokens < 1:
        raise ValueError(f"max_length ({generation_config.max_length}) leaves no room after the "
                         f"{input_ids.shape[1]}-token prompt")
    return input_ids, attention_mask, max_new_tokens


def check_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """Refuse prompts the loops would read wrongly: empty ones, and padding anywhere but the left
    (right padding would make a pad token the last prompt token every answer starts from)."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, prompt length] with at least one token per prompt (e.g. the "
                         f"BOS token), got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        return
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                         f"{tuple(input_ids.shape)}")
    real = attention_mask.bool()
    if not bool(real.any(1).all()):
        raise ValueError("attention_mask: a prompt has no real token; give at least one token per prompt")
    if bool((real[:, :-1] & ~real[:, 1:]).any()):
        raise ValueError("attention_mask: prompts must be padded on the left (tokenizer.padding_side = 'left'); "
                         "a pad after a real token would become the token every answer starts from")


def check_length(name: str, model, length: int) -> None:
    """Refuse a run whose sequences would outgrow a model's learned position embeddings (which
    would fail deep inside the model with an index error)."""
    config = model.config.get_text_config(decoder=True)
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None or length <= limit:
        return
    learned = any(isinstance(module, torch.nn.Embedding) and module.num_embeddings == limit
                  and module.num_embeddings != config.vocab_size for module in model.modules())
    if learned:
        raise ValueError(f"max_new_tokens: prompt plus new tokens reach {length} positions but {name} "
                         f"({type(model).__name__}) has learned position embeddings for {limit}")


def forward(model, cache, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
            logits_to_keep: int, vocab: int | None = None) -> torch.Tensor:
    """Feed ``tokens [B, n]`` at ``positions [B, n]``; ``mask`` covers the cached columns and the
    ``n`` new ones. Returns the float32 logits of the last ``logits_to_keep`` positions, sliced
    to ``vocab`` entries (models may pad their output layer)."""
    if _cache.is_state_only(cache):
        # State-space models (Mamba) read the mask as covering the tokens fed, not the cached ones.
        mask = mask[:, -tokens.shape[1]:]
    inputs = {"input_ids": tokens, "attention_mask": mask, "use_cache": True, _compat.cache_argument(model): cache}
    parameters = _compat.forward_parameters(model)
    if "position_ids" in parameters:
        inputs["position_ids"] = positions
    if "logits_to_keep" in parameters:
        inputs["logits_to_keep"] = logits_to_keep
    logits = model(**inputs).logits
    return logits[:, -logits_to_keep:, :vocab].float()


def activation_bytes(model, width: int) -> int:
    """An upper estimate of a forward's working memory per token fed, beyond the weights and cache:
    the hidden states and their residual copies, the MLP's intermediate activations, and a row of
    attention scores per head over ``width`` keys."""
    config = model.config.get_text_config()
    hidden = config.hidden_size
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    if isinstance(intermediate, (list, tuple)):  # one size per layer (Gemma 3n)
        intermediate = max(intermediate)
    heads = getattr(config, "num_attention_heads", None) or 1
    itemsize = next(model.parameters()).element_size()
    return itemsize * (8 * hidden + 3 * intermediate + 2 * heads * width)


def positions_from_mask(mask: torch.Tensor, new: int) -> torch.Tensor:
    """Positions of the last ``new`` columns of ``mask [B, S]``: the count of real tokens before them."""
    return (mask.long().cumsum(1) - 1).clamp_min(0)[:, -new:]


def new_cache(model, cache=None):
    """The cache generate prepared, checked, or a fresh DynamicCache for the model's layers."""
    if cache is None:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
    _cache.check_layers(cache, type(model).__name__)
    return cache


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def check_seed(seed) -> None:
    """``seed``: ``None``, an int, or one integer per row (checked against the batch later)."""
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        return
    if isinstance(seed, (Sequence, torch.Tensor)) and not isinstance(seed, (str, bytes)):
        return
    raise TypeError(f"seed must be None, an int, or one integer seed per row, got {type(seed).__name__}")


def row_seeds(seed: int | Sequence[int] | torch.Tensor | None, rows: int, device=None) -> torch.Tensor:
    """The ``[rows]`` int64 seeds of the rows of a batch, one rule for every method.

    An int gives row ``r`` the seed ``splitmix64(splitmix64(seed) + r)`` (as a signed int64), so a
    row's seed depends on ``seed`` and ``r`` only. A sequence or tensor is one seed per row. ``None``
    draws an int from torch's global generator (so ``torch.manual_seed`` makes runs repeatable, as
    with Hugging Face's own sampling) and derives the rows' seeds from it.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    if isinstance(seed, int) and not isinstance(seed, bool):
        base = _splitmix64(seed & _MASK64)
        unsigned = [_splitmix64((base + row) & _MASK64) for row in range(rows)]
        return torch.tensor([s - (1 << 64) if s >> 63 else s for s in unsigned], dtype=torch.int64, device=device)
    seeds = torch.as_tensor(seed)
    if seeds.dtype.is_floating_point or seeds.dtype == torch.bool or seeds.shape != (rows,):
        raise ValueError(
            f"seed must be an int, None, or one integer seed per row ({rows} rows), "
            f"got {seeds.dtype} of shape {tuple(seeds.shape)}"
        )
    return seeds.to(device=device, dtype=torch.int64, copy=True)  # the loops compact it in place


def pad_token_id(generation_config) -> int:
    """The id that fills finished rows and padding: the pad token, else the first EOS, else 0."""
    pad = getattr(generation_config, "_pad_token_tensor", None)
    if pad is None:
        pad = generation_config.pad_token_id
    if pad is None:
        eos = getattr(generation_config, "_eos_token_tensor", None)
        pad = None if eos is None else eos.flatten()[0]
    return 0 if pad is None else int(pad)


def stop_strings(tokenizer, strings: Sequence[str]):
    """Stopping criteria that end a row at any of ``strings``, for every specalign method.

    transformers drops ``generate(..., tokenizer=...)`` before it calls a ``custom_generate``
    callable, so ``generate(stop_strings=...)`` is refused with this advice. Pass
    ``stopping_criteria=specalign.stop_strings(tokenizer, ["\\n\\n"])`` instead::

        out = model.generate(**inputs, custom_generate=BestOfN(rm, n=8), do_sample=True,
                             stopping_criteria=stop_strings(tokenizer, ["."]), max_new_tokens=64)
    """
    from transformers.generation.stopping_criteria import StopStringCriteria, StoppingCriteriaList

    if isinstance(strings, str) or not all(isinstance(s, str) and s for s in strings):
        raise TypeError(f"strings must be a list of non-empty strings, got {strings!r}")
    return StoppingCriteriaList([StopStringCriteria(tokenizer=tokenizer, stop_strings=list(strings))])
