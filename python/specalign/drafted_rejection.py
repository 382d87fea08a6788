"""Speculative Rejection and Best-of-N whose samples decode by exact speculative sampling.

::

    method = SpeculativeRejection(reward_model, n=64, alpha=0.5, draft=small_model, num_draft_tokens=4)
    out = model.generate(**inputs, custom_generate=method, do_sample=True, max_new_tokens=256)

Each prompt is prefilled once in every model's cache (generator, draft, and with ``ref_draft=`` the
unaligned draft) and replicated ``n`` times; the rows then decode by the steps of
:class:`specalign.speculative_sampling._Decoder` (propose, score, accept, cut at stops, shrink), so
every sample follows the generator's processed distribution exactly, or with ``ref_draft=`` SSS's
shifted target ``pi * pi_r / pi_d`` (SSS inside Speculative Rejection). The reward model prunes as
without a draft, and the pool, the survivors rule and the output are Speculative Rejection's.

Rounds. Rows accept different numbers of drafts, so they reach a decision point ``D`` at different
steps. A round runs until every unfinished row has at least ``D`` new tokens; rows that got there
first keep decoding meanwhile. The reward model then scores each unfinished row's first ``D`` new
tokens (the prefix plain Speculative Rejection scores) and, in full, every sample that finished
since the last decision; finished rows leave the batch as soon as they finish. A row's steps, and
so its tokens, depend only on its seed and its own tokens, never on where decisions fall or which
rows share its batch: ``alpha = 0`` gives Best-of-N's samples token for token, and a survivor has
the tokens it has without pruning.

Decision points: an explicit ``decision_tokens`` schedule is followed as given; without one they
come from the memory budget (every model's cache counted), as without a draft, and with
``alpha = 0`` there are none (nothing would be pruned). A row ahead of the slowest holds more than
``D`` tokens at the decision, which the budget does not count; and unlike Best-of-N without a
draft, the batch is not split when it outgrows the budget.
"""
from __future__ import annotations

import dataclasses
import time

import torch
from tqdm.auto import tqdm

from specalign import _cache, _compat, _hf
from specalign import speculative_rejection as engine
from specalign.confidence import LogitScorer
from specalign.reward_shifted import RewardShiftedSpeculativeSampling
from specalign.speculative_sampling import DRAFT_SEED_XOR, SpeculativeSampling, _Decoder, _Rows


def check(method) -> None:
    """Refuse, at construction, a draft configuration the loop cannot run."""
    if method.draft is None:
        raise ValueError("ref_draft is SSS's unaligned draft: give the aligned draft as draft= as well")
    if isinstance(method.reward_model, LogitScorer):
        raise ValueError(f"{type(method.reward_model).__name__} reads the generator's logits at every sampled "
                         "token; with a draft the tokens come from verification: use it without draft=")
    speculation(method, seed=0)  # checks the models and num_draft_tokens now


def speculation(method, seed: int) -> SpeculativeSampling:
    """The speculative sampling settings of ``method`` (its draft, K, backend) with row seed ``seed``."""
    settings = dict(seed=seed, progress=method.progress, backend=method.backend)
    if method.ref_draft is None:
        return SpeculativeSampling(method.draft, method.num_draft_tokens, **settings)
    return RewardShiftedSpeculativeSampling(method.draft, method.ref_draft, method.num_draft_tokens, **settings)


