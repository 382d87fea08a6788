"""The one place that knows which names transformers uses in which release.

Supported and tested: transformers 5.17 to 5.24 (``SUPPORTED_TRANSFORMERS``; ``setup.py`` states the
same range). No other module reads a version-specific name:

- the cache handed to a ``custom_generate`` callable: ``model_kwargs["cache"]`` from 5.24 on,
  ``model_kwargs["past_key_values"]`` before;
- the forward argument that takes a cache: ``cache=`` from 5.24 on (``past_key_values=`` is
  deprecated there, for removal in 5.40), ``past_key_values=`` before, and ``cache_params=`` in
  5.x releases before 5.24 for some state-space models. It is read from each model's own forward
  signature, so remote-code models with older names keep working;
- the output attribute that returns the cache (``cache`` or ``past_key_values``);
- ``_setup_cache``, the method of modules that hold a recurrent state themselves (RecurrentGemma).
"""
from __future__ import annotations

import functools
import inspect

import transformers

SUPPORTED_TRANSFORMERS = (">=5.17", "<5.25")

# Newest name first: the first one present wins.
_CACHE_KWARG_NAMES = ("cache", "past_key_values", "cache_params")


def transformers_version() -> tuple[int, int]:
    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def pop_generate_cache(model_kwargs: dict):
    """Remove and return the cache that ``generate`` prepared for a ``custom_generate`` callable
    (``None`` when it prepared none), whatever this release calls it."""
    cache = None
    for name in _CACHE_KWARG_NAMES:
        value = model_kwargs.pop(name, None)
        if cache is None:
            cache = value
    return cache


@functools.lru_cache(maxsize=None)
def _forward_parameters(forward_type) -> frozenset[str]:
    return frozenset(inspect.signature(forward_type).parameters)


def forward_parameters(model) -> frozenset[str]:
    """The argument names of ``model.forward`` (cached per class)."""
    return _forward_parameters(type(model).forward)


def cache_argument(model) -> str | None:
    """The name under which ``model.forward`` takes its cache, or ``None`` if it takes none."""
    parameters = forward_parameters(model)
    return next((name for name in _CACHE_KWARG_NAMES if name in parameters), None)


def output_cache(output):
    """The cache a forward returned (``None`` if none)."""
    for name in _CACHE_KWARG_NAMES:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def keeps_state_in_modules(model) -> bool:
    """Whether some module of ``model`` holds a recurrent state itself, outside the cache."""
    return any(callable(getattr(module, "_setup_cache", None)) for module in model.modules())
