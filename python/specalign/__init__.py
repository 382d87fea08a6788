"""specalign: fast, exact inference-time alignment for Hugging Face models.

Ops (``specalign.ops``): ``speculative_verify``, ``speculative_verify_probs``, ``sample``,
``sample_with_stats``, ``compact_rows``, ``fork_rows``, ``compact_columns``, each with C++ (CPU),
Triton (CUDA) and reference backends.
"""
from specalign import ops
from specalign.ops import (
    SampleStats,
    VerifyOutput,
    compact_columns,
    compact_rows,
    fork_rows,
    sample,
    sample_with_stats,
    speculative_verify,
    speculative_verify_probs,
)

# Algorithms load on first use: importing specalign for its ops needs no transformers.
_ALGORITHMS = {
    "BestOfN": "specalign.best_of_n",
    "SpeculativeRejection": "specalign.speculative_rejection",
    "RewardModel": "specalign.reward_model",
    "SpeculativeSampling": "specalign.speculative_sampling",
    "RewardShiftedSpeculativeSampling": "specalign.reward_shifted",
    "stop_strings": "specalign._hf",
    "Confidence": "specalign.confidence",
    "ConfidenceEarlyStop": "specalign.early_stop",
    "BeamSearch": "specalign.beam_search",
    "ImplicitReward": "specalign.beam_search",
}


def __getattr__(name):
    if name in _ALGORITHMS:
        import importlib

        return getattr(importlib.import_module(_ALGORITHMS[name]), name)
    raise AttributeError(f"module 'specalign' has no attribute {name!r}")


__all__ = [
    *_ALGORITHMS,
    "ops",
    "SampleStats",
    "VerifyOutput",
    "compact_columns",
    "compact_rows",
    "fork_rows",
    "sample",
    "sample_with_stats",
    "speculative_verify",
    "speculative_verify_probs",
]
__version__ = "0.1.0"
