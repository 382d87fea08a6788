"""Batched speculative sampling as a drop-in decoding loop for Hugging Face ``generate``.

::

    out = target.generate(**inputs, custom_generate=SpeculativeSampling(draft, num_draft_tokens=4),
                          do_sample=True, temperature=0.8, top_k=40, max_new_tokens=128)

One engine serves standard speculative sampling (Leviathan et al., 2023; Chen et al., 2023) and
reward-shifted speculative sampling (SSS, :class:`specalign.reward_shifted.RewardShiftedSpeculativeSampling`;
the math is in ``docs/math.md``). Each step, over the rows still decoding:

1. propose: the draft drafts ``K`` tokens, one forward each (:func:`specalign.ops.sample`), and runs
   once more on the ``K``-th, so every model's cache covers the same positions and the drafts'
   ``K+1``-th logits exist (the SSS bonus token needs them);
2. score: the target, and under SSS the reference draft, score the ``K+1`` positions in one forward;
3. accept: :func:`specalign.ops.speculative_verify` accepts a prefix of each row's drafts and emits
   one more token (greedy decoding compares the drafts with the target's argmax instead);
4. cut at stops: each row's new tokens end at the length limit, its first EOS and the first token
   at which a stopping criterion fires;
5. shrink: finished rows leave the batch and the entries of rejected drafts leave every cache
   (:mod:`specalign._cache`).

Rows accept different numbers of drafts, so they drift apart: each row keeps its own length, its
position ids come from its attention mask, and its randomness is its own.

Randomness: each row has an int64 seed (:func:`specalign._hf.row_seeds`). The verifier draws with
``(seed, generated)``; the draft proposes with ``(seed ^ DRAFT_SEED_XOR, generated)``, so it never
reuses the verifier's noise. ``generated`` is the number of tokens the row had generated before the
token, so a row's tokens never depend on the other rows of the batch.

Logits processing happens at every verified position, all positions in one call: processors that
read only the scores (temperature, top-k, top-p, min-p, ...) see ``[B * (K+1), V]``; the others (e.g.
repetition penalty) need each position's own prefix and are called once per distinct prefix length.
Standard mode processes target and draft alike. SSS applies temperature to all three models and
truncation and the other processors to the target only.

Vocabulary: the models must share one tokenizer. The real vocabulary is ``len(tokenizer)`` when a
``tokenizer`` is given (a model's ``config.vocab_size`` may be larger: padded logits are sliced off);
without one, every ``config.vocab_size`` must be equal. The models' generation configs must also
agree on their special ids (equal ``bos_token_id``, overlapping ``eos_token_id``).

Models: every decoder-only attention model whose ``generate`` uses a DynamicCache, sliding-window
and chunked attention included. Recurrent-state (state-space, hybrid) models are refused: their state
cannot take back rejected drafts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers.generation import logits_process
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from specalign import _cache, _compat, _hf, ops

# The draft's proposals use the row seed XOR this constant: a different Philox key from the verifier's.
DRAFT_SEED_XOR = 0x5851F42D4C957F2D

# Where masked holes are allowed (below), the caches are compacted once holes fill this fraction.
COMPACT_AT_HOLE_FRACTION = 0.25

# Models whose output provably does not change when rejected drafts stay in the cache as masked
# holes (tests/test_speculative_sampling.py checks each one): positions come from position_ids and
# attention is full, so no distance is counted in columns. Every other model has the rejected
# entries removed at every step.
HOLE_SAFE_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "gpt2"})

# Processors whose __call__ reads only the scores (checked in the transformers 5.17 and 5.24 source).
_SCORE_ONLY_PROCESSORS = tuple(
    getattr(logits_process, name)
    for name in (
        "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
        "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper", "InfNanRemoveLogitsProcessor",
        "LogitNormalization", "SuppressTokensLogitsProcessor",
    )
    if hasattr(logits_process, name)
)


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


def row_seeds(seed, batch_size: int, device=None) -> torch.Tensor:
    """The ``[batch_size]`` int64 row seeds for ``seed`` (see :func:`specalign._hf.row_seeds`)."""
    return _hf.row_seeds(seed, batch_size, device)


class SpeculativeSampling:
    """Batched speculative sampling; pass an instance as ``custom_generate`` to the target's ``generate``.

    The output follows the target's own sampling distribution (after its logits processing) exactly;
    with ``do_sample=False`` it equals the target's greedy decoding.

    Args:
        draft: the small causal LM that proposes tokens; same tokenizer and device as the target.
        num_draft_tokens: ``K >= 1``, tokens drafted per step.
        seed: ``None`` (drawn from torch's global generator), an int, or one int per row
            (:func:`specalign._hf.row_seeds`).
        tokenizer: optional, the shared tokenizer; its ``len()`` is the real vocabulary size when a
            model's ``config.vocab_size`` is padded beyond it.
        progress: show a progress bar over new tokens.
        backend: the :mod:`specalign.ops` backend (``None``: by device).
    """

    _draft_name = "draft"
    ref_draft = None

    def __init__(self, draft, num_draft_tokens: int = 4, *, seed=None, tokenizer=None, progress: bool = False,
                 backend: str | None = None):
        if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
            raise ValueError(f"num_draft_tokens must be an int >= 1, got {num_draft_tokens!r}")
        if backend not in ops.BACKENDS:
            raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
        _hf.check_seed(seed)
        _hf.check_model(self._draft_name, draft)
        self.draft = draft
        self.num_draft_tokens = num_draft_tokens
        self.seed = seed
        self.tokenizer = tokenizer
        self.progress = progress
        self.backend = backend

    def __call__(self, model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                 synced_gpus=False, streamer=None, stop_strings=None, **model_kwargs):
        _hf.check_stop_strings(type(self).__name__, stop_strings)
        cache = _compat.pop_generate_cache(model_kwargs)
        attention_mask = _hf.check_call(type(self).__name__, model, generation_config, synced_gpus, streamer, model_kwargs,
                                        cache)
        decoder = _Decoder(self, model, list(logits_processor or []), list(stopping_criteria or []),
                           generation_config)
        return decoder.generate(input_ids, attention_mask)


@dataclass
class _Rows:
    """The rows still decoding; dimension 0 of every tensor is the row.

    ``index`` is the row's place in the output; ``lengths`` its tokens in ``sequences`` (prompt and
    generated); ``cache_mask`` the attention mask of the cached columns, which hold every token of
    the row but the last (the next step feeds it).
    """

    index: torch.Tensor  # [B]
    lengths: torch.Tensor  # [B]
    seeds: torch.Tensor  # [B]
    draft_seeds: torch.Tensor  # [B]
    cache_mask: torch.Tensor  # [B, S]

    def __len__(self) -> int:
        return self.index.numel()


@dataclass
class _Step:
    """One step's proposals and verdict, row by row."""

    tokens: torch.Tensor  # [B, K+1] the fed token, then the K drafts
    mask: torch.Tensor  # [B, S+K+1] attention mask of the cache and the step's columns
    draft_logits: torch.Tensor | None = None  # [B, K or K+1, V]
    target_scores: torch.Tensor | None = None  # [B, K+1, V]
    ref_logits: torch.Tensor | None = None  # [B, K+1, V]
    emitted: torch.Tensor | None = None  # [B, K+1] verified tokens
    num_accepted: torch.Tensor | None = None  # [B]
    num_emitted: torch.Tensor | None = None  # [B]


