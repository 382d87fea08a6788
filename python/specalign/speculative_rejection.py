"""Speculative Rejection (Sun et al., NeurIPS 2024) as a drop-in decoding loop for ``generate``.

    out = model.generate(**inputs, custom_generate=SpeculativeRejection(reward_model, n=256, alpha=0.5),
                         do_sample=True, max_new_tokens=256)

Each prompt is prefilled once and its cache replicated ``n`` times. Rounds of decoding run the
model's own logits processors and stopping criteria, with keyed sampling (:func:`specalign.ops.sample`:
a row's tokens depend on its seed and token count only). At each decision point the reward model
scores every partial answer; per prompt, the unfinished answers are pooled with the finished ones
and the best ``round((1 - alpha) * pool)`` kept; one :func:`specalign.ops.compact_rows` call then
moves the surviving rows of every cache layer, the ids, the masks and the per-row state in place,
and decoding continues from the cache. Finished answers leave the batch at the decision point that
follows them and keep their score; the best finished answer of each prompt is returned.

Decision points come from a KV-cache budget, as in the paper: the next one is where the cache of
the current batch (prompt width plus new tokens, times rows, times the model's KV bytes per token)
fills ``memory_budget`` bytes or ``max_batch_tokens`` tokens (default: the device's free memory),
so with ``alpha = 0.5`` the sequence length (prompt plus answer) at each decision roughly doubles.
An explicit ``decision_tokens`` schedule (lengths in new tokens) overrides it.

With ``draft=`` the samples decode by exact speculative sampling (:mod:`specalign.drafted_rejection`);
with a scorer that reads the generator's logits (:class:`specalign.confidence.Confidence`) no reward
model runs: the scorer sees each step's processed logits, fused into the draw, and may stop rows.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria
from transformers.utils import ModelOutput

from specalign import _cache, _compat, _hf, ops
from specalign.confidence import LogitScorer
from specalign.reward_model import RewardModel, as_rewards

# Without a schedule and without n, the first decision point is at this fraction of max_new_tokens
# (with alpha = 0.5 that leaves about three decisions before the end).
FIRST_DECISION_FRACTION = 1 / 8
# Per row, the [V] float32 buffers a decoding step holds at once: the model's logits, their float32
# copy, the processed scores and a processor's temporary.
LOGIT_COPIES = 4
# The default budget: this share of the memory available when the call starts (CPU), or of the
# device's free memory less CUDA_RESERVE_BYTES (CUDA), leaving room for everything else.
DEFAULT_BUDGET_SHARE = 0.5
CUDA_RESERVE_BYTES = 1 << 30
# What the byte budget's model counts (cache, buffers, activations) is planned into this share of
# it; the rest is headroom for what it does not: the old and new copy of a layer's cache while a
# step appends to it, and the allocator's slack (bench/bench_memory_budget.py measures the whole).
MODELLED_SHARE = 0.8
# A RewardModel scores in batches whose working memory is at most this share of a byte budget.
REWARD_BUDGET_SHARE = 0.25


@dataclass
class SpeculativeRejectionOutput(ModelOutput):
    """What ``generate(..., return_dict_in_generate=True)`` returns with these methods.

    sequences: ``[P, L]`` each prompt (as given, left-padded) followed by its best answer, padded
        on the right with the pad token.
    rewards: ``[P]`` float32, the best answer's score.
    tokens_generated: tokens sampled for all answers (finished rows' padding not counted).
    rows_decoded: sum over forward passes after the prefill of the batch size (the decode compute).
    rounds: rounds of decoding (decision points plus the last round).
    decision_lengths: new-token lengths at which answers were scored and pruned.
    batch_sizes: rows in the batch at the start of each round.
    reward_calls, reward_tokens_scored: calls to the reward model, and prompt plus answer tokens
        (generator tokens) they scored.
    peak_batch_size: rows in the first round (``P * n``).
    compaction_seconds: with ``profile=True``, the time of each decision's batch compaction (the
        device synchronised before and after), else ``None``.
    candidate_tokens: ``[P, n, max_new_tokens]`` every sample's tokens, as far as it was generated
        (pruned samples stop at their pruning), padded with -1.
    candidate_lengths: ``[P, n]`` tokens of each sample.
    candidate_rewards: ``[P, n]`` float32, each sample's last score.
    candidate_finished: ``[P, n]`` bool, the samples that finished (the ones the answer is chosen from).
    acceptance_rate, target_calls, draft_calls: with ``draft=``, as in
        :class:`~specalign.speculative_sampling.SpeculativeGenerateOutput`; else ``None``.
    """

    sequences: torch.LongTensor | None = None
    rewards: torch.FloatTensor | None = None
    tokens_generated: int | None = None
    rows_decoded: int | None = None
    rounds: int | None = None
    decision_lengths: list[int] | None = None
    batch_sizes: list[int] | None = None
    reward_calls: int | None = None
    reward_tokens_scored: int | None = None
    peak_batch_size: int | None = None
    compaction_seconds: list[float] | None = None
    candidate_tokens: torch.LongTensor | None = None
    candidate_lengths: torch.LongTensor | None = None
    candidate_rewards: torch.FloatTensor | None = None
    candidate_finished: torch.BoolTensor | None = None
    acceptance_rate: float | None = None
    target_calls: int | None = None
    draft_calls: int | None = None


class DecisionPoint(StoppingCriteria):
    """True for every row once ``input_ids`` holds ``length`` tokens: the end of a round."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool, device=input_ids.device)


