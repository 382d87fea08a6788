"""Tiny random-weight builds of every decoder-only causal LM in the installed transformers.

:func:`architectures` reads the causal-LM auto mapping and sorts its entries into the ones built here
and the ones skipped, each with its reason. :func:`build` makes a model of a
given architecture: random weights from a fixed seed, untied embeddings where the config allows, a
vocabulary of ``VOCAB`` ids holding the special ids, the fewest layers that keep every kind of layer
of the architecture's pattern (attention and state-space, sliding and full, dense and MoE), small
widths, a sliding window or attention chunk of ``WINDOW`` tokens (so short prompts cross it), and
float32 weights spread wide (``INITIALIZER_RANGE``), so that the logits are far from ties and one
forward over ``K+1`` positions and ``K+1`` one-token forwards agree on every argmax. (float64 is no
option: HF's eager attention turns the fully masked rows of left padding into NaN in float64.)

Config attribute names differ per architecture; ``TINY`` lists the names and is applied to whichever
a config has (its fields and its ``attribute_map``). ``OVERRIDES`` holds the few per-architecture
settings the generic rules cannot find, each with its reason.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect

import torch
import transformers
from transformers import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

VOCAB = 128
PAD, BOS, EOS = 0, 1, 2
# Other special ids a config names (image, separator, ... tokens) get ids from here up, below FIRST_WORD.
FIRST_OTHER_SPECIAL = 3
# Prompts are drawn from [FIRST_WORD, VOCAB): no special id appears in them.
FIRST_WORD = 16
WINDOW = 6
HIDDEN = 32
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
FFN = 64
EXPERTS = 4
EXPERTS_PER_TOKEN = 2
STATE = 8
# Noise of a draft built from its target (:func:`perturbed_copy`), relative to each weight's spread.
DRAFT_NOISE = 0.06
# A guard against a size the generic rules missed (an architecture-specific field left at full size).
MAX_PARAMETERS = 500_000
INITIALIZER_RANGE = 0.2  # 10x the usual 0.02: random logits far from flat, so greedy output follows the context

# Config fields (or attribute_map names) and their tiny values; each config takes the ones it has.
TINY = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "num_kv_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "intermediate_size": FFN,
    "ffn_dim": FFN,
    "ffn_hidden_size": FFN,
    "n_inner": FFN,
    "dff": FFN,
    "dim_ff": FFN,
    "decoder_ffn_dim": FFN,
    "dense_intermediate_size": FFN,
    "num_heads": HEADS,
    "d_head": HEAD_DIM,
    "dim_head": HEAD_DIM,
    "max_position_embeddings": 128,
    "initializer_range": INITIALIZER_RANGE,
    "init_std": INITIALIZER_RANGE,  # the same, as OPT, XGLM and TrOCR call it
    "tie_word_embeddings": False,
    "use_cache": True,
    # Multi-head latent attention (DeepSeek family).
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_nope_head_dim": HEAD_DIM,
    "qk_rope_head_dim": HEAD_DIM,
    "qk_head_dim": 2 * HEAD_DIM,
    "v_head_dim": HEAD_DIM,
    "index_head_dim": HEAD_DIM,
    "index_n_heads": 2,
    "index_topk": 4,
    "rotary_dim": HEAD_DIM // 2,
    "o_lora_rank": 16,
    "zero_expert_num": 2,
    "d_inner": FFN,
    "o_groups": 2,
    "swa_head_dim": HEAD_DIM,
    "swa_num_attention_heads": HEADS,
    "swa_num_key_value_heads": KV_HEADS,
    # Per-layer input embeddings (Gemma 3n, Gemma 4).
    "vocab_size_per_layer_input": VOCAB,
    "hidden_size_per_layer_input": 8,
    "unpadded_vocab_size": VOCAB,
    # RoCBert's glyph and pronunciation embeddings.
    "shape_vocab_size": 16,
    "pronunciation_vocab_size": 16,
    "shape_embed_dim": 8,
    "pronunciation_embed_dim": 8,
    # Mixture of experts.
    "num_experts": EXPERTS,
    "num_local_experts": EXPERTS,
    "n_routed_experts": EXPERTS,
    "moe_num_experts": EXPERTS,
    "num_experts_per_tok": EXPERTS_PER_TOKEN,
    "moe_topk": EXPERTS_PER_TOKEN,
    "moe_k": EXPERTS_PER_TOKEN,
    "moe_intermediate_size": FFN // 2,
    "expert_ffn_hidden_size": FFN // 2,
    "shared_expert_intermediate_size": FFN // 2,
    "shared_intermediate_size": FFN // 2,
    "shared_experts_intermediate_size": FFN // 2,
    "moe_shared_expert_intermediate_size": FFN // 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    # State-space and linear-attention layers.
    "state_size": STATE,
    "ssm_state_size": STATE,
    "mamba_d_state": STATE,
    "time_step_rank": 4,
    "mamba_dt_rank": 4,
    "n_groups": 1,
    "mamba_n_groups": 1,
    "mamba_ngroups": 1,
    "mamba_n_heads": 4,
    "mamba_num_heads": 4,
    "n_mamba_heads": 4,
    "mamba_d_head": 2 * HIDDEN // 4,
    "mamba_head_dim": 2 * HIDDEN // 4,
    "chunk_size": 8,
    "mamba_chunk_size": 8,
    "mamba_d_ssm": 2 * HIDDEN,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": HEAD_DIM,
    "linear_value_head_dim": HEAD_DIM,
    "linear_head_dim": HEAD_DIM,
    "linear_num_heads": HEADS,
    # Windows: small, so the prompts and answers of the tests cross them.
    "sliding_window": WINDOW,
    "sliding_window_size": WINDOW,
    "attention_chunk_size": WINDOW,
    "attention_window_size": WINDOW,
    "window_size": WINDOW,
}

# Per-architecture settings the generic rules cannot derive, each with its reason.
OVERRIDES: dict[str, dict] = {
    # The default config has no attention layer (the released Bamba models have some): keep both kinds.
    "bamba": {"attn_layer_indices": [1]},
    # Its default config is all Mamba layers, on which HF's own generate fails; the released models are hybrids.
    "granitemoehybrid": {"layer_types": ["mamba", "attention"]},
    # Layer kinds from periods and offsets: layer 0 Mamba and dense, layer 1 attention and MoE.
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1},
    # block_types repeats over the layers; the default starts with two recurrent blocks.
    "recurrent_gemma": {"block_types": ["recurrent", "attention"]},
    # LFM2's default config is all attention layers (the released models mix in convolution layers), and
    # LFM2-MoE's has no layer_types (the model needs them): a convolution layer and an attention layer.
    "lfm2": {"layer_types": ["conv", "full_attention"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    # Looped model: input, recurrent (run n_recurrent_loops times) and output layers, sliding and full attention.
    "dory": {"num_hidden_layers": 3, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
             "n_input_layers": 1, "n_recurrent_layers": 1, "n_output_layers": 1},
    # Mamba-2 heads: num_heads * head_dim must equal expand * hidden_size.
    "mamba2": {"head_dim": 2 * HIDDEN // HEADS},
    # ZAYA routes each token to one expert only.
    "zaya": {"num_experts_per_tok": 1},
    # The config rounds the q/k and v widths up to multiples of 64, the layers do not: make them multiples of 64.
    "xlstm": {"qk_dim_factor": 2.0, "v_dim_factor": 2.0},
    # Layers share the cache of an earlier layer of their type: two that own a cache, two that share it.
    "gemma3n_text": {"num_hidden_layers": 4, "num_kv_shared_layers": 2, "intermediate_size": FFN,
                     "layer_types": ["sliding_attention", "full_attention"] * 2,
                     "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0]},
    # Moshi's window lives in its cache alone (its mask is fully causal), so its own prefill and decoding
    # disagree once a sequence crosses it (Hugging Face's assisted generation then differs from its greedy
    # output too): a window the tests never cross.
    "moshi": {"sliding_window": 64},
    # attention_types lists (pattern, repeats) pairs that must cover num_layers.
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    # Its rope parameters are keyed by layer type, and the default config gives none; its 3-D rope splits
    # the head_dim / 2 frequencies into mrope_section (default [22, 22, 20], for head_dim 128).
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0,
                                                                   "mrope_section": [1, 1, HEAD_DIM // 2 - 2]}}},
    # The default config leaves the sparse-attention indexer of its indexed_attention layers unset.
    "qwen4_exp_text": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": HEAD_DIM, "indexer_budget": 8,
                       "indexer_compress_ratio": 2, "hc_lowrank": 8},
    # Each layer holds two attention sublayers: num_hidden_layers is twice num_layers (a field of its own in 5.17).
    "longcat_flash": {"num_layers": 1, "num_hidden_layers": 2},
    # DBRX keeps attention and FFN sizes in sub-configs; its attention fails with clip_qkv=None (the released model clips at 8).
    "dbrx": {"attn_config": {"kv_n_heads": KV_HEADS, "rope_theta": 10000.0, "clip_qkv": 8.0},
             "ffn_config": {"hidden_size": HIDDEN, "ffn_hidden_size": FFN, "moe_num_experts": EXPERTS, "moe_top_k": EXPERTS_PER_TOKEN}},
    # Its sliding-window layers take their attention sizes from swa_* arguments.
    "dots3_note_text": {"swa_num_attention_heads": HEADS, "swa_num_key_value_heads": HEADS, "swa_q_lora_rank": 16,
                        "swa_kv_lora_rank": 16, "swa_head_dim": 2 * HEAD_DIM, "swa_qk_nope_head_dim": HEAD_DIM,
                        "swa_v_head_dim": HEAD_DIM},
}


def _fields(config_class) -> frozenset[str]:
    return frozenset(field.name for field in dataclasses.fields(config_class))


def _config_names(config_class) -> frozenset[str]:
    """The names a config takes as arguments: its fields and its ``attribute_map`` aliases."""
    return _fields(config_class) | set(getattr(config_class, "attribute_map", {}))

# Fields that list layer indices (rather than one entry per layer).
INDEX_LIST_FIELDS = ("full_attn_idxs", "moe_layers", "mlp_only_layers", "attn_layer_indices")
# Forward arguments that carry images, audio or video.
MEDIA_WORDS = ("pixel", "image", "audio", "video", "input_features")
# Layer patterns read after building, whatever produced them (a field, or a property computed from
# periods and offsets): the tiny model must keep every kind of layer the full-size one has.
LAYER_KIND_ATTRIBUTES = ("layer_types", "layers_block_type", "mlp_layer_types", "block_types")


class Skipped(Exception):
    """The architecture is not a decoder-only text model this harness can test; the message says why."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    model_type: str
    model_class: type
    config_class: type