class _RoundDecoder(_Decoder):
    """The speculative sampling decoder over ``P * n`` replicated rows, paused at decision points.

    Row ``r`` (``index``) is sample ``r`` of the pool; ``answer_lengths`` and ``finished`` hold the
    samples that left the batch."""

    def replicate(self, rows: _Rows, n: int) -> _Rows:
        """Repeat each prefilled prompt row ``n`` times in every cache and in the row state."""
        for cache in self.caches:
            _cache.repeat_rows(cache, n)
        self.sequences = self.sequences.repeat_interleave(n, 0)
        total = len(rows) * n
        seeds = _hf.row_seeds(self.method.seed, total, self.device)
        self.answer_lengths = torch.zeros(total, dtype=torch.long, device=self.device)
        self.finished = torch.zeros(total, dtype=torch.bool, device=self.device)
        self.stats["rows_decoded"] = 0
        self.bar = tqdm(total=self.max_length - self.prompt_length, desc="SpeculativeRejection",
                        disable=not self.method.progress, unit="tok")
        return _Rows(index=torch.arange(total, device=self.device), lengths=rows.lengths.repeat_interleave(n),
                     seeds=seeds, draft_seeds=seeds ^ DRAFT_SEED_XOR, cache_mask=rows.cache_mask.repeat_interleave(n, 0))

    def decode_until(self, rows: _Rows, decision: int | None) -> _Rows:
        """Step until every row has ``decision`` new tokens (``None``: until every row finished)."""
        while len(rows) and (decision is None or int(rows.lengths.min()) - self.prompt_length < decision):
            self.stats["rows_decoded"] += len(rows)
            longest = self.longest
            rows = self.step(rows)
            self.bar.update(self.longest - longest)
        return rows

    def _shrink(self, rows, step, finished):
        done = rows.index[finished]
        self.answer_lengths[done] = rows.lengths[finished] - self.prompt_length
        self.finished[done] = True
        return super()._shrink(rows, step, finished)

    def keep(self, rows: _Rows, keep: torch.Tensor) -> _Rows:
        """Keep rows ``keep`` (increasing) of every cache and of the row state, in one op call."""
        state = [rows.index, rows.lengths, rows.seeds, rows.draft_seeds, rows.cache_mask]
        return _Rows(*_cache.keep_rows(self.caches, keep, state, self.method.backend))

    def answers(self, candidates: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[B, max(lengths)]`` a copy of the new tokens of samples ``candidates``."""
        width = int(lengths.max()) if lengths.numel() else 0
        return self.sequences[candidates, self.prompt_length : self.prompt_length + width]


def generate(method, model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus, streamer,
             model_kwargs):
    """:class:`~specalign.SpeculativeRejection`'s ``__call__`` with ``draft=``."""
    cache = _compat.pop_generate_cache(model_kwargs)  # unused: speculation keeps caches of its own
    prompt_mask = _hf.check_call(type(method).__name__, model, generation_config, synced_gpus, streamer, model_kwargs,
                                 cache)
    method._check_generation(model, generation_config)
    input_ids, prompt_mask, max_new_tokens = _hf.prepare_prompts(model, input_ids, prompt_mask, generation_config)
    num_prompts, prompt_width = input_ids.shape
    # One draw from torch's generator for seed=None, as without a draft: the same row seeds follow.
    seed = method.seed if method.seed is not None else int(torch.randint(0, 2**62, ()).item())
    decoder = _RoundDecoder(speculation(method, seed), model, list(logits_processor or []),
                            list(stopping_criteria or []), generation_config)
    rows = decoder._prefill(input_ids, prompt_mask)
    budget, reward_model = _budget(method, model, decoder.caches, prompt_width, max_new_tokens)
    n = method.n or method._default_n(budget, num_prompts, prompt_width, max_new_tokens)
    rows = decoder.replicate(rows, n)
    prompts = [ids[mask.bool()] for ids, mask in zip(input_ids, prompt_mask)]
    pool = engine._Pool(num_prompts, n, max_new_tokens, model.device)
    stats = dict(rounds=0, decision_lengths=[], batch_sizes=[], reward_calls=0, reward_tokens_scored=0,
                 peak_batch_size=num_prompts * n, compaction_seconds=[] if method.profile else None)
    decision = 0
    while True:
        stats["rounds"] += 1
        stats["batch_sizes"].append(len(rows))
        decision = _next_decision(method, budget, len(rows), prompt_width, decision)
        rows = decoder.decode_until(rows, decision)
        _record(method, reward_model, decoder, pool, prompts, rows, decision, stats)
        if not len(rows):
            break
        stats["decision_lengths"].append(decision)
        keep = pool.survivors(rows.index, method.alpha)
        if keep.numel() == 0:
            break
        rows = _keep(method, decoder, rows, keep.to(model.device), stats)
    decoder.bar.close()
    statistics = decoder.stats
    return method._output(pool, input_ids, generation_config, dict(
        stats, rows_decoded=statistics["rows_decoded"], target_calls=statistics["target_calls"],
        draft_calls=statistics["draft_calls"], acceptance_rate=statistics["accepted"] / max(statistics["drafted"], 1)))


def _next_decision(method, budget, rows, prompt_width, last) -> int | None:
    """The next decision point after ``last`` new tokens (``None``: decode to the end)."""
    if method.decision_tokens is not None:
        return next((d for d in method.decision_tokens if d > last), None)
    if method.alpha == 0:
        return None
    return method._next_decision(budget, rows, prompt_width, last)


def _record(method, reward_model, decoder, pool, prompts, rows, decision, stats) -> None:
    """Score the samples that finished since the last decision (in full) and the unfinished rows (their
    first ``decision`` new tokens); store every one's tokens so far in the pool."""
    done = decoder.finished.nonzero().squeeze(1)
    decoder.finished[done] = False
    candidates = torch.cat([done, rows.index])
    lengths = torch.cat([decoder.answer_lengths[done], rows.lengths - decoder.prompt_length])
    scored_lengths = torch.cat([decoder.answer_lengths[done], torch.full_like(rows.index, decision or 0)])
    answers = decoder.answers(candidates, lengths)
    scores = method._reward(reward_model, [prompts[c // pool.n] for c in candidates.tolist()],
                            [answer[:length] for answer, length in zip(answers, scored_lengths.tolist())], stats)
    finished = torch.arange(candidates.numel(), device=candidates.device) < done.numel()
    pool.record_answers(candidates, answers, lengths, finished, scores)


def _keep(method, decoder, rows, keep, stats) -> _Rows:
    if method.profile:
        engine._synchronize(decoder.device)
        start = time.perf_counter()
    rows = decoder.keep(rows, keep)
    if method.profile:
        engine._synchronize(decoder.device)
        stats["compaction_seconds"].append(time.perf_counter() - start)
    return rows


def _budget(method, model, caches, prompt_width, max_new_tokens):
    """Speculative Rejection's budget and reward model (:meth:`SpeculativeRejection._budget`, from the
    generator's cache), with the drafts' caches counted too: each row holds an entry in each."""
    budget, reward_model = method._budget(model, caches[0], prompt_width, max_new_tokens)
    if budget.unit == "bytes":
        drafts = sum(_cache.cache_bytes(cache)[0] for cache in caches[1:])
        budget = dataclasses.replace(budget, per_token=budget.per_token + drafts)
    return budget, reward_model
