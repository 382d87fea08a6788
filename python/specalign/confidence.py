"""Reward-free scores from the generator's own logits: :class:`Confidence`.

::

    out = model.generate(**inputs, custom_generate=SpeculativeRejection(Confidence(window=16), n=64, alpha=0.5),
                         do_sample=True, max_new_tokens=256)

Confidence takes the place of the reward model. At every step of
:class:`~specalign.SpeculativeRejection`'s loop it draws the tokens itself with
:func:`specalign.ops.sample_with_stats` (the tokens of :func:`~specalign.ops.sample`, and a
statistic of each row's next-token distribution from the same pass over the logits: no second
pass, no extra forward, no reward model), and records each sample's per-token values. A sample's
score is then its confidence:

- ``window=w``: the lowest mean of ``w`` consecutive token values (DeepConf's "lowest group
  confidence", Fu et al., 2025, "Deep Think with Confidence"); a sample shorter than ``w`` scores
  the mean of its values;
- ``window=None``: the mean over all its tokens (the trace score of self-certainty, Kang et al.,
  2025, "Scalable Best-of-N Selection for Large Language Models via Self-Certainty").

The token value (``statistic``) is, for the processed distribution ``p`` over the tokens it allows:
``"certainty"``, self-certainty ``KL(uniform || p)`` (DeepConf's token confidence over the whole
support is this plus ``log |support|``); ``"negative_entropy"``; or ``"log_prob"``, the drawn
token's log-probability. Higher is more confident.

With ``stop_below=`` (a threshold, or one per prompt) a sample stops as soon as the mean of its last
``window`` values falls below it (DeepConf-online's early stop); a stopped sample is incomplete, so
it scores ``-inf`` and is never returned. :class:`specalign.early_stop.ConfidenceEarlyStop` sets the
thresholds from a warm-up set of samples.

A :class:`Confidence` holds the values of the ``generate`` call in progress: use one instance per
concurrent call.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from specalign import ops

STATISTICS = {
    "certainty": lambda stats: stats.certainty,
    "negative_entropy": lambda stats: -stats.entropy,
    "log_prob": lambda stats: stats.log_prob,
}


class LogitScorer:
    """A scorer that reads the generator's logits inside :class:`~specalign.SpeculativeRejection`'s
    loop instead of calling a model on text. The loop calls :meth:`start` once per ``generate``
    call, :meth:`sample` at every step and :meth:`score` at every decision point."""

    def start(self, num_prompts: int, n: int, max_new_tokens: int, device: torch.device) -> None:
        """Prepare for ``num_prompts * n`` samples (sample ``s`` of prompt ``p`` is ``p * n + s``)."""
        raise NotImplementedError

    def sample(self, scores, seeds, positions, candidates, finished, backend) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw the next token of each row from the processed ``scores [B, V]`` as
        :func:`specalign.ops.sample` does with ``seeds`` and ``positions``; rows hold samples
        ``candidates``, and ``finished`` rows are only padded. Returns the tokens and the rows to
        stop (bool ``[B]``, or ``None``)."""
        raise NotImplementedError

    def score(self, candidates: torch.Tensor, answer_lengths: torch.Tensor) -> torch.Tensor:
        """float32 ``[B]`` scores (on the CPU) of samples ``candidates`` at their first ``answer_lengths`` tokens."""
        raise NotImplementedError


class Confidence(LogitScorer):
    """The generator's confidence in its own samples, as a reward-free score (see the module docstring).

    Args:
        window: ``w >= 1``, score the lowest mean of ``w`` consecutive token values; ``None``, the
            mean of all of them.
        statistic: the token value: ``"certainty"`` (self-certainty), ``"negative_entropy"`` or
            ``"log_prob"``.
        stop_below: ``None``, a float, or one float per prompt: stop a sample once the mean of its
            last ``window`` token values is below it (needs ``window``).
    """

    def __init__(self, window: int | None = 16, statistic: str = "certainty",
                 stop_below: float | Sequence[float] | torch.Tensor | None = None):
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be an int >= 1 or None, got {window!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {sorted(STATISTICS)}, got {statistic!r}")
        if stop_below is not None:
            if window is None:
                raise ValueError("stop_below needs a window: a sample stops when its last window's mean is below it")
            stop_below = torch.as_tensor(stop_below, dtype=torch.float32)
            if stop_below.dim() > 1 or bool(torch.isnan(stop_below).any()):
                raise ValueError(f"stop_below must be a float or one float per prompt, got shape {tuple(stop_below.shape)}")
        self.window = window
        self.statistic = statistic
        self.stop_below = stop_below

    def start(self, num_prompts, n, max_new_tokens, device) -> None:
        if self.stop_below is not None and self.stop_below.dim() == 1 and self.stop_below.numel() != num_prompts:
            raise ValueError(f"stop_below has {self.stop_below.numel()} thresholds for {num_prompts} prompts")
        self.n = n
        self.values = torch.zeros(num_prompts * n, max_new_tokens, device=device)
        self.stopped = torch.zeros(num_prompts * n, dtype=torch.bool, device=device)
        if self.stop_below is not None:
            self.thresholds = self.stop_below.to(device).expand(num_prompts)

    def sample(self, scores, seeds, positions, candidates, finished, backend):
        stats = ops.sample_with_stats(scores, seeds=seeds, positions=positions, backend=backend)
        live = ~finished
        self.values[candidates[live], positions[live]] = STATISTICS[self.statistic](stats)[live]
        if self.stop_below is None:
            return stats.tokens, None
        window_means = self._last_window_means(candidates, positions)
        stop = live & (positions + 1 >= self.window) & (window_means < self.thresholds[candidates // self.n])
        self.stopped[candidates[stop]] = True
        return stats.tokens, stop

    def score(self, candidates, answer_lengths) -> torch.Tensor:
        scores = trace_confidence(self.values[candidates], answer_lengths.to(self.values.device), self.window)
        return scores.masked_fill(self.stopped[candidates], -math.inf).float().cpu()

    def _last_window_means(self, candidates, positions) -> torch.Tensor:
        """Mean of the values at ``positions - w + 1 .. positions`` of each row (clamped at 0)."""
        offsets = torch.arange(self.window, device=positions.device)
        columns = (positions[:, None] - offsets).clamp_min(0)
        return self.values[candidates[:, None], columns].mean(1)


def trace_confidence(values: torch.Tensor, lengths: torch.Tensor, window: int | None) -> torch.Tensor:
    """Per row of ``values [B, L]``, over its first ``lengths`` entries: the lowest mean of ``window``
    consecutive entries, or the mean of all of them when the row is shorter or ``window`` is None."""
    lengths = lengths.clamp_min(1)
    sums = torch.nn.functional.pad(values.double().cumsum(1), (1, 0))
    means = sums.gather(1, lengths[:, None]).squeeze(1) / lengths
    if window is None or window > values.shape[1]:
        return means
    window_means = (sums[:, window:] - sums[:, :-window]) / window  # window ending at column t + window - 1
    ends = torch.arange(window, values.shape[1] + 1, device=values.device)
    lowest = window_means.masked_fill(ends > lengths[:, None], math.inf).amin(1)
    return torch.where(lengths >= window, lowest, means)