@functools.cache
def architectures() -> tuple[dict[str, Architecture], dict[str, str]]:
    """The causal-LM auto mapping, sorted: ``(to_build, skipped)``, model type to
    :class:`Architecture`, and model type to the reason it is skipped."""
    to_build, skipped = {}, {}
    for model_type, class_name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        try:
            to_build[model_type] = _architecture(model_type, class_name)
        except Skipped as reason:
            skipped[model_type] = str(reason)
    return to_build, skipped


def _architecture(model_type: str, class_name: str) -> Architecture:
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise Skipped(f"{class_name} is not exported by transformers")
    config_class = CONFIG_MAPPING[model_type]
    if config_class.model_type != model_type and config_class.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise Skipped(f"alias of {config_class.model_type} (same config and model class)")
    if model_type in SKIPPED:
        raise Skipped(SKIPPED[model_type])
    try:
        default = config_class()
    except Exception as error:  # noqa: BLE001 - any failure is the reason
        raise Skipped(f"its default config does not build: {type(error).__name__}: {error}") from None
    if getattr(default, "is_encoder_decoder", False):
        raise Skipped("encoder-decoder: its causal LM is the decoder half, with cross-attention to an encoder")
    text_config = getattr(default, "text_config", None) if "text_config" in (getattr(config_class, "sub_configs", None) or {}) else None
    if text_config is not None and text_config.model_type != model_type and text_config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise Skipped(f"multimodal; its text decoder is tested as {text_config.model_type}")
    media = sorted(name for name in inspect.signature(model_class.forward).parameters if any(word in name for word in MEDIA_WORDS))
    if media:
        raise Skipped(f"multimodal: its forward takes image or audio inputs ({', '.join(media)})")
    if text_config is not None:
        config_class = model_class.config_class  # a text decoder whose config has no entry of its own
    return Architecture(model_type, model_class, config_class)

