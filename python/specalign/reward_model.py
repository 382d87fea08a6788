"""Reward models for Best-of-N and Speculative Rejection: score (prompt, partial answer) pairs.

The engines call ``reward_model(prompts, answers)`` with two lists of 1-D token-id tensors in the
generator's vocabulary, unpadded, and expect float32 scores ``[n]``. :class:`RewardModel` adapts a
Hugging Face sequence-classification model (or a plain callable) to that call.
"""
from __future__ import annotations

import copy

from typing import Callable, Sequence

import torch

from specalign import _hf

INPUT_TYPES = ("ids", "text")


class RewardModel:
    """Scores partial answers with a Hugging Face reward model or a callable.

    Hugging Face model (``model`` is a ``*ForSequenceClassification`` with one label):

    - same tokenizer as the generator (``generator_tokenizer=None``, or one with the same vocabulary):
      the prompt and answer ids are scored directly, with no decoding and no chat template (the
      generator's prompt is expected to be formatted already);
    - a different tokenizer: give both, ``RewardModel(rm, rm_tokenizer, generator_tokenizer=tok)``.
      Prompt and answer are decoded with the generator's tokenizer (special tokens skipped) and
      re-encoded with ``tokenizer``, through its chat template (user prompt, assistant answer) when
      it has one.

    Sequences are batched by ``max_batch_tokens`` (rows times the longest row), padded on the right
    with an attention mask, so every real token sits at the position it has when scored alone and no
    pad token is attended to. The model pools its score at the last non-pad token, which needs
    ``config.pad_token_id``.

    Callable (``model`` is not a module): ``input_type="ids"`` calls ``model(prompt_ids, answer_ids)``
    with the lists of 1-D id tensors; ``input_type="text"`` calls ``model(prompt_texts, answer_texts)``
    with strings decoded by ``generator_tokenizer``. Either returns ``n`` scores.

    Calls return float32 scores ``[n]`` on the CPU.

    Example::

        >>> rm = RewardModel(lambda prompts, answers: torch.tensor([-float(len(a)) for a in answers]))
        >>> rm([torch.tensor([1, 2])], [torch.tensor([3, 4, 5])])
        tensor([-3.])
    """

    def __init__(
        self,
        model: torch.nn.Module | Callable,
        tokenizer=None,
        *,
        generator_tokenizer=None,
        input_type: str = "ids",
        max_batch_tokens: int = 16384,
    ):
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.model = model
        self.tokenizer = tokenizer
        self.generator_tokenizer = generator_tokenizer
        self.max_batch_tokens = max_batch_tokens
        if isinstance(model, torch.nn.Module):
            config = model.config.get_text_config()
            if getattr(model.config, "num_labels", 1) != 1:
                raise ValueError(f"model must give one score per sequence (num_labels=1), got num_labels={model.config.num_labels}")
            if config.pad_token_id is None:
                raise ValueError(
                    "model.config.pad_token_id is None: the reward model cannot find the last token of a padded "
                    "batch; set it (e.g. to the tokenizer's pad or eos token id)"
                )
            self.pad_token_id = config.pad_token_id
            self.rescore_text = generator_tokenizer is not None and (
                tokenizer is None or tokenizer.get_vocab() != generator_tokenizer.get_vocab()
            )
            if self.rescore_text and tokenizer is None:
                raise ValueError("tokenizer (the reward model's) is needed to re-encode text from generator_tokenizer")
        elif callable(model):
            if input_type not in INPUT_TYPES:
                raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}")
            if input_type == "text" and generator_tokenizer is None:
                raise ValueError("input_type='text' needs generator_tokenizer to decode the generator's ids")
            self.rescore_text = input_type == "text"
        else:
            raise ValueError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")

    @property
    def device(self) -> torch.device | None:
        """The device of the wrapped model, ``None`` for a callable."""
        return self.model.device if isinstance(self.model, torch.nn.Module) else None

    def working_bytes(self, width: int) -> int:
        """An upper estimate of the memory one scoring call takes beyond the weights, for prompts
        with answers of up to ``width`` tokens: ``max_batch_tokens`` times :meth:`bytes_per_token`."""
        return self.max_batch_tokens * self.bytes_per_token(width)

    def bytes_per_token(self, width: int) -> int:
        """Working memory per token of a scoring batch of rows up to ``width`` tokens long
        (:func:`specalign._hf.activation_bytes`); 0 for a callable, whose memory is its own business."""
        if not isinstance(self.model, torch.nn.Module):
            return 0
        return _hf.activation_bytes(self.model, width)

    def with_max_batch_tokens(self, max_batch_tokens: int) -> RewardModel:
        """The same reward model scoring in batches of at most ``max_batch_tokens`` tokens."""
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
        limited = copy.copy(self)
        limited.max_batch_tokens = max_batch_tokens
        return limited

    @property
    def vocab_size(self) -> int | None:
        """How many generator token ids the reward model can read directly (``None``: any)."""
        if isinstance(self.model, torch.nn.Module) and not self.rescore_text:
            return self.model.get_input_embeddings().num_embeddings
        return None

    @torch.no_grad()
    def __call__(self, prompts: Sequence[torch.Tensor], answers: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scores of ``prompts[i] + answers[i]`` (generator token ids, 1-D, unpadded): float32 ``[n]``."""
        if len(prompts) != len(answers):
            raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
        if self.rescore_text:
            prompts, answers = self._decode(prompts, answers)
        if not isinstance(self.model, torch.nn.Module):
            return as_rewards(self.model(prompts, answers), len(answers), "reward_model")
        if not self.rescore_text:
            return self._score_ids([torch.cat([p, a]) for p, a in zip(prompts, answers)])
        if self.tokenizer.chat_template:
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": a}], tokenize=False
                )
                for p, a in zip(prompts, answers)
            ]
            return self._score_texts(texts, add_special_tokens=False)
        return self._score_texts([p + a for p, a in zip(prompts, answers)], add_special_tokens=True)

    def _decode(self, prompts, answers) -> tuple[list[str], list[str]]:
        """Prompt and answer texts; the answer is cut from the decoded whole, so spacing at the seam is kept."""
        decode = self.generator_tokenizer.batch_decode
        prompt_texts = decode(prompts, skip_special_tokens=True)
        whole_texts = decode([torch.cat([p, a]) for p, a in zip(prompts, answers)], skip_special_tokens=True)
        answer_texts = [
            whole[len(prompt):] if whole.startswith(prompt) else decode([answer], skip_special_tokens=True)[0]
            for prompt, whole, answer in zip(prompt_texts, whole_texts, answers)
        ]
        return prompt_texts, answer_texts

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Scores of whole texts, encoded with the reward model's tokenizer: float32 ``[n]``."""
        if not isinstance(self.model, torch.nn.Module) or self.tokenizer is None:
            raise ValueError("score_texts needs a Hugging Face reward model and its tokenizer")
        return self._score_texts(list(texts), add_special_tokens=True)

    def _score_texts(self, texts, add_special_tokens):
        encoded = self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        return self._score_ids([torch.tensor(ids, dtype=torch.long) for ids in encoded])

    def _score_ids(self, sequences: list[torch.Tensor]) -> torch.Tensor:
        scores = torch.empty(len(sequences), dtype=torch.float32)
        lengths = [len(s) for s in sequences]
        if min(lengths, default=1) < 1:
            raise ValueError("cannot score an empty sequence")
        order = sorted(range(len(sequences)), key=lambda i: -lengths[i])
        start = 0
        while start < len(order):
            # Longest first: the first row of a chunk sets its width.
            rows = max(1, self.max_batch_tokens // lengths[order[start]])
            chunk = order[start : start + rows]
            start += len(chunk)
            ids = torch.nn.utils.rnn.pad_sequence(
                [sequences[i] for i in chunk], batch_first=True, padding_value=self.pad_token_id
            ).to(self.model.device)
            columns = torch.arange(ids.shape[1], device=ids.device)
            chunk_lengths = torch.tensor([lengths[i] for i in chunk], device=ids.device)
            attention_mask = (columns < chunk_lengths[:, None]).long()
            logits = self.model(input_ids=ids, attention_mask=attention_mask).logits
            scores[chunk] = logits[:, 0].float().cpu()
        return scores


def as_rewards(values, count: int, name: str) -> torch.Tensor:
    """``values`` as float32 ``[count]`` on the CPU, or a ValueError naming ``name``."""
    try:
        rewards = torch.as_tensor(values).detach()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must return {count} real scores (a tensor or a list of numbers), "
                        f"got {type(values).__name__}") from error
    if rewards.dtype == torch.bool or rewards.is_complex():
        raise TypeError(f"{name} must return real scores, got {rewards.dtype}")
    if rewards.shape != (count,):
        raise ValueError(f"{name} returned scores of shape {tuple(rewards.shape)} for {count} answers; expected [{count}]")
    rewards = rewards.to(device="cpu", dtype=torch.float32)
    if bool(torch.isnan(rewards).any()):
        raise ValueError(f"{name} returned NaN scores")
    return rewards
