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
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, StoppingCriteria
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.utils import ModelOutput

from specalign import _compat, _generation, ops
from specalign.reward_model import RewardModel, as_rewards

# Row seeds are (seed << 32) | (prompt * n + sample): both Philox key words carry information.
MAX_SEED = 2**31
MAX_ROWS = 2**32
# Without a schedule and without n, the first decision point is at this fraction of max_new_tokens
# (with alpha = 0.5 that leaves about three decisions before the end).
FIRST_DECISION_FRACTION = 1 / 8
SUPPORTED_MODEL_KWARGS = {"attention_mask", "position_ids", "use_cache", "logits_to_keep"}


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
    candidate_tokens: ``[P, n, max_new_tokens]`` every sample's tokens, as far as it was generated
        (pruned samples stop at their pruning), padded with -1.
    candidate_lengths: ``[P, n]`` tokens of each sample.
    candidate_rewards: ``[P, n]`` float32, each sample's last score.
    candidate_finished: ``[P, n]`` bool, the samples that finished (the ones the answer is chosen from).
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
    candidate_tokens: torch.LongTensor | None = None
    candidate_lengths: torch.LongTensor | None = None
    candidate_rewards: torch.FloatTensor | None = None
    candidate_finished: torch.BoolTensor | None = None


class DecisionPoint(StoppingCriteria):
    """True for every row once ``input_ids`` holds ``length`` tokens: the end of a round."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool, device=input_ids.device)


@dataclass
class _Batch:
    """The rows being decoded; dimension 0 of every tensor is the row."""

    cache: DynamicCache
    prompt_width: int
    ids: torch.Tensor  # [B, prompt width + max new tokens]: left-padded prompt, then the answer
    mask: torch.Tensor  # [B, same]: attention mask of ids
    prompt_lengths: torch.Tensor  # [B] prompt tokens without padding
    candidates: torch.Tensor  # [B] prompt * n + sample
    seeds: torch.Tensor  # [B]
    answer_lengths: torch.Tensor  # [B] tokens generated, frozen once the row finished
    finished: torch.Tensor  # [B] bool

    def compact(self, keep: torch.Tensor, backend: str | None) -> None:
        """Keep rows ``keep`` of the cache and of every state tensor, in place, in one op call."""
        layers = self.cache.layers
        kv = [t for layer in layers for t in (layer.keys, layer.values)]
        state = [self.ids, self.mask, self.prompt_lengths, self.candidates, self.seeds, self.answer_lengths, self.finished]
        compacted = ops.compact_rows(kv + state, keep, backend=backend)
        for i, layer in enumerate(layers):
            layer.keys, layer.values = compacted[2 * i], compacted[2 * i + 1]
        (self.ids, self.mask, self.prompt_lengths, self.candidates, self.seeds, self.answer_lengths,
         self.finished) = compacted[len(kv):]


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
        candidates = batch.candidates.tolist()
        self.rewards[candidates] = scores
        self.lengths[candidates] = batch.answer_lengths.cpu()
        self.finished[candidates] = batch.finished.cpu()
        answers = batch.ids[:, batch.prompt_width : batch.prompt_width + generated]
        past_the_end = torch.arange(generated, device=answers.device) >= batch.answer_lengths[:, None]
        self.tokens[batch.candidates, :generated] = answers.masked_fill(past_the_end, -1)

    def survivors(self, batch: _Batch, alpha: float) -> torch.Tensor:
        """Rows of the batch to keep: per prompt, the unfinished rows among the best ``round((1 - alpha) * pool)``
        of its unfinished rows and finished samples (ties: lower sample index first)."""
        rows_of_prompt: dict[int, list[tuple[float, int, int | None]]] = {}
        for row, candidate in enumerate(batch.candidates.tolist()):
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
        """Per prompt, the finished sample with the highest reward (lowest index on ties)."""
        rewards = self.rewards.masked_fill(~self.finished, -torch.inf).view(self.num_prompts, self.n)
        return torch.argmax(rewards, dim=1) + torch.arange(self.num_prompts) * self.n


class SpeculativeRejection:
    """Best-of-N at a fraction of the cost: prune the worst partial answers at decision points.

    Pass an instance as ``custom_generate`` to ``model.generate`` (with ``do_sample=True``); the
    result is shaped as ``generate``'s: ``[P, L]`` ids, or with ``return_dict_in_generate=True`` a
    :class:`SpeculativeRejectionOutput` (rewards, per-sample tokens and the run's statistics).

    Args:
        reward_model: a :class:`~specalign.RewardModel`, or a callable ``(prompt_ids, answer_ids) ->
            scores [n]`` on lists of 1-D generator token-id tensors.
        n: samples per prompt; ``None`` takes the most whose cache fits the budget at the first
            decision point.
        alpha: rejection rate in ``[0, 1)``: each decision keeps ``round((1 - alpha) * pool)``
            answers per prompt (Python's ``round``, halves to even; at least one). ``alpha = 0``
            prunes nothing.
        decision_tokens: decision points in new tokens, increasing (e.g. ``[32, 64, 128]``); ``()``
            for none (Best-of-N); ``None`` to derive them from the memory budget.
        memory_budget: bytes of KV cache the batch may use (default: the device's free memory).
        max_batch_tokens: the budget in cached tokens (rows times sequence width) instead of bytes.
        seed: ``0 <= seed < 2**31``; sample ``s`` of prompt ``p`` draws its tokens from the stream
            ``(seed << 32) | (p * n + s)``, so its tokens never depend on the rest of the batch.
        progress: show a progress bar.
        backend: the ops backend (``None``, ``"reference"``, ``"cpp"``, ``"triton"``).
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
        seed: int = 0,
        progress: bool = False,
        backend: str | None = None,
    ):
        if not callable(reward_model):
            raise ValueError(f"reward_model must be a RewardModel or a callable, got {type(reward_model).__name__}")
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be an integer >= 1 (or None to size it from the memory budget), got {n!r}")
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
        if not 0 <= seed < MAX_SEED:
            raise ValueError(f"seed must lie in [0, 2**31), got {seed}")
        self.reward_model = reward_model
        self.n = n
        self.alpha = alpha
        self.decision_tokens = decision_tokens
        self.memory_budget = memory_budget
        self.max_batch_tokens = max_batch_tokens
        self.seed = seed
        self.progress = progress
        self.backend = backend

    def __call__(
        self,
        model,
        input_ids: torch.LongTensor,
        logits_processor,
        stopping_criteria,
        generation_config,
        synced_gpus: bool = False,
        streamer=None,
        **model_kwargs,
    ) -> SpeculativeRejectionOutput | torch.LongTensor:
        cache = _compat.pop_generate_cache(model_kwargs)
        self._check_call(model, cache, generation_config, synced_gpus, streamer, model_kwargs)
        device = model.device
        input_ids = input_ids.to(device)
        num_prompts, prompt_width = input_ids.shape
        prompt_mask = model_kwargs.get("attention_mask")
        prompt_mask = torch.ones_like(input_ids) if prompt_mask is None else prompt_mask.to(device)
        max_new_tokens = generation_config.max_length - prompt_width
        if max_new_tokens < 1:
            raise ValueError(f"max_length ({generation_config.max_length}) leaves no room after the {prompt_width}-token prompt")
        pad_token_id = _generation.pad_token_id(generation_config)
        budget_tokens = self._budget_tokens(model) if self.n is None or self.decision_tokens is None else None
        n = self.n or self._default_n(budget_tokens, num_prompts, prompt_width, max_new_tokens)
        if num_prompts * n >= MAX_ROWS:
            raise ValueError(f"n * prompts must be below 2**32, got {n} * {num_prompts}")

        batch, logits = self._prefill(model, input_ids, prompt_mask, cache, n, max_new_tokens)
        pool = _Pool(num_prompts, n, max_new_tokens, device)
        stats = dict(rows_decoded=0, rounds=0, decision_lengths=[], batch_sizes=[], reward_calls=0,
                     reward_tokens_scored=0, peak_batch_size=num_prompts * n)
        generated = 0
        bar = tqdm(total=max_new_tokens, desc=type(self).__name__, disable=not self.progress, unit="tok")
        while True:
            rows = batch.ids.shape[0]
            stats["rounds"] += 1
            stats["batch_sizes"].append(rows)
            bar.set_postfix(batch=rows)
            decision = self._next_decision(budget_tokens, rows, prompt_width, generated)
            round_over = DecisionPoint(prompt_width + min(decision or max_new_tokens, max_new_tokens))
            while True:
                width = prompt_width + generated
                scores = logits_processor(batch.ids[:, :width], logits)
                positions = torch.full((rows,), generated, dtype=torch.long, device=device)
                tokens = ops.sample(scores, seeds=batch.seeds, positions=positions, backend=self.backend)
                batch.ids[:, width] = tokens.masked_fill(batch.finished, pad_token_id)
                batch.mask[:, width] = 1
                batch.answer_lengths += ~batch.finished
                generated += 1
                bar.update(1)
                sequence = batch.ids[:, : width + 1]
                batch.finished |= stopping_criteria(sequence, scores)
                if bool((batch.finished | round_over(sequence, scores)).all()):
                    break
                logits = self._decode(model, batch, generated)
                stats["rows_decoded"] += rows

            pool.record(batch, self._score(batch, stats), generated)
            if bool(batch.finished.all()):
                break
            stats["decision_lengths"].append(generated)
            keep = pool.survivors(batch, self.alpha)
            if keep.numel() == 0:
                break
            batch.compact(keep.to(device), self.backend)
            logits = self._decode(model, batch, generated)
            stats["rows_decoded"] += batch.ids.shape[0]
        bar.close()

        best = pool.best()
        answers = pool.tokens[best, : int(pool.lengths[best].max())]
        sequences = torch.cat([input_ids, answers.masked_fill(answers < 0, pad_token_id)], dim=1)
        if not generation_config.return_dict_in_generate:
            return sequences
        shape = (num_prompts, n)
        return SpeculativeRejectionOutput(
            sequences=sequences,
            rewards=pool.rewards[best],
            tokens_generated=int(pool.lengths.sum()),
            candidate_tokens=pool.tokens.view(*shape, max_new_tokens),
            candidate_lengths=pool.lengths.view(shape),
            candidate_rewards=pool.rewards.view(shape),
            candidate_finished=pool.finished.view(shape),
            **stats,
        )

    def _check_call(self, model, cache, generation_config, synced_gpus, streamer, model_kwargs):
        if not generation_config.use_cache or not model_kwargs.get("use_cache", True):
            raise ValueError("use_cache=False: Speculative Rejection continues every round from the KV cache")
        if not isinstance(cache, DynamicCache) or cache.offloading:
            raise ValueError(
                f"the generator must decode with a DynamicCache (got a {type(cache).__name__} cache): "
                "use a model that supports it, without cache_implementation"
            )
        if cache.get_seq_length() > 0:
            raise ValueError("the cache already holds tokens; pass the prompts as input_ids and no cache")
        unsupported = set(model_kwargs) - SUPPORTED_MODEL_KWARGS
        if unsupported:
            raise ValueError(f"unsupported model inputs for {type(self).__name__}: {sorted(unsupported)}")
        if not generation_config.do_sample:
            raise ValueError("do_sample=False: pass do_sample=True, the samples must differ")
        if generation_config.num_return_sequences != 1 or generation_config.num_beams != 1:
            raise ValueError("num_return_sequences and num_beams must be 1; n sets the samples per prompt")
        if synced_gpus or streamer is not None:
            raise ValueError("synced_gpus and streamer are not supported")
        for flag in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
            if getattr(generation_config, flag):
                raise ValueError(f"{flag}=True is not supported")
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

    def _budget_tokens(self, model) -> int:
        """How many tokens (rows times sequence width) of KV cache the batch may hold."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        budget = self.memory_budget or _free_memory(model.device)
        return budget // kv_bytes_per_token(model)

    def _default_n(self, budget_tokens, num_prompts, prompt_width, max_new_tokens) -> int:
        if self.decision_tokens:
            first = self.decision_tokens[0]
        elif self.decision_tokens == ():
            first = max_new_tokens
        else:
            first = max(1, round(max_new_tokens * FIRST_DECISION_FRACTION))
        n = budget_tokens // (num_prompts * (prompt_width + first))
        if n < 1:
            raise ValueError(
                f"the memory budget ({budget_tokens} tokens) cannot hold {num_prompts} prompts of width {prompt_width} "
                f"plus {first} new tokens; raise memory_budget/max_batch_tokens"
            )
        return n

    def _next_decision(self, budget_tokens, rows, prompt_width, generated) -> int | None:
        """New-token length of the next decision point after ``generated``, or None."""
        if self.decision_tokens is not None:
            return next((d for d in self.decision_tokens if d > generated), None)
        length = budget_tokens // rows - prompt_width
        return length if length > generated else None

    def _prefill(self, model, input_ids, prompt_mask, cache, n, max_new_tokens):
        """Prefill the prompts once, then replicate their cache ``n`` times."""
        num_prompts, prompt_width = input_ids.shape
        inputs = {"input_ids": input_ids, "attention_mask": prompt_mask, _compat.cache_argument(model): cache, "use_cache": True}
        if _accepts(model, "position_ids"):
            inputs["position_ids"] = (prompt_mask.long().cumsum(-1) - 1).clamp_min(0)
        if model._supports_logits_to_keep():
            inputs["logits_to_keep"] = 1
        logits = model(**inputs).logits[:, -1].float()
        for layer in cache.layers:
            if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
                raise ValueError(f"the generator's cache has {type(layer).__name__} layers; only key/value layers are supported")
        cache.batch_repeat_interleave(n)

        device = input_ids.device
        ids = torch.zeros(num_prompts * n, prompt_width + max_new_tokens, dtype=torch.long, device=device)
        ids[:, :prompt_width] = input_ids.repeat_interleave(n, 0)
        mask = torch.zeros_like(ids)
        mask[:, :prompt_width] = prompt_mask.repeat_interleave(n, 0)
        candidates = torch.arange(num_prompts * n, device=device)
        batch = _Batch(
            cache=cache,
            prompt_width=prompt_width,
            ids=ids,
            mask=mask,
            prompt_lengths=prompt_mask.sum(-1).repeat_interleave(n),
            candidates=candidates,
            seeds=(self.seed << 32) | candidates,
            answer_lengths=torch.zeros_like(candidates),
            finished=torch.zeros_like(candidates, dtype=torch.bool),
        )
        return batch, logits.repeat_interleave(n, 0)

    def _decode(self, model, batch, generated):
        """Feed each row's last token; return the next logits ``[B, V]``."""
        width = batch.prompt_width + generated
        inputs = {
            "input_ids": batch.ids[:, width - 1 : width],
            "attention_mask": batch.mask[:, :width],
            _compat.cache_argument(model): batch.cache,
            "use_cache": True,
        }
        if _accepts(model, "position_ids"):
            inputs["position_ids"] = (batch.prompt_lengths + generated - 1)[:, None]
        return model(**inputs).logits[:, -1].float()

    def _score(self, batch, stats) -> torch.Tensor:
        """Reward of every row's prompt and answer so far, unpadded: float32 ``[B]`` on the CPU."""
        prompt_width = batch.prompt_width
        # A copy, so the pieces handed to the reward model never change when the batch is compacted.
        ids = batch.ids[:, : prompt_width + int(batch.answer_lengths.max())].clone()
        prompts, answers = [], []
        for row, (prompt_length, answer_length) in enumerate(zip(batch.prompt_lengths.tolist(), batch.answer_lengths.tolist())):
            prompts.append(ids[row, prompt_width - prompt_length : prompt_width])
            answers.append(ids[row, prompt_width : prompt_width + answer_length])
            stats["reward_tokens_scored"] += prompt_length + answer_length
        stats["reward_calls"] += 1
        return as_rewards(self.reward_model(prompts, answers), len(answers), "reward_model")


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache per token: 2 * layers * kv_heads * head_dim * dtype bytes, from the config."""
    config = model.config.get_text_config(decoder=True)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _accepts(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters
