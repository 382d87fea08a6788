"""The gold reward of the reference world: a fixed, hand-written score of a text.

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
"""

import re

import torch

from specalign.world.grammar import NEGATIVE_WORDS, POSITIVE_WORDS

TOPIC_BONUS = 1.0
FREE_LENGTH = 20
LENGTH_PENALTY = 0.2
REPEAT_PENALTY = 0.5
FUNCTION_WORDS = frozenset(
    "a an the and but or with it was is i to of this that so very really "
    "quite pretty just rather truly would will not".split()
)

_POSITIVE = frozenset(POSITIVE_WORDS)
_NEGATIVE = frozenset(NEGATIVE_WORDS)
_WORD = re.compile(r"[a-z']+")


def split_prompt(text: str) -> tuple[str, str]:
    prompt, colon, reply = text.partition(":")
    return (prompt + colon, reply) if colon else ("", text)


def score_text(text: str) -> float:
    prompt, reply = split_prompt(text)
    prompt_words = _WORD.findall(prompt.lower())
    words = _WORD.findall(reply.lower())
    distinct = set(words)
    positives = len(distinct & _POSITIVE)
    negatives = len(distinct & _NEGATIVE)
    mentions_topic = bool(prompt_words) and prompt_words[-1] in distinct
    seen, repeats = set(), 0
    for word in words:
        if word in seen and word not in FUNCTION_WORDS:
            repeats += 1
        seen.add(word)
    return (
        positives
        - negatives
        + TOPIC_BONUS * mentions_topic
        - LENGTH_PENALTY * max(0, len(words) - FREE_LENGTH)
        - REPEAT_PENALTY * repeats
    )


def gold_reward(texts: list[str]) -> torch.Tensor:
    """Gold reward of each "<prompt> <reply>" text, as a float32 tensor."""
    return torch.tensor([score_text(text) for text in texts], dtype=torch.float32)
