"""The long setting of the reference world, built from the short one on CPU.

    python -m specalign.world.train --setting long --out DIR [--short-world DIR] [--seed 0] [--threads 2]

Replies run to 10-20 sentences (about 100-250 tokens) and the gold reward accumulates over them
(`gold_reward.score_long_text`), as in the papers' regime of long answers. The words are the short
setting's, so its tokenizer is reused, and every model starts from its short-setting counterpart,
which already knows the sentences: the target and the draft learn long replies, the draft is aligned
by DPO on its own long samples ranked by the long gold reward, and the proxy reward model learns the
long gold reward of whole answers (ending in eos where they ended) and of prefixes cut at random
token positions (no eos), because Speculative Rejection scores partial answers.
"""
from __future__ import annotations

import copy
import json
import random
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

from specalign.reward_model import RewardModel
from specalign.world.gold_reward import gold_reward_long
from specalign.world.grammar import EVAL_PROMPTS, all_prompts, sample_corpus
from specalign.world.prefix_correlation import format_prefix_correlations, prefix_correlations
from specalign.world.train import (
    DPO_PAIRS_PER_PROMPT,
    encode_for_lm,
    heldout_loss,
    preference_pairs,
    sample_replies,
    train_dpo,
    train_language_model,
    train_reward_model,
)

# Sized to finish in about half an hour on a shared 2-core machine: the models already know the
# sentences from the short world, so a short fine-tune teaches them the long replies' length and flow.
CORPUS_SIZE, HELDOUT_SIZE = 4_000, 200
MAX_NEW_TOKENS = 256
MAX_POSITIONS = 320
BATCH_SIZE = 16
TARGET_STEPS, TARGET_LR = 150, 1e-3
# As in the short setting, a shorter run keeps the draft the weaker language model.
DRAFT_STEPS, DRAFT_LR = 60, 1e-3
DPO_SAMPLES_PER_PROMPT = 16
REWARD_CORPUS_TEXTS, REWARD_STEPS, REWARD_LR, REWARD_BATCH_SIZE = 3_000, 500, 1e-3, 32
EVAL_SAMPLES_PER_PROMPT = 16
PREFIX_LENGTHS = (8, 16, 32, 64, 128, MAX_NEW_TOKENS)


def load_short_model(short_world: Path, name: str, model_class):
    model = model_class.from_pretrained(short_world / name, dtype=torch.float32)
    model.config.max_position_embeddings = MAX_POSITIONS
    return model


def corpus_samples(tokenizer, pairs) -> list[tuple[list[int], list[int], str]]:
    """Grammar replies in sample_replies' form: (prompt ids, reply ids ending in eos, text)."""
    samples = []
    for prompt, reply in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"]
        whole = encode_for_lm(tokenizer, [f"{prompt} {reply}"])[0]
        samples.append((prompt_ids, whole[len(prompt_ids):], f"{prompt} {reply}"))
    return samples


def reward_examples(tokenizer, samples, seed) -> tuple[list[list[int]], torch.Tensor]:
    """Each whole answer and one prefix of it, cut at a random token (no eos), with their long gold reward."""
    rng = random.Random(seed)
    sequences = []
    for prompt_ids, reply_ids, _ in samples:
        sequences.append(prompt_ids + reply_ids)
        text_tokens = len(reply_ids) - (reply_ids[-1] == tokenizer.eos_token_id)
        if text_tokens > 1:
            sequences.append(prompt_ids + reply_ids[: rng.randint(1, text_tokens - 1)])
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True)
    return sequences, gold_reward_long(texts)


def build_long_world(args) -> None:
    started = time.time()
    checkpoints = args.out / "checkpoints"

    def phase(name):
        print(f"[{time.time() - started:6.1f}s wall, {time.process_time():6.1f}s cpu] {name}", flush=True)

    def trained(name, model_class, train):
        """The phase's model: from an interrupted run's checkpoint if there is one, else train() and checkpoint it
        (the phases seed their own randomness, so a resumed build equals an uninterrupted one)."""
        if (checkpoints / name / "config.json").is_file():
            print(f"  resumed from {checkpoints / name} (delete it to retrain)", flush=True)
            return model_class.from_pretrained(checkpoints / name, dtype=torch.float32).eval()
        model = train()
        model.save_pretrained(checkpoints / name)
        return model

    def train_from_short(name, steps, lr, seed):
        model = load_short_model(args.short_world, name, LlamaForCausalLM)
        train_language_model(model, train_sequences, steps, lr, pad_id, seed, BATCH_SIZE)
        return model

    phase("corpus (the short world's tokenizer)")
    tokenizer = AutoTokenizer.from_pretrained(args.short_world / "tokenizer")
    pad_id = tokenizer.pad_token_id
    pairs = sample_corpus(CORPUS_SIZE + HELDOUT_SIZE, args.seed, setting="long")
    texts = [f"{prompt} {reply}" for prompt, reply in pairs]
    train_sequences = encode_for_lm(tokenizer, texts[:CORPUS_SIZE])
    heldout_sequences = encode_for_lm(tokenizer, texts[CORPUS_SIZE:])
    print(f"  {len(train_sequences)} training texts, {sum(map(len, train_sequences)) / CORPUS_SIZE:.0f} tokens each on average")

    phase("target LM (from the short target)")
    target = trained("target", LlamaForCausalLM, lambda: train_from_short("target", TARGET_STEPS, TARGET_LR, args.seed + 1))
    phase("draft LM (from the short draft)")
    draft = trained("draft", LlamaForCausalLM, lambda: train_from_short("draft", DRAFT_STEPS, DRAFT_LR, args.seed + 2))

    phase("aligned draft (DPO)")
    torch.manual_seed(args.seed + 3)
    draft_samples = sample_replies(draft, tokenizer, all_prompts(), DPO_SAMPLES_PER_PROMPT, max_new_tokens=MAX_NEW_TOKENS)
    aligned_draft = trained("aligned_draft", LlamaForCausalLM, lambda: align(draft, draft_samples, pad_id, args.seed + 3))

    phase("reward model (from the short one; whole answers and prefixes)")
    reward_model = trained("reward_model", LlamaForSequenceClassification,
                           lambda: train_proxy(args, tokenizer, pairs, draft_samples, aligned_draft))

    phase("saving")
    save(args.out, tokenizer, dict(target=target, draft=draft, aligned_draft=aligned_draft, reward_model=reward_model))
    shutil.rmtree(checkpoints)

    phase("evaluation")
    print(f"held-out loss: target {heldout_loss(target, heldout_sequences, pad_id):.4f}, "
          f"draft {heldout_loss(draft, heldout_sequences, pad_id):.4f}")
    report_quality(tokenizer, target, draft, aligned_draft, reward_model, args.seed + 5)
    phase("done")


