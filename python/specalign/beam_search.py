"""Chunk-level beam search scored by a small model pair's implicit reward (weak-to-strong search;
Zhou et al., 2024, "Weak-to-Strong Search: Align Large Language Models via Searching over Small
Language Models"), as a drop-in ``generate`` decoding loop.

::

    search = BeamSearch(aligned_draft, ref_draft, num_beams=2, samples_per_beam=4, chunk_tokens=8)
    out = target.generate(**inputs, custom_generate=search, do_sample=True, max_new_tokens=128)

The SSS model pair scores: a sample's score is ``sum_t log pi_r(y_t | y_<t) - log pi_d(y_t | y_<t)``
over its answer tokens, ``pi_r`` the small aligned model and ``pi_d`` the same model before
alignment (their raw distributions, before any logits processing), the reward the alignment
implies up to a constant. Each prompt holds ``W = num_beams`` beams; each beam is forked into
``K = samples_per_beam`` rows, which the target samples ``L = chunk_tokens`` tokens further with its
own logits processing. The small models then score the chunk in one forward each, from caches that
hold every earlier token. Per prompt, the best ``W`` unfinished rows become the next beams: one
:func:`specalign.ops.fork_rows` call copies each of them into ``K`` rows of every cache (the target's
and both small models'), the ids, the masks and the per-row state, in place, within the rows the
batch already has. A prompt keeps ``W * K`` rows (Best-of-``W * K``'s compute) until all its rows
finished: with fewer than ``W`` unfinished rows left, its ``W * K`` rows are shared among them.

Answers that finish (EOS, a stopping criterion, the length limit) leave the beams and join a pool;
the best-scoring finished answer of each prompt is returned, whenever it finished: the search never
loses it to beams that went on.

Randomness: the first chunk's ``W * K`` rows of prompt ``p`` draw as Best-of-``W * K``'s samples
(:func:`specalign._hf.row_seeds`); a forked beam's first row keeps the beam's stream and the others
take streams derived from it, the chunk and their place, so ``W = K = 1`` is plain sampling token for
token (Best-of-1 with the same seed).

The decoding rounds (prefill once, replicate the cache, keyed sampling, stopping) are
:class:`~specalign.SpeculativeRejection`'s.
"""
from __future__ import annotations

import dataclasses

import torch
from transformers.utils import ModelOutput

from specalign import _cache, _compat, _hf
from specalign.speculative_rejection import DecisionPoint, SpeculativeRejection, _Pool, _Run
from specalign.speculative_sampling import _shared_vocab_size

_MASK64 = (1 << 64) - 1


@dataclasses.dataclass
class BeamSearchOutput(ModelOutput):
    """What ``generate(..., return_dict_in_generate=True)`` returns with :class:`BeamSearch`.

    sequences: ``[P, L]`` each prompt followed by its best finished answer, padded with the pad token.
    scores: ``[P]`` float32, that answer's implicit reward.
    tokens_generated: tokens the target sampled, over all rows and chunks.
    rows_decoded: sum over the target's forward passes after the prefill of the batch size.
    rounds: chunks decoded.
    reward_tokens_scored: tokens each small model scored (the chunks' tokens, over all rows).
    candidate_tokens: ``[P, F, max_new_tokens]`` every finished answer, in the order they finished,
        padded with -1 (``F``: the most any prompt has).
    candidate_scores: ``[P, F]`` float32 their implicit rewards, ``-inf`` where there is none.
    candidate_rounds: ``[P, F]`` the chunk (from 0) each finished in, -1 where there is none.
    """

    sequences: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    tokens_generated: int | None = None
    rows_decoded: int | None = None
    rounds: int | None = None
    reward_tokens_scored: int | None = None
    candidate_tokens: torch.LongTensor | None = None
    candidate_scores: torch.FloatTensor | None = None
    candidate_rounds: torch.LongTensor | None = None