@dataclass
class _Batch:
    """The rows being decoded; dimension 0 of every tensor is the row."""

    cache: object  # the model's DynamicCache
    prompt_width: int
    ids: torch.Tensor  # [B, prompt width + max new tokens]: left-padded prompt, then the answer
    mask: torch.Tensor  # [B, same]: attention mask of ids
    prompt_lengths: torch.Tensor  # [B] prompt tokens without padding
    candidates: torch.Tensor  # [B] prompt * n + sample
    seeds: torch.Tensor  # [B]
    answer_lengths: torch.Tensor  # [B] tokens generated, frozen once the row finished
    finished: torch.Tensor  # [B] bool
    generated: int = 0  # decoding steps so far: every row's answer width

    def __len__(self) -> int:
        return self.ids.shape[0]

    _STATE = ("ids", "mask", "prompt_lengths", "candidates", "seeds", "answer_lengths", "finished")

    def compact(self, keep: torch.Tensor, backend: str | None) -> None:
        """Keep rows ``keep`` of the cache and of every state tensor, in place, in one op call."""
        state = [getattr(self, name) for name in self._STATE]
        for name, tensor in zip(self._STATE, _cache.keep_rows([self.cache], keep, state, backend)):
            setattr(self, name, tensor)

    def split(self, at: int, device) -> _Batch:
        """Keep rows ``:at``; return rows ``at:`` as a batch of their own on ``device``."""
        tail = dataclasses.replace(self, cache=_cache.split_rows(self.cache, at, device))
        for name in self._STATE:
            tensor = getattr(self, name)
            setattr(tail, name, tensor[at:].to(device, copy=True))
            setattr(self, name, tensor[:at])
        return tail

    def to(self, device) -> None:
        for name in self._STATE:
            setattr(self, name, getattr(self, name).to(device))