def align(draft, draft_samples, pad_id, seed):
    """The draft tuned by DPO on pairs of its own samples ranked by the long gold reward."""
    preferences = preference_pairs(draft_samples, DPO_SAMPLES_PER_PROMPT, DPO_PAIRS_PER_PROMPT, reward=gold_reward_long)
    print(f"  {len(preferences)} preference pairs from {len(draft_samples)} draft samples")
    aligned_draft = copy.deepcopy(draft)
    for parameter in draft.parameters():
        parameter.requires_grad_(False)
    train_dpo(aligned_draft, draft, preferences, pad_id, seed)
    return aligned_draft


def train_proxy(args, tokenizer, pairs, draft_samples, aligned_draft):
    """The short world's reward model tuned on grammar, draft and aligned-draft answers, whole and cut."""
    torch.manual_seed(args.seed + 4)
    aligned_samples = sample_replies(aligned_draft, tokenizer, all_prompts(), 8, max_new_tokens=MAX_NEW_TOKENS)
    grammar_samples = corpus_samples(tokenizer, pairs[:REWARD_CORPUS_TEXTS])
    sequences, rewards = reward_examples(tokenizer, grammar_samples + draft_samples + aligned_samples, args.seed + 4)
    print(f"  {len(sequences)} scored sequences")
    reward_model = load_short_model(args.short_world, "reward_model", LlamaForSequenceClassification)
    train_reward_model(reward_model, tokenizer, sequences, rewards, args.seed + 4, REWARD_STEPS, REWARD_LR, REWARD_BATCH_SIZE)
    return reward_model


def save(out: Path, tokenizer, models: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out / "tokenizer")
    for name, model in models.items():
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)  # each folder loads on its own (specalign generate --model)
        print(f"  {name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    (out / "prompts.json").write_text(json.dumps(list(EVAL_PROMPTS), indent=1) + "\n")


def report_quality(tokenizer, target, draft, aligned_draft, reward_model, seed):
    torch.manual_seed(seed)

    def sample(model):
        samples = sample_replies(model, tokenizer, EVAL_PROMPTS, EVAL_SAMPLES_PER_PROMPT, max_new_tokens=MAX_NEW_TOKENS)
        return samples, gold_reward_long([text for _, _, text in samples])

    _, draft_gold = sample(draft)
    _, aligned_gold = sample(aligned_draft)
    print(f"mean gold reward: draft {draft_gold.mean():.2f}, aligned draft {aligned_gold.mean():.2f}")
    samples, gold = sample(target)
    eos_rate = sum(tokenizer.eos_token_id in reply for _, reply, _ in samples) / len(samples)
    lengths = torch.tensor([len(reply) for _, reply, _ in samples], dtype=torch.float32)
    print(f"target samples: gold mean {gold.mean():.2f} std {gold.std():.2f}, eos rate {eos_rate:.2f}, "
          f"answer tokens {lengths.mean():.0f} (min {lengths.min():.0f}, max {lengths.max():.0f})")

    rm = RewardModel(reward_model, tokenizer)
    prompts = [torch.tensor(prompt) for prompt, _, _ in samples]
    answers = [torch.tensor(reply) for _, reply, _ in samples]
    proxy = rm(prompts, answers)
    n = 16
    best_of_n = gold.view(-1, n).gather(1, proxy.view(-1, n).argmax(-1, keepdim=True)).mean()
    print(f"best-of-{n} with proxy: gold {best_of_n:.2f} vs plain {gold.mean():.2f} (+{best_of_n - gold.mean():.2f})")
    print("proxy reward of a prefix against the final gold reward (target samples):")
    print(format_prefix_correlations(prefix_correlations(rm, prompts, answers, gold, PREFIX_LENGTHS)))
