"""specalign: fast, exact inference-time alignment for Hugging Face models.

Ops (``specalign.ops``): ``speculative_verify``, ``speculative_verify_probs``, ``sample``,
``compact_rows``, ``compact_columns``, each with C++ (CPU), Triton (CUDA) and reference backends.
"""
from specalign import ops
from specalign.ops import (
    VerifyOutput,
    compact_columns,
    compact_rows,
    sample,
    speculative_verify,
    speculative_verify_probs,
)

__all__ = [
    "ops",
    "VerifyOutput",
    "compact_columns",
    "compact_rows",
    "sample",
    "speculative_verify",
    "speculative_verify_probs",
]
__version__ = "0.1.0"