# Architectures skipped by name, with the reason (the generic rules above cannot tell).
SKIPPED: dict[str, str] = {
    "gemma4_assistant": "draft head for Gemma 4's own speculative decoding: decodes from its target's shared KV states",
    "gemma4_unified_assistant": "draft head for Gemma 4's own speculative decoding: decodes from its target's shared KV states",
    "reformer": "encoder architecture (its LM head demands is_decoder=True); LSH attention caches hash buckets",
    "xmod": "bidirectional encoder (XLM-R family) that also needs language-adapter ids",
    "blt": "byte latent transformer: four sub-models (patcher, local encoder and decoder, global) and "
           "hash n-gram embeddings, not one decoder stack",
}


def tiny_config(arch: Architecture):
    """The architecture's config with tiny sizes, a small vocabulary and the fewest layers that keep
    every kind of layer of its pattern."""
    config_class = arch.config_class
    names = _config_names(config_class)
    default = config_class()
    kwargs = _tiny_sizes(config_class)
    kwargs.update(_special_ids(default, names))
    kwargs.update(_layer_pattern(default, _fields(config_class)))
    if "kv_lora_rank" in names:
        kwargs["num_key_value_heads"] = HEADS  # multi-head latent attention expands keys to every head
    for name in ("first_k_dense_replace", "num_dense_layers"):
        if isinstance(_get(default, name), int) and _get(default, name) > 1:
            kwargs[name] = 1  # one dense layer, then MoE layers: both kinds in two layers
    # Eager experts: the same math as the default grouped_mm kernels, with no dtype or size limits.
    kwargs["experts_implementation"] = "eager"
    kwargs.update(OVERRIDES.get(arch.model_type, {}))
    config = config_class(**kwargs)
    _check_layer_kinds(arch.model_type, default, config)
    return config