class _Decoder:
    """One ``generate`` call's state: the models, their caches, the output buffer and statistics."""

    def __init__(self, method: SpeculativeSampling, target, logits_processor, stopping_criteria, generation_config):
        named_models = [("model", target), (method._draft_name, method.draft)]
        if method.ref_draft is not None:
            named_models.append(("ref_draft", method.ref_draft))
        _hf.check_model("model", target)
        for name, other in named_models[1:]:
            if other.device != target.device:
                raise ValueError(f"{name} is on {other.device} but the target model is on {target.device}; "
                                 "put them on one device")
        self.vocab = _shared_vocab_size(named_models, method.tokenizer)
        self.models = [model for _, model in named_models]
        self.caches = [_cache.speculation_cache(model) for model in self.models]
        self.allow_holes = all(_hole_safe(model) for model in self.models)
        self.method, self.config = method, generation_config
        self.device = target.device
        self.num_draft = method.num_draft_tokens
        self.sss = method.ref_draft is not None
        self.steps = torch.arange(self.num_draft + 1, device=self.device)
        self.pad_id = _hf.pad_token_id(generation_config)
        self.eos_ids = torch.cat([torch.empty(0, dtype=torch.long, device=self.device)] + [
            c.eos_token_id.to(self.device).flatten() for c in stopping_criteria if isinstance(c, EosTokenCriteria)])
        self.other_criteria = StoppingCriteriaList(
            c for c in stopping_criteria if not isinstance(c, (EosTokenCriteria, MaxLengthCriteria)))
        self.target_processors = logits_processor
        # SSS: the drafts only at temperature, untruncated, so the tilt pi_r / pi_d stays finite.
        self.draft_processors = logits_processor if not self.sss else [
            p for p in logits_processor if isinstance(p, logits_process.TemperatureLogitsWarper)]
        self.stats = dict(accepted=0, drafted=0, row_steps=0, generated=0, draft_calls=0, target_calls=0)

    def generate(self, input_ids, attention_mask):
        rows = self._prefill(input_ids.to(self.device), attention_mask)
        bar = tqdm(total=self.max_length - self.prompt_length, desc="SSS" if self.sss else "speculative sampling",
                   disable=not self.method.progress, unit="tok")
        while len(rows):
            longest = self.longest
            rows = self.step(rows)
            bar.update(self.longest - longest)
        bar.close()
        return self._output()

    def step(self, rows: _Rows) -> _Rows:
        """One step over the rows still decoding; returns the rows that go on."""
        step = self._propose(rows)
        self._score(rows, step)
        self._accept(rows, step)
        num_kept, finished = self._cut_at_stops(rows, step)
        rows.lengths += num_kept
        self.longest = max(self.longest, int(rows.lengths.max()))
        return self._shrink(rows, step, finished)

    def _prefill(self, input_ids, attention_mask) -> _Rows:
        _hf.check_prompts(input_ids, attention_mask)
        batch, self.prompt_length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.max_length = max(self.config.max_length, self.prompt_length)
        for model, name in zip(self.models, ("model", self.method._draft_name, "ref_draft")):
            # Drafts are fed up to K + 1 positions past the length limit before they are cut.
            _hf.check_length(name, model, self.max_length + self.num_draft + 1)
        self.longest = self.prompt_length
        # The prompt, then each row's tokens, as HF lays them out; drafts are written past a row's length.
        self.sequences = input_ids.new_full((batch, self.max_length + self.num_draft + 1), self.pad_id)
        self.sequences[:, : self.prompt_length] = input_ids
        seeds = _hf.row_seeds(self.method.seed, batch, self.device)
        rows = _Rows(index=torch.arange(batch, device=self.device),
                     lengths=torch.full((batch,), self.prompt_length, device=self.device),
                     seeds=seeds, draft_seeds=seeds ^ DRAFT_SEED_XOR,
                     cache_mask=attention_mask[:, :-1].to(device=self.device, dtype=torch.long))
        if self.prompt_length > 1:
            positions = _hf.positions_from_mask(rows.cache_mask, self.prompt_length - 1)
            for model, cache in zip(self.models, self.caches):
                _hf.forward(model, cache, input_ids[:, :-1], rows.cache_mask, positions, 1)
            self.stats["target_calls"] = self.stats["draft_calls"] = 1
        return rows

    def _propose(self, rows: _Rows) -> _Step:
        """Draft ``K`` tokens per row (written into ``sequences``) and keep the draft's logits."""
        width = rows.cache_mask.shape[1]
        mask = torch.cat([rows.cache_mask, rows.cache_mask.new_ones(len(rows), self.num_draft + 1)], dim=1)
        positions = _hf.positions_from_mask(mask, self.num_draft + 1)
        generated = rows.lengths - self.prompt_length
        token = self.sequences[rows.index, rows.lengths - 1]
        draft_logits = []
        for j in range(self.num_draft + 1):
            logits = _hf.forward(self.models[1], self.caches[1], token[:, None], mask[:, : width + j + 1],
                                 positions[:, j : j + 1], 1, self.vocab)[:, 0]
            self.stats["draft_calls"] += 1
            if j == self.num_draft and not self.sss:
                break
            logits = _process(self.draft_processors, logits, self.sequences, rows.index, rows.lengths + j)
            draft_logits.append(logits)
            if j < self.num_draft:
                if self.config.do_sample:
                    token = ops.sample(logits, seeds=rows.draft_seeds, positions=generated + j,
                                       backend=self.method.backend)
                else:
                    token = logits.argmax(-1)
                self.sequences[rows.index, rows.lengths + j] = token
        tokens = self.sequences[rows.index[:, None], rows.lengths[:, None] - 1 + self.steps]
        return _Step(tokens=tokens, mask=mask, draft_logits=torch.stack(draft_logits, dim=1))

    def _score(self, rows: _Rows, step: _Step) -> None:
        """The target (and under SSS the reference draft) over the ``K+1`` step positions, processed."""
        positions = _hf.positions_from_mask(step.mask, self.num_draft + 1)
        flat_index = rows.index.repeat_interleave(self.num_draft + 1)
        flat_lengths = (rows.lengths[:, None] + self.steps).flatten()
        shape = (len(rows), self.num_draft + 1, -1)
        logits = _hf.forward(self.models[0], self.caches[0], step.tokens, step.mask, positions, self.num_draft + 1,
                             self.vocab)
        self.stats["target_calls"] += 1
        step.target_scores = _process(self.target_processors, logits.flatten(0, 1), self.sequences, flat_index,
                                      flat_lengths).view(shape)
        if self.sss:
            logits = _hf.forward(self.models[2], self.caches[2], step.tokens, step.mask, positions,
                                 self.num_draft + 1, self.vocab)
            step.ref_logits = _process(self.draft_processors, logits.flatten(0, 1), self.sequences, flat_index,
                                       flat_lengths).view(shape)

    def _accept(self, rows: _Rows, step: _Step) -> None:
        draft_tokens = step.tokens[:, 1:]
        if self.config.do_sample:
            step.emitted, step.num_accepted, step.num_emitted = ops.speculative_verify(
                draft_tokens, step.draft_logits, step.target_scores, step.ref_logits, seeds=rows.seeds,
                positions=rows.lengths - self.prompt_length, backend=self.method.backend)
        else:
            scores = step.target_scores
            if self.sss:
                scores = ops.shifted_target_logits(scores, step.draft_logits, step.ref_logits)
            step.emitted = scores.argmax(-1)
            step.num_accepted = (draft_tokens == step.emitted[:, :-1]).long().cumprod(-1).sum(-1)
            step.num_emitted = step.num_accepted + 1
        self.stats["accepted"] += int(step.num_accepted.sum())
        self.stats["drafted"] += self.num_draft * len(rows)
        self.stats["row_steps"] += len(rows)

    def _cut_at_stops(self, rows: _Rows, step: _Step) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's emitted tokens up to the length limit, its first EOS and the first stop.
        Returns ``(num_kept [B], finished [B])``."""
        num_kept = torch.minimum(step.num_emitted, self.max_length - rows.lengths)
        is_eos = torch.isin(step.emitted, self.eos_ids) & (self.steps < num_kept[:, None])
        hit_eos = is_eos.any(-1)
        num_kept = torch.where(hit_eos, is_eos.long().argmax(-1) + 1, num_kept)
        self._write(rows, step, num_kept)  # in full before the stopping criteria, which read them
        finished = hit_eos | (rows.lengths + num_kept >= self.max_length)
        if self.other_criteria:
            num_kept, stopped = _first_stop(self.other_criteria, self.sequences, rows.index, rows.lengths, num_kept,
                                            self.steps)
            finished |= stopped
            self._write(rows, step, num_kept)
        self.stats["generated"] += int(num_kept.sum())
        return num_kept, finished

    def _write(self, rows: _Rows, step: _Step, num_kept: torch.Tensor) -> None:
        kept = torch.where(self.steps < num_kept[:, None], step.emitted, self.pad_id)
        self.sequences[rows.index[:, None], rows.lengths[:, None] + self.steps] = kept

    def _shrink(self, rows: _Rows, step: _Step, finished: torch.Tensor) -> _Rows:
        """Drop finished rows from every cache and the row state; take rejected drafts out of the caches."""
        keep_columns = torch.cat([rows.cache_mask.bool(), self.steps <= step.num_accepted[:, None]], dim=1)
        state = [keep_columns, rows.index, rows.lengths, rows.seeds, rows.draft_seeds]
        if bool(finished.any()):
            unfinished = (~finished).nonzero().squeeze(1)
            state = _cache.keep_rows(self.caches, unfinished, state, self.method.backend)
        keep_columns, index, lengths, seeds, draft_seeds = state
        cache_mask = keep_columns.long()
        holes = float((~keep_columns).float().mean()) if index.numel() else 0.0
        if holes > 0 and (not self.allow_holes or holes > COMPACT_AT_HOLE_FRACTION):
            cache_mask = _cache.remove_columns(self.caches, keep_columns, self.method.backend)
        return _Rows(index=index, lengths=lengths, seeds=seeds, draft_seeds=draft_seeds, cache_mask=cache_mask)

    def _output(self):
        output = self.sequences[:, : self.longest]
        if not self.config.return_dict_in_generate:
            return output
        stats = self.stats
        return SpeculativeGenerateOutput(
            sequences=output,
            acceptance_rate=stats["accepted"] / max(stats["drafted"], 1),
            tokens_per_target_call=stats["generated"] / max(stats["row_steps"], 1),
            draft_calls=stats["draft_calls"],
            target_calls=stats["target_calls"],
        )


def _hole_safe(model) -> bool:
    config = model.config.get_text_config(decoder=True)
    windowed = any(getattr(config, name, None) for name in ("sliding_window", "attention_chunk_size"))
    return config.model_type in HOLE_SAFE_MODEL_TYPES and not windowed


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
