"""Seeded generator of review-style chat replies, short or long.

A prompt names a topic ("review of the pizza:"); the reply is lowercase
sentences built from clause templates: one to four in the short setting, ten
to twenty in the long one. Each reply draws a hidden mood in [0, 1] that sets
how likely each sentiment slot is positive, so replies range from glowing to
scathing and a language model has a latent variable to infer; in a long reply
the first sentences already hint at the mood of the rest.
"""

import random
from dataclasses import dataclass

POSITIVE_WORDS = (
    "great", "excellent", "amazing", "lovely", "perfect", "fantastic",
    "wonderful", "superb", "solid", "pleasant", "impressive", "brilliant",
    "delightful", "nice", "awesome", "outstanding",
)
NEGATIVE_WORDS = (
    "bad", "awful", "terrible", "poor", "disappointing", "mediocre",
    "boring", "horrible", "dull", "weak", "annoying", "sloppy",
    "lousy", "dreadful", "useless", "unpleasant",
)
NEUTRAL_WORDS = ("simple", "typical", "different", "small", "big", "new", "usual", "busy")
INTENSIFIERS = ("really", "very", "quite", "pretty", "so", "just", "rather", "truly")
OPENERS = ("honestly,", "well,", "so,", "to be fair,", "i have to say,", "okay,")
GOOD_CLOSERS = ("would recommend.", "will come back.", "five stars.", "worth it.")
BAD_CLOSERS = ("would not recommend.", "never again.", "one star.", "not worth it.")


@dataclass(frozen=True)
class Category:
    topics: tuple[str, ...]
    generic_refs: tuple[str, ...]
    aspects: tuple[str, ...]


CATEGORIES = (
    Category(
        ("pizza", "burger", "pasta", "sushi", "coffee", "salad"),
        ("food", "place", "meal"),
        ("taste", "service", "portion", "price", "staff", "sauce"),
    ),
    Category(
        ("phone", "laptop", "camera", "headphones", "blender", "charger"),
        ("product", "device", "thing"),
        ("battery", "screen", "sound", "build", "price", "design"),
    ),
    Category(
        ("movie", "show", "album", "novel", "play", "podcast"),
        ("story", "film", "thing"),
        ("plot", "acting", "ending", "music", "pacing", "dialogue"),
    ),
    Category(
        ("hotel", "flight", "museum", "gym", "park", "concert"),
        ("trip", "place", "visit"),
        ("room", "staff", "location", "price", "view", "crowd"),
    ),
)
TOPICS = tuple(topic for category in CATEGORIES for topic in category.topics)
PROMPT_TEMPLATES = ("review of the {}:", "thoughts on the {}:", "how was the {}:")


@dataclass(frozen=True)
class ReplyShape:
    min_sentences: int
    max_sentences: int
    min_words: int
    max_words: int


SHAPES = {"short": ReplyShape(1, 4, 5, 30), "long": ReplyShape(10, 20, 80, 220)}

EVAL_PROMPTS = (
    "review of the pizza:", "thoughts on the coffee:", "how was the sushi:",
    "review of the burger:", "review of the phone:", "thoughts on the laptop:",
    "how was the camera:", "review of the headphones:", "review of the movie:",
    "thoughts on the album:", "how was the show:", "review of the novel:",
    "review of the hotel:", "thoughts on the flight:", "how was the museum:",
    "review of the concert:",
)


def all_prompts() -> list[str]:
    return [template.format(topic) for template in PROMPT_TEMPLATES for topic in TOPICS]


def _category_of(topic: str) -> Category:
    return next(category for category in CATEGORIES if topic in category.topics)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


class _ReplyWriter:
    """Writes one reply; its context rules (contrast after "but", aspects not
    repeated until all are used, a closer that agrees with the sentiment so far)
    give a larger model something to gain over a smaller one."""

    def __init__(self, rng: random.Random, topic: str):
        self.rng = rng
        self.topic = topic
        self.category = _category_of(topic)
        self.mood = rng.betavariate(0.8, 0.8)
        self.names_topic = rng.random() < 0.6
        self.unused_aspects = []
        self.balance = 0

    def sentiment(self, positive: bool | None = None) -> tuple[str, bool]:
        if positive is None:
            positive = self.rng.random() < self.mood
        self.balance += 1 if positive else -1
        adjective = self.rng.choice(POSITIVE_WORDS if positive else NEGATIVE_WORDS)
        if self.rng.random() < 0.35:
            adjective = f"{self.rng.choice(INTENSIFIERS)} {adjective}"
        return adjective, positive

    def adjective(self) -> str:
        return self.sentiment()[0]

    def reference(self) -> str:
        if self.names_topic and self.rng.random() < 0.7:
            return self.topic
        return self.rng.choice(self.category.generic_refs)

    def aspect(self) -> str:
        if not self.unused_aspects:
            self.unused_aspects = self.rng.sample(self.category.aspects, len(self.category.aspects))
        return self.unused_aspects.pop()

    def contrast(self) -> str:
        first, positive = self.sentiment()
        second, _ = self.sentiment(not positive)
        return f"the {self.aspect()} was {first} but the {self.aspect()} was {second}"

    def clause(self) -> str:
        neutral = self.rng.choice(NEUTRAL_WORDS)
        templates = (
            lambda: f"the {self.reference()} was {self.adjective()}",
            lambda: f"the {self.aspect()} was {self.adjective()}",
            lambda: f"{self.adjective()} {self.aspect()}",
            self.contrast,
            lambda: f"i found the {self.aspect()} {self.adjective()}",
            lambda: f"it was {neutral} and {self.adjective()}",
            lambda: _with_article(f"{self.adjective()} {self.reference()} with a {neutral} {self.aspect()}"),
        )
        return self.rng.choice(templates)()

    def sentence(self) -> str:
        clauses = [self.clause() for _ in range(self.rng.choice((1, 1, 2)))]
        text = " and ".join(clauses) + "."
        if self.rng.random() < 0.2:
            text = f"{self.rng.choice(OPENERS)} {text}"
        return text

    def closer(self) -> str:
        good = self.balance > 0 if self.balance else self.rng.random() < self.mood
        return self.rng.choice(GOOD_CLOSERS if good else BAD_CLOSERS)

    def reply(self, shape: ReplyShape) -> str:
        sentences = [self.sentence() for _ in range(self.rng.randint(shape.min_sentences, shape.max_sentences))]
        if self.rng.random() < 0.4:
            sentences.append(self.closer())
        return " ".join(sentences)


def sample_reply(rng: random.Random, topic: str, setting: str = "short") -> str:
    """One reply of the setting's shape (sentences, then words), drawn until its length fits."""
    shape = SHAPES[setting]
    while True:
        reply = _ReplyWriter(rng, topic).reply(shape)
        if shape.min_words <= len(reply.split()) <= shape.max_words:
            return reply


def sample_corpus(size: int, seed: int = 0, setting: str = "short") -> list[tuple[str, str]]:
    """`size` (prompt, reply) pairs; the text a model sees is f"{prompt} {reply}"."""
    if setting not in SHAPES:
        raise ValueError(f"setting must be one of {sorted(SHAPES)}, got {setting!r}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(size):
        topic = rng.choice(TOPICS)
        prompt = rng.choice(PROMPT_TEMPLATES).format(topic)
        pairs.append((prompt, sample_reply(rng, topic, setting)))
    return pairs
