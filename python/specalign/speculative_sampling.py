"""Batched speculative sampling as a drop-in decoding loop for Hugging Face ``generate``.

::

    out = target.generate(**inputs, custom_generate=SpeculativeSampling(draft, num_draft_tokens=4),
                          do_sample=True, temperature=0.8, top_k=40, max_new_tokens=128)

One engine serves standard speculative sampling (brief 2.1) and reward-shifted speculative sampling
(SSS, brief 2.2, :class:`specalign.reward_shifted.RewardShiftedSpeculativeSampling`). Each step:

1. the draft proposes ``K`` tokens, one forward each (:func:`specalign.ops.sample`), and runs once
   more on the ``K``-th, so that every model's cache covers the same positions and the drafts'
   ``K+1``-th logits exist (the SSS bonus token needs them);
2. the target, and under SSS the reference draft, score the ``K+1`` positions in one forward;
3. :func:`specalign.ops.speculative_verify` accepts a prefix of each row's drafts and emits one more
   token (greedy decoding compares the drafts with the target's argmax instead);
4. rows that finished (EOS, length limit, stopping criteria) leave the batch
   (:func:`specalign.ops.compact_rows`); the cache entries of rejected drafts are masked out, and
   once masked entries fill ``COMPACT_AT_HOLE_FRACTION`` of the caches, every model's cache is
   compacted (:func:`specalign.ops.compact_columns` right-aligns the kept entries, so each row's
   left padding grows) and the left columns that are padding in every row are cropped. Both
   choices were measured against the alternatives (``bench/NOTES.md``).

Rows accept different numbers of drafts, so they drift apart: each row keeps its own length, its
position ids come from its attention mask, and its randomness is its own.

Randomness: every row has an int64 seed (``seed``: an int, from which row ``b``'s seed is derived by
:func:`row_seeds`; one seed per row; or ``None``, drawn from torch's global generator). The verifier
draws with ``(seed, position)``; the draft proposes with ``(seed ^ DRAFT_SEED_XOR, position)``, so it
never reuses the verifier's noise. The position of a token is the number of tokens its row had
generated before it, so a row's tokens never depend on the other rows of the batch.

Logits processing happens at every verified position, all positions in one call: processors that
read only the scores (temperature, top-k, top-p, min-p, ...) see ``[B * (K+1), V]``; the others (e.g.
repetition penalty) need each position's own prefix and are called once per distinct prefix length.
Standard mode processes target and draft alike. SSS applies temperature to all three models and
truncation and the other processors to the target only (brief 2.2).

Vocabulary: the models must share one tokenizer. The real vocabulary is ``len(tokenizer)`` when a
``tokenizer`` is given (each model's ``config.vocab_size`` may be larger: padded logits are sliced
off); without one, every ``config.vocab_size`` must be equal. The models' generation configs must
also agree on their special ids (equal ``bos_token_id``, overlapping ``eos_token_id``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation import logits_process
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from specalign import _compat, _generation, ops

# The draft's proposals use the row seed XOR this constant: a different Philox key from the verifier's.
DRAFT_SEED_XOR = 0x5851F42D4C957F2D

# The caches are compacted once this fraction of their entries is masked out (padding, rejected drafts).
COMPACT_AT_HOLE_FRACTION = 0.25

# Processors whose __call__ reads only the scores (checked in the transformers 5.17 and 5.23 source).
_SCORE_ONLY_PROCESSORS = tuple(
    getattr(logits_process, name)
    for name in (
        "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
        "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper", "InfNanRemoveLogitsProcessor",
        "LogitNormalization", "SuppressTokensLogitsProcessor",
    )
    if hasattr(logits_process, name)
)

_MASK64 = (1 << 64) - 1


@dataclass
class SpeculativeGenerateOutput(GenerateDecoderOnlyOutput):
    """``generate`` output (``return_dict_in_generate=True``) with speculative decoding statistics.

    acceptance_rate: accepted draft tokens / drafted tokens, over all rows and steps.
    tokens_per_target_call: generated tokens per verification forward of the target, averaged over
        rows (plain decoding makes 1.0).
    draft_calls, target_calls: forward passes of the (aligned) draft and of the target, the prompt's
        included; every call covers the whole remaining batch.
    """

    acceptance_rate: float | None = None
    tokens_per_target_call: float | None = None
    draft_calls: int | None = None
    target_calls: int | None = None


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def row_seeds(seed: int | Sequence[int] | torch.Tensor | None, batch_size: int, device=None) -> torch.Tensor:
    """The ``[batch_size]`` int64 row seeds for ``seed``.

    An int gives row ``b`` the seed ``splitmix64(splitmix64(seed) + b)`` (as a signed int64), so a
    row's seed depends on ``seed`` and ``b`` only. A sequence or tensor is taken as one seed per row.
    ``None`` draws the seeds from torch's global generator.
    """
    if seed is None:
        return torch.randint(-(2**63), 2**63 - 1, (batch_size,), dtype=torch.int64).to(device)
    if isinstance(seed, int):
        base = _splitmix64(seed & _MASK64)
        unsigned = [_splitmix64((base + row) & _MASK64) for row in range(batch_size)]
        return torch.tensor([s - (1 << 64) if s >> 63 else s for s in unsigned], dtype=torch.int64, device=device)
    seeds = torch.as_tensor(seed)
    if seeds.dtype.is_floating_point or seeds.dtype == torch.bool or seeds.shape != (batch_size,):
        raise ValueError(
            f"seed must be an int, None, or one integer seed per row ({batch_size} rows), "
            f"got {seeds.dtype} of shape {tuple(seeds.shape)}"
        )
    return seeds.to(device=device, dtype=torch.int64, copy=True)  # the loop compacts it in place


class SpeculativeSampling:
    """Batched speculative sampling; pass an instance as ``custom_generate`` to the target's ``generate``.

    The output follows the target's own sampling distribution (after its logits processing) exactly;
    with ``do_sample=False`` it equals the target's greedy decoding.

    Args:
        draft: the small causal LM that proposes tokens; same tokenizer and device as the target.
        num_draft_tokens: ``K >= 1``, tokens drafted per step.
        seed: int, one int per row, or ``None`` (see :func:`row_seeds`).
        tokenizer: optional, the shared tokenizer; its ``len()`` is the real vocabulary size when a
            model's ``config.vocab_size`` is padded beyond it.
        backend: the :mod:`specalign.ops` backend (``None``: by device).
    """

    _draft_name = "draft"
    ref_draft = None

    def __init__(self, draft, num_draft_tokens: int = 4, *, seed=None, tokenizer=None, backend: str | None = None):
        if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
            raise ValueError(f"num_draft_tokens must be an int >= 1, got {num_draft_tokens!r}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        _check_cache_support(self._draft_name, draft)
        self.draft = draft
        self.num_draft_tokens = num_draft_tokens
        self.seed = seed
        self.tokenizer = tokenizer
        self.backend = backend

    def __call__(self, model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                 synced_gpus=False, streamer=None, **model_kwargs):
        if synced_gpus:
            raise ValueError("synced_gpus=True is not supported by speculative sampling")
        if streamer is not None:
            raise ValueError("streamer is not supported by speculative sampling")
        if generation_config.num_beams != 1:
            raise ValueError(f"num_beams must be 1 for speculative sampling, got {generation_config.num_beams}")
        for flag in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
            if getattr(generation_config, flag, False):
                raise ValueError(f"{flag}=True is not supported by speculative sampling")
        cache = _compat.pop_generate_cache(model_kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError("the cache already holds tokens: speculative sampling starts from the prompt; pass no filled cache")
        return _generate(
            target=model,
            draft=self.draft,
            ref_draft=self.ref_draft,
            draft_name=self._draft_name,
            num_draft=self.num_draft_tokens,
            seed=self.seed,
            tokenizer=self.tokenizer,
            backend=self.backend,
            input_ids=input_ids,
            attention_mask=model_kwargs.get("attention_mask"),
            logits_processor=list(logits_processor or []),
            stopping_criteria=list(stopping_criteria or []),
            generation_config=generation_config,
        )


def _generate(target, draft, ref_draft, draft_name, num_draft, seed, tokenizer, backend, input_ids, attention_mask,
              logits_processor, stopping_criteria, generation_config):
    named_models = [("model", target), (draft_name, draft)]
    if ref_draft is not None:
        named_models.append(("ref_draft", ref_draft))
    _check_cache_support("model", target)
    device = target.device
    for name, other in named_models[1:]:
        if other.device != device:
            raise ValueError(f"{name} is on {other.device} but the target model is on {device}; put them on one device")
    vocab = _shared_vocab_size(named_models, tokenizer)
    sss = ref_draft is not None
    do_sample = generation_config.do_sample

    input_ids = input_ids.to(device)
    batch, prompt_length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    max_length = max(generation_config.max_length, prompt_length)
    eos_ids = torch.cat([input_ids.new_empty(0)] + [
        c.eos_token_id.to(device).flatten() for c in stopping_criteria if isinstance(c, EosTokenCriteria)
    ])
    other_criteria = StoppingCriteriaList(
        c for c in stopping_criteria if not isinstance(c, (EosTokenCriteria, MaxLengthCriteria))
    )
    pad_id = _generation.pad_token_id(generation_config)

    target_processors = logits_processor
    # SSS: the drafts only at temperature, untruncated, so that the tilt pi_r / pi_d stays finite (brief 2.2).
    draft_processors = logits_processor
    if sss:
        draft_processors = [p for p in logits_processor if isinstance(p, logits_process.TemperatureLogitsWarper)]

    # sequences: the prompt then each row's tokens, as HF lays them out; drafts are written past a row's length.
    sequences = input_ids.new_full((batch, max_length + num_draft + 1), pad_id)
    sequences[:, :prompt_length] = input_ids
    lengths = torch.full((batch,), prompt_length, device=device)
    rows = torch.arange(batch, device=device)
    seeds = row_seeds(seed, batch, device)
    draft_seeds = seeds ^ DRAFT_SEED_XOR

    # Every cache holds each row's tokens except its last one, which the next step feeds.
    models = [m for _, m in named_models]
    caches = [DynamicCache(config=m.config) for m in models]
    for (name, _), cache in zip(named_models, caches):
        _check_cache_layers(name, cache)
    cache_mask = attention_mask[:, :-1].to(device=device, dtype=torch.long)
    if prompt_length > 1:
        for model, cache in zip(models, caches):
            _forward(model, cache, input_ids[:, :-1], cache_mask, 1)
    target_calls = draft_calls = int(prompt_length > 1)
    steps = torch.arange(num_draft + 1, device=device)
    accepted = drafted = row_steps = generated_tokens = 0
    longest = prompt_length

    while rows.numel():
        active = rows.numel()
        generated = lengths - prompt_length
        step_mask = torch.cat([cache_mask, cache_mask.new_ones(active, num_draft + 1)], dim=1)
        width = cache_mask.shape[1]
        draft_logits = []
        token = sequences[rows, lengths - 1]
        for j in range(num_draft + 1):
            logits = _forward(draft, caches[1], token[:, None], step_mask[:, : width + j + 1], 1, vocab)[:, 0]
            draft_calls += 1
            if j == num_draft and not sss:
                break
            logits = _process(draft_processors, logits, sequences, rows, lengths + j)
            draft_logits.append(logits)
            if j < num_draft:
                if do_sample:
                    token = ops.sample(logits, seeds=draft_seeds, positions=generated + j, backend=backend)
                else:
                    token = logits.argmax(-1)
                sequences[rows, lengths + j] = token
        draft_logits = torch.stack(draft_logits, dim=1)
        step_tokens = sequences[rows[:, None], lengths[:, None] - 1 + steps]  # the fed token, then the drafts
        draft_tokens = step_tokens[:, 1:]

        target_logits = _forward(target, caches[0], step_tokens, step_mask, num_draft + 1, vocab)
        target_calls += 1
        flat_rows = rows.repeat_interleave(num_draft + 1)
        flat_lengths = (lengths[:, None] + steps).flatten()
        target_scores = _process(target_processors, target_logits.flatten(0, 1), sequences, flat_rows, flat_lengths)
        target_scores = target_scores.view(active, num_draft + 1, -1)
        ref_logits = None
        if sss:
            ref_logits = _forward(ref_draft, caches[2], step_tokens, step_mask, num_draft + 1, vocab)
            ref_logits = _process(draft_processors, ref_logits.flatten(0, 1), sequences, flat_rows, flat_lengths)
            ref_logits = ref_logits.view(active, num_draft + 1, -1)

        if do_sample:
            tokens, num_accepted, num_emitted = ops.speculative_verify(
                draft_tokens, draft_logits, target_scores, ref_logits, seeds=seeds, positions=generated, backend=backend
            )
        else:
            if sss:
                target_scores = ops.shifted_target_logits(target_scores, draft_logits, ref_logits)
            tokens = target_scores.argmax(-1)
            num_accepted = (draft_tokens == tokens[:, :-1]).long().cumprod(-1).sum(-1)
            num_emitted = num_accepted + 1
        accepted += int(num_accepted.sum())
        drafted += num_draft * active
        row_steps += active

        # Cut each row's emitted tokens at the length limit, the first EOS and the first stop.
        num_kept = torch.minimum(num_emitted, max_length - lengths)
        is_eos = torch.isin(tokens, eos_ids) & (steps < num_kept[:, None])
        hit_eos = is_eos.any(-1)
        num_kept = torch.where(hit_eos, is_eos.long().argmax(-1) + 1, num_kept)
        # Written in full before the stopping criteria, which read them.
        sequences[rows[:, None], lengths[:, None] + steps] = torch.where(steps < num_kept[:, None], tokens, pad_id)
        finished = hit_eos | (lengths + num_kept >= max_length)
        if other_criteria:
            num_kept, stopped = _first_stop(other_criteria, sequences, rows, lengths, num_kept, steps)
            finished |= stopped
            sequences[rows[:, None], lengths[:, None] + steps] = torch.where(steps < num_kept[:, None], tokens, pad_id)
        lengths = lengths + num_kept
        generated_tokens += int(num_kept.sum())
        longest = max(longest, int(lengths.max()))

        keep_columns = torch.cat([cache_mask.bool(), steps <= num_accepted[:, None]], dim=1)
        cache_tensors = _cache_tensors(caches)
        if bool(finished.any()):
            unfinished = (~finished).nonzero().squeeze(1)
            kept = ops.compact_rows(cache_tensors + [keep_columns, lengths, rows, seeds, draft_seeds], unfinished,
                                    backend=backend)
            *cache_tensors, keep_columns, lengths, rows, seeds, draft_seeds = kept
            _set_cache_tensors(caches, cache_tensors)
            if not rows.numel():
                break
        # Rejected drafts stay in the caches, masked out (positions come from the mask). Removing them
        # copies every cache, which pays off only once holes fill a good part of it (bench/NOTES.md).
        cache_mask = keep_columns.long()
        if float((~keep_columns).float().mean()) > COMPACT_AT_HOLE_FRACTION:
            cached_lengths, cache_mask = ops.compact_columns(cache_tensors, keep_columns, dim=2, backend=backend)
            padding = int((cache_mask.shape[1] - cached_lengths).min())
            cache_mask = cache_mask[:, padding:]
            _set_cache_tensors(caches, [t[:, :, padding:] for t in cache_tensors])

    output = sequences[:, :longest]
    if not generation_config.return_dict_in_generate:
        return output
    return SpeculativeGenerateOutput(
        sequences=output,
        acceptance_rate=accepted / max(drafted, 1),
        tokens_per_target_call=generated_tokens / max(row_steps, 1),
        draft_calls=draft_calls,
        target_calls=target_calls,
    )


def _forward(model, cache, tokens, mask, logits_to_keep, vocab=None):
    """Feed ``tokens [b, n]``; ``mask`` covers the cached columns and the ``n`` new ones."""
    positions = (mask.cumsum(1) - 1).clamp_min(0)[:, -tokens.shape[1]:]
    keep = {"logits_to_keep": logits_to_keep} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                **{_compat.cache_argument(model): cache}, **keep)
    return out.logits[:, -logits_to_keep:, :vocab].float()


def _process(processors, scores, sequences, rows, lengths):
    """Apply ``processors`` to ``scores [N, V]``, row ``i`` being the next-token scores after
    ``sequences[rows[i], :lengths[i]]``."""
    for processor in processors:
        if isinstance(processor, _SCORE_ONLY_PROCESSORS):
            scores = processor(sequences.new_empty(scores.shape[0], 0), scores)
            continue
        # The processor reads the ids, and may hold per-row state (e.g. the repetition penalty's prompt
        # lengths), so, as in HF's loop, it sees the whole batch in its original order at one length:
        # one call per distinct prefix length, keeping the rows that end there.
        processed = torch.empty_like(scores)
        for length in lengths.unique().tolist():
            pick = (lengths == length).nonzero().squeeze(1)
            whole_batch = scores.new_zeros(sequences.shape[0], scores.shape[1])
            whole_batch[rows[pick]] = scores[pick]
            processed[pick] = processor(sequences[:, :length], whole_batch)[rows[pick]]
        scores = processed
    return scores


def _first_stop(criteria, sequences, rows, lengths, num_kept, steps):
    """Cut each row's new tokens after the first one at which ``criteria`` stop the row.

    Returns ``(num_kept, stopped)``. Like the processors, the criteria see the whole batch at one
    length: one call per distinct length, keeping the rows that end there.
    """
    candidates = steps < num_kept[:, None]
    stop = torch.zeros_like(candidates)
    pick_rows, pick_steps = candidates.nonzero(as_tuple=True)
    ends = lengths[pick_rows] + pick_steps + 1
    for end in ends.unique().tolist():
        pick = (ends == end).nonzero().squeeze(1)
        stop[pick_rows[pick], pick_steps[pick]] = criteria(sequences[:, :end], None)[rows[pick_rows[pick]]]
    stopped = stop.any(-1)
    return torch.where(stopped, stop.long().argmax(-1) + 1, num_kept), stopped


def _check_cache_support(name, model):
    supports_cache = getattr(model, "_supports_default_dynamic_cache", None)
    if supports_cache is None or not supports_cache() or getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(
            f"{name} ({type(model).__name__}) has no DynamicCache support: speculative sampling needs "
            "decoder-only transformers models whose generate uses a DynamicCache"
        )


def _check_cache_layers(name, cache):
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise ValueError(
                f"{name} needs a {type(layer).__name__} cache layer (e.g. sliding-window attention); "
                "speculative sampling supports full-attention DynamicCache layers only"
            )


def _cache_tensors(caches):
    return [t for cache in caches for layer in cache.layers for t in (layer.keys, layer.values)]


def _set_cache_tensors(caches, tensors):
    tensors = iter(tensors)
    for cache in caches:
        for layer in cache.layers:
            layer.keys, layer.values = next(tensors), next(tensors)


def _shared_vocab_size(named_models, tokenizer):
    sizes = {name: model.config.get_text_config().vocab_size for name, model in named_models}
    if tokenizer is not None:
        vocab = len(tokenizer)
        for name, size in sizes.items():
            if size < vocab:
                raise ValueError(f"{name} has a vocabulary of {size} but the tokenizer has {vocab} tokens")
    elif len(set(sizes.values())) > 1:
        raise ValueError(
            f"the models' vocabulary sizes differ ({sizes}): they must share one tokenizer; if they do and "
            "some pad their logits, pass tokenizer= so the real vocabulary size is known"
        )
    else:
        vocab = sizes["model"]
    _check_special_ids(named_models)
    return vocab


def _check_special_ids(named_models):
    def ids(model, attribute):
        value = getattr(model.generation_config, attribute, None)
        if value is None:
            return None
        return set(value if isinstance(value, (list, tuple)) else [value])

    (target_name, target), *drafts = named_models
    for name, model in drafts:
        for attribute, agree in (("bos_token_id", set.__eq__), ("eos_token_id", lambda a, b: bool(a & b))):
            mine, theirs = ids(model, attribute), ids(target, attribute)
            if mine is not None and theirs is not None and not agree(mine, theirs):
                raise ValueError(
                    f"{name} has {attribute} {sorted(mine)} but the target has {sorted(theirs)}: "
                    "the models must share one tokenizer"
                )