class ImplicitReward:
    """``sum_t log pi_r(y_t | prompt, y_<t) - log pi_d(y_t | prompt, y_<t)`` over an answer's tokens.

    Callable as a reward model (``(prompt_ids, answer_ids) -> float32 [n]``, each pair scored from
    scratch, e.g. ``BestOfN(ImplicitReward(aligned, ref), n=8)``); :class:`BeamSearch` scores chunk
    by chunk from caches instead (:meth:`log_ratio`).
    """

    def __init__(self, aligned_draft, ref_draft):
        _hf.check_model("aligned_draft", aligned_draft)
        _hf.check_model("ref_draft", ref_draft)
        self.vocab = _shared_vocab_size([("model", aligned_draft), ("ref_draft", ref_draft)], None)
        self.models = (aligned_draft, ref_draft)

    @property
    def device(self) -> torch.device:
        return self.models[0].device

    @torch.no_grad()
    def __call__(self, prompts: list[torch.Tensor], answers: list[torch.Tensor]) -> torch.Tensor:
        rows = [torch.cat([p, a]).to(self.device) for p, a in zip(prompts, answers)]
        width = max(len(row) for row in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):  # left-padded, as the engines lay out prompts
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
        answer_lengths = torch.tensor([len(a) for a in answers], device=self.device)
        counted = torch.arange(1, width, device=self.device) >= width - answer_lengths[:, None]
        positions = _hf.positions_from_mask(mask, width)[:, :-1]
        log_ratio = self.log_ratio([None, None], ids[:, :-1], mask[:, :-1], positions, ids[:, 1:])
        return (log_ratio * counted).sum(-1).float().cpu()

    def log_ratio(self, caches, inputs, mask, positions, targets) -> torch.Tensor:
        """``[B, n]`` float64 ``log pi_r - log pi_d`` of ``targets [B, n]``, each token predicted
        after the matching one of ``inputs [B, n]``: both models read ``inputs`` (at ``positions``;
        ``mask`` covers their cached columns and ``inputs``) into ``caches`` (``None``: a fresh one)."""
        total = 0
        for sign, model, cache in zip((1, -1), self.models, caches):
            cache = _hf.new_cache(model) if cache is None else cache
            logits = _hf.forward(model, cache, inputs, mask, positions, inputs.shape[1], self.vocab)
            log_probs = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)
            total = total + sign * log_probs.double()
        return total

    def prefill(self, input_ids, prompt_mask, rows) -> list:
        """Both models' caches of each prompt but its last token, each row repeated ``rows`` times."""
        caches = [_hf.new_cache(model) for model in self.models]
        if input_ids.shape[1] > 1:
            mask = prompt_mask[:, :-1]
            positions = _hf.positions_from_mask(mask, mask.shape[1])
            for model, cache in zip(self.models, caches):
                _hf.forward(model, cache, input_ids[:, :-1], mask, positions, 1, self.vocab)
        for cache in caches:
            _cache.repeat_rows(cache, rows)
        return caches