def _tiny_sizes(config_class) -> dict:
    """``TINY`` under the config's own field names. An ``attribute_map`` alias passed as an argument is
    set only after ``__post_init__``, which may already have derived other values from the field."""
    fields, aliases = _fields(config_class), getattr(config_class, "attribute_map", {})
    sizes = {aliases[name]: value for name, value in TINY.items() if name in aliases and aliases[name] in fields}
    sizes.update({name: value for name, value in TINY.items() if name in fields})
    return sizes


def _special_ids(default, names) -> dict:
    ids = {name: value for name, value in (("pad_token_id", PAD), ("bos_token_id", BOS), ("eos_token_id", EOS)) if name in names}
    others = sorted(
        name for name in names
        if name.endswith(("_token_id", "_token_index")) and name not in ids and _is_id(_get(default, name))
    )
    if FIRST_OTHER_SPECIAL + len(others) > FIRST_WORD:
        raise ValueError(f"{len(others)} special ids do not fit below FIRST_WORD: {others}")
    ids.update({name: FIRST_OTHER_SPECIAL + i for i, name in enumerate(others)})
    return ids


def _is_id(value) -> bool:
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_id(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool)


def _get(config, name):
    """``getattr``, or ``None`` for attributes a config refuses to read globally (per-layer values)."""
    try:
        return getattr(config, name)
    except Exception:  # noqa: BLE001 - e.g. transformers' AmbiguousGlobalPerLayerAttributeError
        return None


