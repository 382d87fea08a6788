"""Online confidence early stop (DeepConf-online; Fu et al., 2025, "Deep Think with Confidence") as a
drop-in ``generate`` decoding loop: reward-free, no extra forward.

::

    out = model.generate(**inputs, custom_generate=ConfidenceEarlyStop(n=64, warmup=16, keep=0.9),
                         do_sample=True, max_new_tokens=256)

Two passes of :class:`~specalign.SpeculativeRejection`'s engine with a
:class:`~specalign.confidence.Confidence` scorer:

1. warm-up: ``warmup`` samples per prompt decode to the end; each scores its trace confidence (the
   lowest mean of ``window`` consecutive token values);
2. the other ``n - warmup`` samples decode with a threshold per prompt, the ``1 - keep`` quantile
   of its warm-up scores: a sample stops at the first token where the mean of its last ``window``
   values falls below it. Every ``window`` tokens the stopped samples leave the batch (a decision
   point that prunes nothing).

The answer is the finished sample, warm-up included, with the highest confidence; a stopped sample
is incomplete and never returned (it is reported as unfinished, with score ``-inf``). DeepConf
votes over answers a task can compare (e.g. a number); free text has no such answer, so the most
confident finished sample is returned instead.
"""
from __future__ import annotations

import copy

import torch

from specalign import _compat, _hf
from specalign.confidence import Confidence
from specalign.speculative_rejection import SpeculativeRejection, _Pool


class ConfidenceEarlyStop:
    """DeepConf-online early stopping; pass an instance as ``custom_generate`` (with ``do_sample=True``).

    Args:
        n: samples per prompt, warm-up included.
        warmup: ``1 <= warmup < n`` samples per prompt that set the threshold.
        keep: in ``(0, 1]``, the fraction of the warm-up's confidences at or above the threshold
            (DeepConf-high keeps 0.9, DeepConf-low 0.1).
        window, statistic: the :class:`~specalign.confidence.Confidence` score.
        seed: ``None`` (drawn from torch's global generator) or an int; the warm-up samples draw as
            ``BestOfN(n=warmup, seed=seed)``'s.
        progress, backend: as in :class:`~specalign.SpeculativeRejection`.
    """

    def __init__(self, n: int = 64, warmup: int = 16, keep: float = 0.9, *, window: int = 16,
                 statistic: str = "certainty", seed: int | None = None, progress: bool = False,
                 backend: str | None = None):
        if isinstance(n, bool) or not isinstance(n, int) or isinstance(warmup, bool) or not isinstance(warmup, int) \
                or not 1 <= warmup < n:
            raise ValueError(f"n and warmup must be ints with 1 <= warmup < n, got n={n!r}, warmup={warmup!r}")
        if not 0 < keep <= 1:
            raise ValueError(f"keep must lie in (0, 1], got {keep}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be None or an int, got {type(seed).__name__}")
        Confidence(window, statistic)  # checks window and statistic now
        self.n, self.warmup, self.keep = n, warmup, keep
        self.window, self.statistic = window, statistic
        self.seed, self.progress, self.backend = seed, progress, backend

    def __call__(self, model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                 streamer=None, stop_strings=None, **model_kwargs):
        _hf.check_stop_strings(type(self).__name__, stop_strings)
        cache = _compat.pop_generate_cache(model_kwargs)  # each pass prefills a cache of its own
        _hf.check_call(type(self).__name__, model, generation_config, synced_gpus, streamer, model_kwargs, cache)
        config = copy.copy(generation_config)
        config.return_dict_in_generate = True
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())

        def run(scorer, n, run_seed, decision_tokens):
            method = SpeculativeRejection(scorer, n=n, alpha=0.0, decision_tokens=decision_tokens, seed=run_seed,
                                          progress=self.progress, backend=self.backend)
            return method, method(model, input_ids, logits_processor, stopping_criteria, config, synced_gpus,
                                  streamer, **model_kwargs)

        _, warm = run(Confidence(self.window, self.statistic), self.warmup, seed, ())
        thresholds = torch.stack([scores[finished].quantile(1 - self.keep)
                                  for scores, finished in zip(warm.candidate_rewards, warm.candidate_finished)])
        max_new_tokens = warm.candidate_tokens.shape[-1]
        stopping = Confidence(self.window, self.statistic, stop_below=thresholds)
        method, rest = run(stopping, self.n - self.warmup, seed + 1, tuple(range(self.window, max_new_tokens, self.window)))
        pool, stats = _merge(warm, rest)
        return method._output(pool, input_ids.to(model.device), generation_config, stats)


def _merge(warm, rest) -> tuple[_Pool, dict]:
    """One pool of both passes' samples (warm-up first), stopped samples unfinished, and their statistics."""
    stopped = rest.candidate_finished & (rest.candidate_rewards == -torch.inf)
    num_prompts, warmup, max_new_tokens = warm.candidate_tokens.shape
    n = warmup + rest.candidate_tokens.shape[1]
    pool = _Pool(num_prompts, n, max_new_tokens, warm.candidate_tokens.device)
    pool.rewards = torch.cat([warm.candidate_rewards, rest.candidate_rewards], 1).flatten()
    pool.lengths = torch.cat([warm.candidate_lengths, rest.candidate_lengths], 1).flatten()
    pool.finished = torch.cat([warm.candidate_finished, rest.candidate_finished & ~stopped], 1).flatten()
    pool.tokens = torch.cat([warm.candidate_tokens, rest.candidate_tokens], 1).flatten(0, 1)
    stats = dict(rows_decoded=warm.rows_decoded + rest.rows_decoded, rounds=warm.rounds + rest.rounds,
                 decision_lengths=rest.decision_lengths, batch_sizes=warm.batch_sizes + rest.batch_sizes,
                 reward_calls=0, reward_tokens_scored=0, peak_batch_size=max(warm.peak_batch_size, rest.peak_batch_size),
                 compaction_seconds=None)
    return pool, stats
