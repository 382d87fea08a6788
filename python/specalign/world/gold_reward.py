"""The gold rewards of the reference world: fixed, hand-written scores of a text.

A text is "<prompt> <reply>"; the prompt is everything up to and including the
first ":", and its topic is the prompt's last word. Words are the runs of
letters and apostrophes in the lowercased reply. With

    P = number of distinct positive sentiment words in the reply
    N = number of distinct negative sentiment words in the reply
    T = 1 if the prompt's topic word appears in the reply, else 0
    L = number of words in the reply
    R = number of reply words that repeat an earlier reply word,
        not counting FUNCTION_WORDS

the reward is

    P - N + T - 0.2 * max(0, L - 20) - 0.5 * R

Counting sentiment words once and charging for repeats makes "great great
great" worse than "great", so the reward cannot be gamed by repetition.

The long setting's reward accumulates over the answer, sentence by sentence, so
a prefix of an answer already earns part of it. Sentences end at ".", "!" or
"?" (an unfinished last sentence counts as one). With P_s, N_s and R_s the
counts above taken within sentence s, and T and L as above,

    sum over sentences s of (P_s - N_s - 0.5 * R_s) + T - 0.2 * max(0, L - 150)

A sentiment word earns again in a later sentence; repeating it within one
sentence does not pay.
"""

import re

import torch

from specalign.world.grammar import NEGATIVE_WORDS, POSITIVE_WORDS

TOPIC_BONUS = 1.0
FREE_LENGTH = 20
LONG_FREE_LENGTH = 150
LENGTH_PENALTY = 0.2
REPEAT_PENALTY = 0.5
FUNCTION_WORDS = frozenset(
    "a an the and but or with it was is i to of this that so very really "
    "quite pretty just rather truly would will not".split()
)

_POSITIVE = frozenset(POSITIVE_WORDS)
_NEGATIVE = frozenset(NEGATIVE_WORDS)
_WORD = re.compile(r"[a-z']+")
_SENTENCE_END = re.compile(r"[.!?]")


def split_prompt(text: str) -> tuple[str, str]:
    prompt, colon, reply = text.partition(":")
    return (prompt + colon, reply) if colon else ("", text)


def _sentiment_and_repeats(words: list[str]) -> float:
    """P - N - 0.5 * R of a run of words."""
    distinct = set(words)
    seen, repeats = set(), 0
    for word in words:
        if word in seen and word not in FUNCTION_WORDS:
            repeats += 1
        seen.add(word)
    return len(distinct & _POSITIVE) - len(distinct & _NEGATIVE) - REPEAT_PENALTY * repeats


def _topic_and_length(prompt: str, words: list[str], free_length: int) -> float:
    """T - 0.2 * max(0, L - free_length)."""
    prompt_words = _WORD.findall(prompt.lower())
    mentions_topic = bool(prompt_words) and prompt_words[-1] in words
    return TOPIC_BONUS * mentions_topic - LENGTH_PENALTY * max(0, len(words) - free_length)


def score_text(text: str) -> float:
    prompt, reply = split_prompt(text)
    words = _WORD.findall(reply.lower())
    return _sentiment_and_repeats(words) + _topic_and_length(prompt, words, FREE_LENGTH)


def score_long_text(text: str) -> float:
    prompt, reply = split_prompt(text)
    sentences = [_WORD.findall(sentence) for sentence in _SENTENCE_END.split(reply.lower())]
    words = [word for sentence in sentences for word in sentence]
    return sum(map(_sentiment_and_repeats, sentences)) + _topic_and_length(prompt, words, LONG_FREE_LENGTH)


def gold_reward(texts: list[str]) -> torch.Tensor:
    """Gold reward of each "<prompt> <reply>" text, as a float32 tensor."""
    return torch.tensor([score_text(text) for text in texts], dtype=torch.float32)


def gold_reward_long(texts: list[str]) -> torch.Tensor:
    """The long setting's gold reward of each "<prompt> <reply>" text, as a float32 tensor."""
    return torch.tensor([score_long_text(text) for text in texts], dtype=torch.float32)