def _layer_pattern(default, fields) -> dict:
    """``num_hidden_layers`` and every per-layer list, cut to the first layers that together show
    each value of each per-layer list (at least two layers)."""
    layers = _get(default, "num_hidden_layers")
    if not isinstance(layers, int):
        return {}
    per_layer = {
        name: list(value) for name in fields
        if name not in INDEX_LIST_FIELDS and isinstance(value := _get(default, name), (list, tuple)) and len(value) == layers
    }
    index_lists = {name: set(value) for name in INDEX_LIST_FIELDS if name in fields and isinstance(value := _get(default, name), (list, tuple))}
    # Per-layer sizes (e.g. an intermediate size per layer) take their tiny value; the other lists are kinds.
    sizes = {name for name in per_layer if name in TINY}
    seen, keep = set(), []
    for layer in range(layers):
        kinds = {(name, repr(values[layer])) for name, values in per_layer.items() if name not in sizes}
        kinds |= {(name, layer in indices) for name, indices in index_lists.items()}
        if kinds - seen:
            keep.append(layer)
            seen |= kinds
    keep += [layer for layer in range(layers) if layer not in keep][: max(0, 2 - len(keep))]
    keep.sort()
    pattern = {_layer_count_field(type(default)): len(keep)}
    pattern.update({name: [TINY[name] if name in sizes else values[i] for i in keep] for name, values in per_layer.items()})
    pattern.update({name: [new for new, old in enumerate(keep) if old in indices] for name, indices in index_lists.items()})
    return pattern


def _layer_count_field(config_class) -> str:
    """The field that holds the number of layers (``num_hidden_layers`` may be an alias, or absent)."""
    fields = _fields(config_class)
    alias = getattr(config_class, "attribute_map", {}).get("num_hidden_layers")
    candidates = ("num_hidden_layers", alias, "num_layers", "n_layer", "n_layers")
    return next((name for name in candidates if name in fields), "num_hidden_layers")


def _check_layer_kinds(model_type, default, config):
    for name in LAYER_KIND_ATTRIBUTES:
        full, tiny = _get(default, name), _get(config, name)
        if isinstance(full, (list, tuple)) and not set(map(repr, full)) <= set(map(repr, tiny or ())):
            raise AssertionError(f"{model_type}: the tiny config's {name} {tiny} lost kinds of {sorted(set(full))}")


def build(arch: Architecture, seed: int):
    """A tiny ``arch`` model with random weights from ``seed``: float32, eval mode."""
    config = tiny_config(arch)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in arch.model_class(config).parameters())
    if parameters > MAX_PARAMETERS:
        raise AssertionError(f"{arch.model_type}: the tiny config still has {parameters} parameters; shrink it in OVERRIDES")
    torch.manual_seed(seed)
    model = arch.model_class(config).eval()
    _check_causal(arch.model_type, model)
    return model


@torch.no_grad()
def perturbed_copy(model, seed: int, scale: float = DRAFT_NOISE):
    """A draft for ``model``: its weights plus Gaussian noise (``scale`` times each weight tensor's
    standard deviation, drawn from ``seed``), so that the two agree on some tokens and not others."""
    generator = torch.Generator().manual_seed(seed)
    draft = copy.deepcopy(model)
    for parameter in draft.parameters():
        if parameter.is_floating_point() and parameter.numel() > 1:
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(noise * parameter.std() * scale)
    return draft


@torch.no_grad()
def _check_causal(model_type, model):
    """Skip bidirectional encoders: their first position's logits change when a later token changes."""
    ids = torch.arange(FIRST_WORD, FIRST_WORD + 4)[None]
    changed = ids.clone()
    changed[0, -1] += 1
    if not torch.allclose(model(input_ids=ids).logits[0, 0], model(input_ids=changed).logits[0, 0], atol=1e-5):
        raise Skipped("not causal (a bidirectional encoder): its first position's logits depend on later tokens")