class _Pool:
    """Every sample of every prompt (``prompt * n + sample``): its last score, tokens, and whether it finished."""

    def __init__(self, num_prompts: int, n: int, max_new_tokens: int, device: torch.device):
        self.num_prompts, self.n = num_prompts, n
        self.rewards = torch.full((num_prompts * n,), float("nan"))
        self.lengths = torch.zeros(num_prompts * n, dtype=torch.long)
        self.finished = torch.zeros(num_prompts * n, dtype=torch.bool)
        self.tokens = torch.full((num_prompts * n, max_new_tokens), -1, dtype=torch.long, device=device)

    def record(self, batch: _Batch, scores: torch.Tensor, generated: int) -> None:
        """Store the scores, lengths, finished flags and tokens of the batch's rows."""
        answers = batch.ids[:, batch.prompt_width : batch.prompt_width + generated]
        self.record_answers(batch.candidates, answers, batch.answer_lengths, batch.finished, scores)

    def record_answers(self, candidates, answers, lengths, finished, scores) -> None:
        """Store samples ``candidates [B]``: their tokens (``answers [B, W]``, the first ``lengths``
        of each row), finished flags and scores."""
        index = candidates.tolist()
        self.rewards[index] = scores
        self.lengths[index] = lengths.cpu()
        self.finished[index] = finished.cpu()
        past_the_end = torch.arange(answers.shape[1], device=answers.device) >= lengths[:, None]
        self.tokens[candidates, : answers.shape[1]] = answers.masked_fill(past_the_end, -1)

    def survivors(self, candidates: torch.Tensor, alpha: float) -> torch.Tensor:
        """Rows to keep of a batch holding samples ``candidates``: per prompt, the unfinished rows among
        the best ``round((1 - alpha) * pool)`` of its unfinished rows and finished samples (ties: lower
        sample index first)."""
        rows_of_prompt: dict[int, list[tuple[float, int, int | None]]] = {}
        for row, candidate in enumerate(candidates.tolist()):
            if not self.finished[candidate]:
                rows_of_prompt.setdefault(candidate // self.n, []).append((float(self.rewards[candidate]), candidate, row))
        keep = []
        for prompt, entries in rows_of_prompt.items():
            done = torch.nonzero(self.finished[prompt * self.n : (prompt + 1) * self.n]).flatten() + prompt * self.n
            entries += [(float(self.rewards[c]), c, None) for c in done.tolist()]
            entries.sort(key=lambda entry: (-entry[0], entry[1]))
            kept = max(1, round((1 - alpha) * len(entries)))
            keep += [row for _, _, row in entries[:kept] if row is not None]
        return torch.tensor(sorted(keep), dtype=torch.long)

    def best(self) -> torch.Tensor:
        """Per prompt, the finished sample with the highest reward (lowest index on ties; a finished
        sample scored -inf still beats every unfinished one)."""
        rewards = self.rewards.view(self.num_prompts, self.n)
        finished = self.finished.view(self.num_prompts, self.n)
        # Rank by (finished, reward): reward -inf must not tie with the unfinished samples.
        rank = torch.where(finished, rewards.nan_to_num(neginf=-torch.finfo(torch.float32).max), -torch.inf)
        return torch.argmax(rank, dim=1) + torch.arange(self.num_prompts) * self.n


class SpeculativeRejection:
    """Best-of-N at a fraction of the cost: prune the worst partial answers at decision points.

    Pass an instance as ``custom_generate`` to ``model.generate`` (with ``do_sample=True``); the
    result is shaped as ``generate``'s: ``[P, L]`` ids, or with ``return_dict_in_generate=True`` a
    :class:`SpeculativeRejectionOutput` (rewards, per-sample tokens and the run's statistics).

    Args:
        reward_model: a :class:`~specalign.RewardModel`, a callable ``(prompt_ids, answer_ids) ->
            scores [n]`` on lists of 1-D generator token-id tensors, or a scorer that reads the
            generator's own logits (:class:`~specalign.Confidence`: reward-free, no extra forward).
        n: samples per prompt; ``None`` takes the most whose cache fits the budget at the first
            decision point.
        alpha: rejection rate in ``[0, 1)``: each decision keeps ``round((1 - alpha) * pool)``
            answers per prompt (Python's ``round``, halves to even; at least one). ``alpha = 0``
            prunes nothing.
        decision_tokens: decision points in new tokens, increasing (e.g. ``[32, 64, 128]``); ``()``
            for none (Best-of-N); ``None`` to derive them from the memory budget.
        memory_budget: bytes of working memory the run may use: KV cache, logits, ids and the
            reward model's working memory (default: :func:`default_memory_budget`, a share of the
            available memory). A decision point comes at the latest where the batch would outgrow
            it, also when ``n`` is given; Best-of-N (``alpha = 0``) splits the batch there instead
            and finishes the halves one after the other. A CUDA out-of-memory error inside a round
            is handled the same way: no finished answer is lost.
        max_batch_tokens: the budget in cached tokens (rows times sequence width) instead of bytes.
        seed: ``None`` (drawn from torch's global generator) or an int; sample ``s`` of prompt ``p``
            draws from its own stream, that of row ``p * n + s`` under
            :func:`specalign._hf.row_seeds`, so its tokens never depend on the rest of the batch.
        progress: show a progress bar.
        profile: time each decision's compaction (``compaction_seconds`` in the output).
        backend: the ops backend (``None``, ``"reference"``, ``"cpp"``, ``"triton"``).
        draft: a small causal LM sharing the generator's tokenizer: the samples then decode by exact
            speculative sampling, ``num_draft_tokens`` drafts per step (:mod:`specalign.drafted_rejection`).
        num_draft_tokens: ``K >= 1``, tokens drafted per step with ``draft=``.
        ref_draft: with ``draft=`` the aligned draft ``pi_r``, the unaligned one ``pi_d``: the samples
            then follow SSS's shifted target ``pi * pi_r / pi_d`` exactly (SSS inside Speculative Rejection).
    """

    def __init__(
        self,
        reward_model: RewardModel | Callable,
        n: int | None = None,
        alpha: float = 0.5,
        *,
        decision_tokens: Sequence[int] | None = None,
        memory_budget: int | None = None,
        max_batch_tokens: int | None = None,
        seed: int | None = None,
        progress: bool = False,
        profile: bool = False,
        backend: str | None = None,
        draft=None,
        num_draft_tokens: int = 4,
        ref_draft=None,
    ):
        if not callable(reward_model) and not isinstance(reward_model, LogitScorer):
            raise ValueError(f"reward_model must be a RewardModel or a callable, got {type(reward_model).__name__}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be an integer >= 1 (or None to size it from the memory budget), got {n!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha (the rejection rate) must be a number in [0, 1), got {type(alpha).__name__}")
        if not 0 <= alpha < 1:
            raise ValueError(f"alpha (the rejection rate) must lie in [0, 1), got {alpha}")
        if decision_tokens is not None:
            decision_tokens = tuple(decision_tokens)
            if any(not isinstance(d, int) or d < 1 for d in decision_tokens) or any(
                b <= a for a, b in zip(decision_tokens, decision_tokens[1:])
            ):
                raise ValueError(f"decision_tokens must be increasing integers >= 1, got {list(decision_tokens)}")
        if memory_budget is not None and max_batch_tokens is not None:
            raise ValueError("give memory_budget (bytes) or max_batch_tokens (tokens), not both")
        for name, value in (("memory_budget", memory_budget), ("max_batch_tokens", max_batch_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be None or an int (rows get their own streams from it), got {type(seed).__name__}")
        self.reward_model = reward_model
        self.n = n
        self.alpha = alpha
        self.decision_tokens = decision_tokens
        self.memory_budget = memory_budget
        self.max_batch_tokens = max_batch_tokens
        self.seed = seed
        self.progress = progress
        self.profile = profile
        self.backend = backend
        self.draft, self.num_draft_tokens, self.ref_draft = draft, num_draft_tokens, ref_draft
        if draft is not None or ref_draft is not None:
            from specalign import drafted_rejection  # imported here: it builds on this module

            drafted_rejection.check(self)

    def __call__(
        self,
        model,
        input_ids: torch.LongTensor,
        logits_processor,
        stopping_criteria,
        generation_config,
        synced_gpus: bool = False,
        streamer=None,
        stop_strings=None,
        **model_kwargs,
    ) -> SpeculativeRejectionOutput | torch.LongTensor:
        name = type(self).__name__
        _hf.check_model("model", model)
        _hf.check_stop_strings(name, stop_strings)
        if self.draft is not None:
            from specalign import drafted_rejection

            return drafted_rejection.generate(self, model, input_ids, logits_processor, stopping_criteria,
                                              generation_config, synced_gpus, streamer, model_kwargs)
        cache = _hf.new_cache(model, _compat.pop_generate_cache(model_kwargs))
        prompt_mask = _hf.check_call(name, model, generation_config, synced_gpus, streamer, model_kwargs, cache)
        self._check_generation(model, generation_config)
        input_ids, prompt_mask, max_new_tokens = _hf.prepare_prompts(model, input_ids, prompt_mask, generation_config)
        num_prompts, prompt_width = input_ids.shape
        _hf.check_length("model", model, generation_config.max_length)

        logits = self._prefill(model, cache, input_ids, prompt_mask)
        budget, reward_model = self._budget(model, cache, prompt_width, max_new_tokens)
        n = self.n or self._default_n(budget, num_prompts, prompt_width, max_new_tokens)
        if budget.rows_that_fit(prompt_width + 1) < num_prompts * n:
            raise ValueError(
                f"n={n}: {num_prompts * n} rows do not fit the memory budget ({budget.total} {budget.unit}) even at "
                f"their first new token, before any answer can be scored and pruned; lower n (n=None sizes it) "
                "or raise memory_budget/max_batch_tokens")
        batch = self._replicate(cache, input_ids, prompt_mask, n, max_new_tokens)
        if isinstance(self.reward_model, LogitScorer):
            self.reward_model.start(num_prompts, n, max_new_tokens, model.device)
        run = _Run(self, model, reward_model, logits_processor, stopping_criteria, _hf.pad_token_id(generation_config),
                   budget, _Pool(num_prompts, n, max_new_tokens, model.device), max_new_tokens)
        run.decode(batch, logits.repeat_interleave(n, 0))
        return self._output(run.pool, input_ids, generation_config, run.stats)

    def _output(self, pool, input_ids, generation_config, stats):
        best = pool.best()
        answers = pool.tokens[best, : int(pool.lengths[best].max())]
        pad_token_id = _hf.pad_token_id(generation_config)
        sequences = torch.cat([input_ids, answers.masked_fill(answers < 0, pad_token_id)], dim=1)
        if not generation_config.return_dict_in_generate:
            return sequences
        shape = (pool.num_prompts, pool.n)
        return SpeculativeRejectionOutput(
            sequences=sequences,
            rewards=pool.rewards[best],
            tokens_generated=int(pool.lengths.sum()),
            candidate_tokens=pool.tokens.view(*shape, -1),
            candidate_lengths=pool.lengths.view(shape),
            candidate_rewards=pool.rewards.view(shape),
            candidate_finished=pool.finished.view(shape),
            **stats,
        )

    def _check_generation(self, model, generation_config):
        if not generation_config.do_sample:
            raise ValueError("do_sample=False: pass do_sample=True, the samples must differ")
        device = getattr(self.reward_model, "device", None)
        if device is not None and torch.device(device) != model.device:
            raise ValueError(f"reward_model is on {device} but the generator is on {model.device}; put both on one device")
        readable = getattr(self.reward_model, "vocab_size", None)
        emitted = model.config.get_text_config(decoder=True).vocab_size
        if readable is not None and readable < emitted:
            raise ValueError(
                f"reward_model reads {readable} token ids but the generator emits {emitted}: if their tokenizers "
                "differ, give RewardModel(..., generator_tokenizer=...)"
            )

    def _budget(self, model, cache, prompt_width, max_new_tokens):
        """The memory budget, what a row and each of its cached tokens cost against it, and the
        reward model to score with under it.

        ``max_batch_tokens`` counts cached tokens only. A budget in bytes counts the run's working
        memory: the cache (measured from the prefilled one), and per row the logits and their
        processed copies, a decoding step's activations, the ids and masks and the candidate pool's
        tokens; a :class:`RewardModel`
        scores in batches cut to ``REWARD_BUDGET_SHARE`` of it, set aside first.
        """
        if self.max_batch_tokens is not None:
            return _Budget(self.max_batch_tokens, per_token=1, per_row=0), self.reward_model
        per_token, per_row = _cache.cache_bytes(cache)
        vocab = model.config.get_text_config(decoder=True).vocab_size
        width = prompt_width + max_new_tokens
        per_row += LOGIT_COPIES * vocab * 4 + _hf.activation_bytes(model, width) + 3 * width * 8
        total = int((self.memory_budget or default_memory_budget(model.device)) * MODELLED_SHARE)
        reward_model = self.reward_model
        if isinstance(reward_model, RewardModel) and reward_model.bytes_per_token(width):
            tokens = min(reward_model.max_batch_tokens, int(total * REWARD_BUDGET_SHARE) // reward_model.bytes_per_token(width))
            if tokens < width:
                raise ValueError(f"memory_budget ({total} bytes) leaves the reward model too little to score one "
                                 f"{width}-token answer; raise it")
            reward_model = reward_model.with_max_batch_tokens(tokens)
            total -= reward_model.working_bytes(width)
        return _Budget(total, per_token, per_row), reward_model

    def _default_n(self, budget, num_prompts, prompt_width, max_new_tokens) -> int:
        if self.decision_tokens:
            first = self.decision_tokens[0]
        elif self.decision_tokens == ():
            first = max_new_tokens
        else:
            first = max(1, round(max_new_tokens * FIRST_DECISION_FRACTION))
        n = budget.rows_that_fit(prompt_width + first) // num_prompts
        if n < 1:
            raise ValueError(
                f"the memory budget ({budget.total} {budget.unit}) cannot hold {num_prompts} prompts of width "
                f"{prompt_width} plus {first} new tokens; raise memory_budget/max_batch_tokens"
            )
        return n

    def _next_decision(self, budget, rows, prompt_width, generated) -> int:
        """New-token length of the next decision point after ``generated``: the next one of the
        schedule, and at the latest where the batch would outgrow the budget."""
        limit = max(budget.width_that_fits(rows) - prompt_width, generated + 1)
        if self.decision_tokens is not None:
            scheduled = next((d for d in self.decision_tokens if d > generated), limit)
            return min(scheduled, limit)
        return limit

    def _prefill(self, model, cache, input_ids, prompt_mask) -> torch.Tensor:
        """Prefill the prompts once; returns the next-token logits ``[P, V]``."""
        positions = _hf.positions_from_mask(prompt_mask, input_ids.shape[1])
        logits = _hf.forward(model, cache, input_ids, prompt_mask, positions, 1)[:, -1]
        _cache.check_layers(cache, type(model).__name__)
        return logits

    def _replicate(self, cache, input_ids, prompt_mask, n, max_new_tokens) -> _Batch:
        """Replicate each prompt's cache ``n`` times and lay out the batch of ``P * n`` rows."""
        _cache.repeat_rows(cache, n)
        num_prompts, prompt_width = input_ids.shape
        device = input_ids.device
        ids = torch.zeros(num_prompts * n, prompt_width + max_new_tokens, dtype=torch.long, device=device)
        ids[:, :prompt_width] = input_ids.repeat_interleave(n, 0)
        mask = torch.zeros_like(ids)
        mask[:, :prompt_width] = prompt_mask.repeat_interleave(n, 0)
        candidates = torch.arange(num_prompts * n, device=device)
        return _Batch(
            cache=cache,
            prompt_width=prompt_width,
            ids=ids,
            mask=mask,
            prompt_lengths=prompt_mask.sum(-1).repeat_interleave(n),
            candidates=candidates,
            seeds=_hf.row_seeds(self.seed, num_prompts * n, device),
            answer_lengths=torch.zeros_like(candidates),
            finished=torch.zeros_like(candidates, dtype=torch.bool),
        )

    def _decode(self, model, batch) -> torch.Tensor:
        """Feed each row's last token; return the next logits ``[B, V]``."""
        width = batch.prompt_width + batch.generated
        positions = (batch.prompt_lengths + batch.generated - 1)[:, None]
        return _hf.forward(model, batch.cache, batch.ids[:, width - 1 : width], batch.mask[:, :width], positions, 1)[:, -1]

    def _sample(self, scores, batch, positions) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each row's next token, and the rows a logit scorer stops (``None``: none). A scorer that
        reads the generator's logits draws the tokens itself, its statistic fused into the draw."""
        if isinstance(self.reward_model, LogitScorer):
            return self.reward_model.sample(scores, batch.seeds, positions, batch.candidates, batch.finished,
                                            self.backend)
        return ops.sample(scores, seeds=batch.seeds, positions=positions, backend=self.backend), None

    def _score(self, reward_model, batch, stats) -> torch.Tensor:
        """Reward of every row's prompt and answer so far, unpadded: float32 ``[B]`` on the CPU."""
        if isinstance(reward_model, LogitScorer):
            return reward_model.score(batch.candidates, batch.answer_lengths)
        prompt_width = batch.prompt_width
        # A copy, so the pieces handed to the reward model never change when the batch is compacted.
        ids = batch.ids[:, : prompt_width + int(batch.answer_lengths.max())].clone()
        prompts, answers = [], []
        for row, (prompt_length, answer_length) in enumerate(zip(batch.prompt_lengths.tolist(), batch.answer_lengths.tolist())):
            prompts.append(ids[row, prompt_width - prompt_length : prompt_width])
            answers.append(ids[row, prompt_width : prompt_width + answer_length])
        return self._reward(reward_model, prompts, answers, stats)

    def _reward(self, reward_model, prompts: list[torch.Tensor], answers: list[torch.Tensor], stats) -> torch.Tensor:
        """The reward model's scores of unpadded prompts and answers: float32 ``[B]`` on the CPU."""
        stats["reward_tokens_scored"] += sum(len(p) + len(a) for p, a in zip(prompts, answers))
        stats["reward_calls"] += 1
        return as_rewards(reward_model(prompts, answers), len(answers), "reward_model")


class _Run:
    """One ``generate`` call's decoding: batches (one, until memory forces a split), rounds,
    decisions, and the statistics."""

    def __init__(self, method, model, reward_model, logits_processor, stopping_criteria, pad_token_id, budget, pool,
                 max_new_tokens):
        self.method, self.model, self.reward_model, self.budget, self.pool = method, model, reward_model, budget, pool
        self.logits_processor, self.stopping_criteria, self.pad_token_id = logits_processor, stopping_criteria, pad_token_id
        self.max_new_tokens = max_new_tokens
        self.stats = dict(rows_decoded=0, rounds=0, decision_lengths=[], batch_sizes=[], reward_calls=0,
                          reward_tokens_scored=0, peak_batch_size=pool.num_prompts * pool.n,
                          compaction_seconds=[] if method.profile else None)
        self.bar = tqdm(total=max_new_tokens, desc=type(method).__name__, disable=not method.progress, unit="tok")

    def decode(self, batch, logits) -> None:
        pending = [(batch, logits)]
        full_budget = self.budget
        while pending:
            batch, logits = pending.pop()
            _cache.move(batch.cache, self.model.device)
            batch.to(self.model.device)
            # Rows waiting their turn on this device hold memory the running ones must leave them.
            waiting = sum(full_budget.cost(len(other), other.prompt_width + other.generated)
                          for other, _ in pending if other.ids.device == batch.ids.device)
            self.budget = full_budget.less(waiting)
            pending += self._rounds(batch, logits)
        self.bar.close()

    def _rounds(self, batch, logits) -> list:
        """Decode ``batch`` to the end, or until memory splits it: then return both parts, as
        ``(batch, None)`` pairs, the rows to continue first."""
        while True:
            self.stats["rounds"] += 1
            self.stats["batch_sizes"].append(len(batch))
            self.bar.set_postfix(batch=len(batch))
            decision = self.method._next_decision(self.budget, len(batch), batch.prompt_width, batch.generated)
            scheduled = self.method.decision_tokens is not None and decision in self.method.decision_tokens
            ran_out = self._round(batch, logits, DecisionPoint(batch.prompt_width + min(decision, self.max_new_tokens)))
            over_budget = ran_out or (not scheduled and batch.generated == decision)
            done = bool(batch.finished.all())
            if over_budget and not done and self.method.alpha == 0:
                split = self._split(batch, ran_out)
                if split:
                    return split
                logits = None
                continue
            self.pool.record(batch, self.method._score(self.reward_model, batch, self.stats), batch.generated)
            if done:
                return []
            self.stats["decision_lengths"].append(batch.generated)
            keep = self.pool.survivors(batch.candidates, self.method.alpha)
            if keep.numel() == 0:
                return []
            if over_budget and keep.numel() == len(batch):  # nothing to prune: split instead
                split = self._split(batch, ran_out)
                if split:
                    return split
            else:
                self._compact(batch, keep.to(batch.ids.device))
            logits = None

    def _round(self, batch, logits, round_over) -> bool:
        """Sample until every row finished or the round's decision point. Returns True when the
        device ran out of memory first (the batch then stands as at a decision point)."""
        while True:
            if logits is None:
                logits = self._next_logits(batch)
                if logits is None:
                    return True
            width = batch.prompt_width + batch.generated
            scores = self.logits_processor(batch.ids[:, :width], logits)
            positions = torch.full((len(batch),), batch.generated, dtype=torch.long, device=batch.ids.device)
            tokens, stop = self.method._sample(scores, batch, positions)
            batch.ids[:, width] = tokens.masked_fill(batch.finished, self.pad_token_id)
            batch.mask[:, width] = 1
            batch.answer_lengths += ~batch.finished
            batch.generated += 1
            if batch.generated > self.bar.n:  # split-off rows decode these tokens again, for themselves
                self.bar.update(1)
            sequence = batch.ids[:, : width + 1]
            batch.finished |= self.stopping_criteria(sequence, scores)
            if stop is not None:
                batch.finished |= stop
            if bool((batch.finished | round_over(sequence, scores)).all()):
                return False
            logits = None

    def _next_logits(self, batch):
        """Feed each row's last token; ``None`` if the device ran out of memory (cache rolled back)."""
        lengths = _cache.seq_lengths(batch.cache)
        try:
            logits = self.method._decode(self.model, batch)
        except torch.OutOfMemoryError:
            _cache.roll_back(batch.cache, lengths)
            return None
        self.stats["rows_decoded"] += len(batch)
        return logits

    def _split(self, batch, ran_out: bool) -> list:
        """Keep the first half of the rows going; the rest wait, in host memory on CUDA, for their
        turn. A single row cannot split: past the budget it goes on, out of memory it fails."""
        if len(batch) == 1:
            if ran_out:
                raise torch.OutOfMemoryError("out of memory decoding a single row: shorten max_new_tokens or free memory")
            return []
        tail = batch.split(len(batch) // 2, torch.device("cpu") if batch.ids.is_cuda else batch.ids.device)
        return [(tail, None), (batch, None)]

    def _compact(self, batch, keep) -> None:
        profile = self.method.profile
        if profile:
            _synchronize(batch.ids.device)
            start = time.perf_counter()
        batch.compact(keep, self.method.backend)
        if profile:
            _synchronize(batch.ids.device)
            self.stats["compaction_seconds"].append(time.perf_counter() - start)


@dataclass(frozen=True)
class _Budget:
    """A memory budget: ``total`` units, of which a batch of ``rows`` rows of ``width`` cached
    tokens takes ``rows * (width * per_token + per_row)``."""

    total: int
    per_token: int
    per_row: int

    @property
    def unit(self) -> str:
        return "tokens" if (self.per_token, self.per_row) == (1, 0) else "bytes"

    def less(self, used: int) -> _Budget:
        return dataclasses.replace(self, total=max(self.total - used, 0))

    def cost(self, rows: int, width: int) -> int:
        return rows * (width * self.per_token + self.per_row)

    def rows_that_fit(self, width: int) -> int:
        return self.total // max(width * self.per_token + self.per_row, 1)

    def width_that_fits(self, rows: int) -> int:
        if self.per_token == 0:  # a recurrent state does not grow: no decision point from memory
            return 2**62
        return (self.total // rows - self.per_row) // self.per_token


def default_memory_budget(device: torch.device) -> int:
    """Bytes a run may use by default: ``DEFAULT_BUDGET_SHARE`` of the available host memory on CPU
    (``MemAvailable``: free plus reclaimable), of the free device memory less ``CUDA_RESERVE_BYTES``
    on CUDA."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] - CUDA_RESERVE_BYTES
    else:
        free = _available_host_memory()
    return max(int(free * DEFAULT_BUDGET_SHARE), 1)


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
