"""Reward-Shifted Speculative Sampling (SSS; Li et al., EMNLP 2025; the math in docs/math.md) as a drop-in ``generate`` decoding loop.

::

    sss = RewardShiftedSpeculativeSampling(aligned_draft, ref_draft, num_draft_tokens=4)
    out = target.generate(**inputs, custom_generate=sss, do_sample=True, temperature=0.8, max_new_tokens=128)

The aligned draft ``pi_r`` proposes; the target ``pi_ref`` verifies with the exact SSS rule of
:func:`specalign.ops.speculative_verify`, so each token follows ``norm(pi_ref * pi_r / pi_d)``, ``pi_d``
being the draft before alignment (``ref_draft``). Temperature applies to all three models; top-k,
top-p and every other logits processor to the target only: the drafts' ratio ``pi_r / pi_d`` is the
reward tilt and is never truncated. With ``do_sample=False`` the output is the greedy decoding of that
shifted target.

Scope: exact per token. The product over tokens equals the sequence-level RLHF optimum only under
the per-token (EFT-style) assumption that ``pi_r / pi_d`` is the tilt ``exp(r / beta)`` token by token.

The loop is :class:`specalign.speculative_sampling.SpeculativeSampling`'s, with the reference draft
scoring each step's ``K+1`` positions in one forward and every cache compacted alike.
"""
from __future__ import annotations

from specalign import _hf
from specalign.speculative_sampling import SpeculativeSampling


class RewardShiftedSpeculativeSampling(SpeculativeSampling):
    """SSS; pass an instance as ``custom_generate`` to the target's (``pi_ref``) ``generate``.

    Args:
        aligned_draft: ``pi_r``, the small model after alignment (e.g. DPO); it proposes tokens.
        ref_draft: ``pi_d``, the same small model before alignment (e.g. SFT).
        num_draft_tokens, seed, tokenizer, progress, backend: as in :class:`SpeculativeSampling`.
    """

    _draft_name = "aligned_draft"

    def __init__(self, aligned_draft, ref_draft, num_draft_tokens: int = 4, *, seed=None, tokenizer=None,
                 progress: bool = False, backend: str | None = None):
        super().__init__(aligned_draft, num_draft_tokens, seed=seed, tokenizer=tokenizer, progress=progress,
                         backend=backend)
        _hf.check_model("ref_draft", ref_draft)
        self.ref_draft = ref_draft