class BeamSearch:
    """Weak-to-strong chunk-level beam search; pass an instance as ``custom_generate`` to the target's
    ``generate`` (with ``do_sample=True``). See the module docstring.

    Args:
        aligned_draft: ``pi_r``, the small model after alignment; same tokenizer and device as the target.
        ref_draft: ``pi_d``, the same small model before alignment.
        num_beams: ``W >= 1`` beams kept per prompt.
        samples_per_beam: ``K >= 1`` rows each beam is forked into per chunk.
        chunk_tokens: ``L >= 1`` tokens sampled between selections.
        seed: ``None`` (drawn from torch's global generator) or an int.
        progress: show a progress bar.
        backend: the ops backend (``None``, ``"reference"``, ``"cpp"``, ``"triton"``).
    """

    def __init__(self, aligned_draft, ref_draft, num_beams: int = 2, samples_per_beam: int = 4, chunk_tokens: int = 8,
                 *, seed: int | None = None, progress: bool = False, backend: str | None = None):
        for name, value in (("num_beams", num_beams), ("samples_per_beam", samples_per_beam),
                            ("chunk_tokens", chunk_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.reward = ImplicitReward(aligned_draft, ref_draft)
        self.num_beams, self.samples_per_beam, self.chunk_tokens = num_beams, samples_per_beam, chunk_tokens
        # Best-of-(W * K) on Speculative Rejection's engine: its prefill, replication and rounds are ours.
        self.engine = SpeculativeRejection(self.reward, n=num_beams * samples_per_beam, alpha=0.0, decision_tokens=(),
                                           seed=seed, progress=progress, backend=backend)

    def __call__(self, model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                 streamer=None, stop_strings=None, **model_kwargs):
        engine = self.engine
        _hf.check_model("model", model)
        _hf.check_stop_strings(type(self).__name__, stop_strings)
        cache = _hf.new_cache(model, _compat.pop_generate_cache(model_kwargs))
        prompt_mask = _hf.check_call(type(self).__name__, model, generation_config, synced_gpus, streamer, model_kwargs,
                                     cache)
        engine._check_generation(model, generation_config)
        _shared_vocab_size([("model", model), ("aligned_draft", self.reward.models[0]),
                            ("ref_draft", self.reward.models[1])], None)
        input_ids, prompt_mask, max_new_tokens = _hf.prepare_prompts(model, input_ids, prompt_mask, generation_config)
        for name, checked in zip(("model", "aligned_draft", "ref_draft"), (model, *self.reward.models)):
            _hf.check_length(name, checked, generation_config.max_length)
        rows = self.num_beams * self.samples_per_beam
        logits = engine._prefill(model, cache, input_ids, prompt_mask).repeat_interleave(rows, 0)
        small_caches = self.reward.prefill(input_ids, prompt_mask, rows)
        batch = engine._replicate(cache, input_ids, prompt_mask, rows, max_new_tokens)
        # Speculative Rejection's rounds: keyed sampling, stopping, and out-of-memory roll-back (no
        # budget: the batch never grows; the pool only sizes the statistics).
        rounds = _Run(engine, model, self.reward, logits_processor, stopping_criteria,
                      _hf.pad_token_id(generation_config), None, _Pool(input_ids.shape[0], rows, 1, model.device),
                      max_new_tokens)
        rounds.bar.set_description(type(self).__name__)
        search = _Search(self, rounds, batch, small_caches, input_ids.shape[0], max_new_tokens)
        search.run(logits)
        return search.output(input_ids, generation_config)


class _Search:
    """One ``generate`` call: the batch of ``P * W * K`` rows, the small models' caches (every row's
    tokens but its last, as the target's), each row's score so far, and the finished answers."""

    def __init__(self, method: BeamSearch, rounds: _Run, batch, small_caches, num_prompts, max_new_tokens):
        self.method, self.rounds, self.batch, self.small_caches = method, rounds, batch, small_caches
        self.rows_per_prompt = method.num_beams * method.samples_per_beam
        self.scores = torch.zeros(len(batch), dtype=torch.float64, device=batch.ids.device)
        self.finished = [[] for _ in range(num_prompts)]  # per prompt: (score, round, answer tokens)
        self.max_new_tokens = max_new_tokens
        self.stats = dict(rounds=0, tokens_generated=0, reward_tokens_scored=0)

    def run(self, logits) -> None:
        """Chunk after chunk until every row finished; ``logits`` are the first step's."""
        batch = self.batch
        while True:
            start, lengths = batch.generated, batch.answer_lengths.clone()
            end = min(start + self.method.chunk_tokens, self.max_new_tokens)
            if self.rounds._round(batch, logits, DecisionPoint(batch.prompt_width + end)):
                raise torch.OutOfMemoryError(f"out of memory decoding {len(batch)} rows: BeamSearch keeps W * K rows "
                                             "per prompt; lower num_beams, samples_per_beam or the prompts per call")
            self.stats["tokens_generated"] += int((batch.answer_lengths - lengths).sum())
            self._score_chunk(start)
            self._pool_finished()
            self.stats["rounds"] += 1
            parents, children = self._next_beams()
            if not parents:
                break
            self._fork(parents, children)
            logits = None  # the next round feeds each row's last token first
        self.rounds.bar.close()

    def _score_chunk(self, start: int) -> None:
        """Add to each row's score the implicit reward of its new tokens ``start..generated``."""
        batch = self.batch
        end = batch.prompt_width + batch.generated
        begin = batch.prompt_width + start
        positions = batch.prompt_lengths[:, None] + torch.arange(start - 1, batch.generated - 1, device=batch.ids.device)
        log_ratio = self.method.reward.log_ratio(self.small_caches, batch.ids[:, begin - 1 : end - 1],
                                                 batch.mask[:, : end - 1], positions, batch.ids[:, begin:end])
        counted = torch.arange(start, batch.generated, device=batch.ids.device) < batch.answer_lengths[:, None]
        self.scores += (log_ratio * counted).sum(-1)
        self.stats["reward_tokens_scored"] += log_ratio.numel()

    def _pool_finished(self) -> None:
        """Move the answers that finished this chunk into the pool (they leave at the next fork)."""
        batch = self.batch
        for row in batch.finished.nonzero().squeeze(1).tolist():
            length = int(batch.answer_lengths[row])
            answer = batch.ids[row, batch.prompt_width : batch.prompt_width + length].clone()
            prompt = int(batch.candidates[row]) // self.rows_per_prompt
            self.finished[prompt].append((float(self.scores[row]), self.stats["rounds"], answer))

    def _next_beams(self) -> tuple[list[int], list[int]]:
        """The next beams in row order, and how many rows each is forked into: per prompt, its best
        ``W`` unfinished rows (ties: lower row first), sharing the prompt's ``W * K`` rows."""
        best_of_prompt: dict[int, list[tuple[float, int]]] = {}
        prompts = (self.batch.candidates // self.rows_per_prompt).tolist()
        for row, (prompt, score, done) in enumerate(zip(prompts, self.scores.tolist(), self.batch.finished.tolist())):
            if not done:
                best_of_prompt.setdefault(prompt, []).append((-score, row))
        beams = []
        for entries in best_of_prompt.values():
            rows = sorted(row for _, row in sorted(entries)[: self.method.num_beams])
            share, extra = divmod(self.rows_per_prompt, len(rows))
            beams += [(row, share + (i < extra)) for i, row in enumerate(rows)]
        beams.sort()
        return [row for row, _ in beams], [children for _, children in beams]

    def _fork(self, parents: list[int], children: list[int]) -> None:
        """Copy parent ``i`` into ``children[i]`` rows of every cache and of the row state, in one op
        call; the first copy keeps the parent's random stream, the others take new ones."""
        batch = self.batch
        device = batch.ids.device
        seeds = _child_seeds(batch.seeds[parents].tolist(), children, self.stats["rounds"])
        index = torch.tensor(parents, device=device).repeat_interleave(torch.tensor(children, device=device))
        names = [field.name for field in dataclasses.fields(batch) if isinstance(getattr(batch, field.name), torch.Tensor)]
        state = [getattr(batch, name) for name in names] + [self.scores]
        forked = _cache.fork_rows([batch.cache, *self.small_caches], index, state, self.method.engine.backend)
        for name, tensor in zip(names, forked):
            setattr(batch, name, tensor)
        self.scores = forked[-1]
        batch.seeds.copy_(torch.tensor(seeds, dtype=torch.int64, device=device))

    def output(self, input_ids, generation_config):
        best = [max(entries, key=lambda entry: entry[0]) for entries in self.finished]  # first of equal scores
        pad = _hf.pad_token_id(generation_config)
        width = max(len(answer) for _, _, answer in best)
        padded = torch.full((len(best), width), pad, dtype=torch.long, device=input_ids.device)
        for prompt, (_, _, answer) in enumerate(best):
            padded[prompt, : len(answer)] = answer
        sequences = torch.cat([input_ids, padded], dim=1)
        if not generation_config.return_dict_in_generate:
            return sequences
        most = max(len(entries) for entries in self.finished)
        tokens = torch.full((len(best), most, self.max_new_tokens), -1, dtype=torch.long, device=input_ids.device)
        scores = torch.full((len(best), most), float("-inf"))
        rounds = torch.full((len(best), most), -1, dtype=torch.long)
        for prompt, entries in enumerate(self.finished):
            for i, (score, chunk, answer) in enumerate(entries):
                tokens[prompt, i, : len(answer)] = answer
                scores[prompt, i], rounds[prompt, i] = score, chunk
        return BeamSearchOutput(sequences=sequences, scores=torch.tensor([score for score, _, _ in best]),
                                rows_decoded=self.rounds.stats["rows_decoded"], candidate_tokens=tokens,
                                candidate_scores=scores, candidate_rounds=rounds, **self.stats)


def _child_seeds(parent_seeds: list[int], children: list[int], chunk: int) -> list[int]:
    """The seeds of each parent's children: the parent's, then ones mixed from it, the chunk and the
    child's place (as signed int64)."""
    seeds = []
    for seed, count in zip(parent_seeds, children):
        seeds.append(seed)
        for child in range(1, count):
            mixed = _hf._splitmix64(_hf._splitmix64(seed & _MASK64) ^ _hf._splitmix64((chunk << 32) | child))
            seeds.append(mixed - (1 << 64) if mixed >> 63 else mixed)
    return seeds
