"""Build the reference world from a seed, on CPU.

    python -m specalign.world.train [--setting short|long] [--out out/world or out/world_long] [--seed 0] [--threads 2]

Steps: a grammar corpus; a byte-level BPE tokenizer trained on it; a target and
a smaller draft Llama trained on it; an aligned draft (the draft tuned with DPO
on its own samples ranked by the gold reward); and a proxy reward model that
regresses the gold reward. Everything is saved with save_pretrained under DIR, the
tokenizer in each model's folder too. A line is printed at least every PROGRESS_SECONDS.
The long setting (replies of 10-20 sentences) starts from the short world: see train_long.py.
"""

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from specalign.world import WORLD_DIR
from specalign.world.gold_reward import gold_reward
from specalign.world.grammar import EVAL_PROMPTS, all_prompts, sample_corpus

CORPUS_SIZE = 60_000
HELDOUT_SIZE = 2_000
VOCAB_LIMIT = 1024
MAX_NEW_TOKENS = 48
BATCH_SIZE = 64

TARGET_SHAPE = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2)
DRAFT_SHAPE = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)
REWARD_SHAPE = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2)

TARGET_STEPS, TARGET_LR = 800, 2e-3
# The grammar is simple enough that a fully trained draft matches the target;
# a shorter run keeps it the weaker language model, as a draft should be.
DRAFT_STEPS, DRAFT_LR = 400, 2e-3
DPO_SAMPLES_PER_PROMPT, DPO_PAIRS_PER_PROMPT = 64, 16
DPO_EPOCHS, DPO_LR, DPO_BETA, DPO_BATCH_PAIRS = 3, 1e-4, 0.1, 32
REWARD_CORPUS_TEXTS, REWARD_STEPS, REWARD_LR = 20_000, 1200, 1e-3
# Within a phase, a progress line at least this often (a step or a batch takes a few seconds at most).
PROGRESS_SECONDS = 30
_last_progress = time.monotonic()


def progress(message: str, force: bool = False) -> None:
    """Print ``message`` when ``force`` is set or nothing was printed for ``PROGRESS_SECONDS``."""
    global _last_progress
    if force or time.monotonic() - _last_progress >= PROGRESS_SECONDS:
        print(message, flush=True)
        _last_progress = time.monotonic()


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_LIMIT,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    # Only bos is added: prompts must not end in eos, and eos is appended by hand for training.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        padding_side="left",
    )


def special_ids(tokenizer) -> dict:
    return dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


def new_causal_lm(tokenizer, shape: dict) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=128,
                         **shape, **special_ids(tokenizer))
    model = LlamaForCausalLM(config)
    # Pure ancestral sampling by default: no top-k, so samples follow the model's distribution.
    model.generation_config = GenerationConfig(do_sample=True, top_k=0, **special_ids(tokenizer))
    return model


def new_reward_model(tokenizer) -> LlamaForSequenceClassification:
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=128, num_labels=1,
                         **REWARD_SHAPE, **special_ids(tokenizer))
    return LlamaForSequenceClassification(config)


def encode_for_lm(tokenizer, texts: list[str]) -> list[list[int]]:
    return [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def token_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1, shape (batch, length - 1)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def warmup_cosine(optimizer, steps: int, warmup: int = 50):
    def scale(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, scale)


def train_language_model(model, sequences, steps, lr, pad_id, seed, batch_size=BATCH_SIZE):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = warmup_cosine(optimizer, steps)
    model.train()
    for step in range(steps):
        picks = torch.randint(len(sequences), (batch_size,), generator=generator)
        ids, mask = pad_right([sequences[i] for i in picks], pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        progress(f"  step {step:5d}/{steps}  loss {loss.item():.3f}", force=step % 250 == 0 or step == steps - 1)
    model.eval()


@torch.no_grad()
def heldout_loss(model, sequences, pad_id) -> float:
    total, count = 0.0, 0
    for start in range(0, len(sequences), 256):
        ids, mask = pad_right(sequences[start : start + 256], pad_id)
        logprobs = token_logprobs(model, ids, mask)
        total -= (logprobs * mask[:, 1:]).sum().item()
        count += mask[:, 1:].sum().item()
    return total / count


@torch.no_grad()
def sample_replies(model, tokenizer, prompts, per_prompt, batch_size=512, max_new_tokens=MAX_NEW_TOKENS):
    """Samples as (prompt_ids, reply_ids, text); reply_ids end at the first eos, if any."""
    requests = [prompt for prompt in prompts for _ in range(per_prompt)]
    samples = []
    for start in range(0, len(requests), batch_size):
        encoded = tokenizer(requests[start : start + batch_size], padding=True, return_tensors="pt")
        output = model.generate(**encoded, max_new_tokens=max_new_tokens)
        prompt_width = encoded["input_ids"].shape[1]
        for row in range(len(output)):
            prompt_ids = encoded["input_ids"][row][encoded["attention_mask"][row] == 1].tolist()
            reply_ids = output[row, prompt_width:].tolist()
            if tokenizer.eos_token_id in reply_ids:
                reply_ids = reply_ids[: reply_ids.index(tokenizer.eos_token_id) + 1]
            text = tokenizer.decode(prompt_ids + reply_ids, skip_special_tokens=True)
            samples.append((prompt_ids, reply_ids, text))
        progress(f"  sampled {len(samples)}/{len(requests)} replies")
    return samples


def preference_pairs(samples, per_prompt, pairs_per_prompt, reward=gold_reward):
    """Within each prompt's group, pair the i-th best reply with the i-th worst."""
    rewards = reward([text for _, _, text in samples])
    pairs = []
    for start in range(0, len(samples), per_prompt):
        order = rewards[start : start + per_prompt].argsort(descending=True).tolist()
        for best, worst in zip(order[:pairs_per_prompt], reversed(order[-pairs_per_prompt:])):
            if rewards[start + best] > rewards[start + worst]:
                pairs.append((samples[start + best], samples[start + worst]))
    return pairs


def reply_logprob(model, batch, pad_id) -> torch.Tensor:
    """Summed log-probability of each sample's reply tokens given its prompt."""
    ids, mask = pad_right([prompt + reply for prompt, reply, _ in batch], pad_id)
    reply_mask = torch.zeros_like(mask)
    for row, (prompt, reply, _) in enumerate(batch):
        reply_mask[row, len(prompt) : len(prompt) + len(reply)] = 1
    return (token_logprobs(model, ids, mask) * reply_mask[:, 1:]).sum(-1)


def train_dpo(policy, reference, pairs, pad_id, seed):
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=DPO_LR, weight_decay=0.0)
    policy.train()
    for epoch in range(DPO_EPOCHS):
        rng.shuffle(pairs)
        for start in range(0, len(pairs), DPO_BATCH_PAIRS):
            chunk = pairs[start : start + DPO_BATCH_PAIRS]
            batch = [chosen for chosen, _ in chunk] + [rejected for _, rejected in chunk]
            with torch.no_grad():
                reference_logp = reply_logprob(reference, batch, pad_id)
            policy_logp = reply_logprob(policy, batch, pad_id)
            log_ratio = policy_logp - reference_logp
            margin = log_ratio[: len(chunk)] - log_ratio[len(chunk) :]
            loss = -F.logsigmoid(DPO_BETA * margin).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            progress(f"  epoch {epoch}  pairs {start + len(chunk)}/{len(pairs)}  loss {loss.item():.3f}")
        progress(f"  epoch {epoch}  loss {loss.item():.3f}  margin {margin.mean().item():.2f}", force=True)
    policy.eval()


def train_reward_model(model, tokenizer, texts, rewards, seed, steps=REWARD_STEPS, lr=REWARD_LR,
                       batch_size=BATCH_SIZE):
    """Regress ``rewards`` of ``texts``: strings, or token-id lists used as they are."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = warmup_cosine(optimizer, steps)
    model.train()
    for step in range(steps):
        picks = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = [texts[i] for i in picks]
        if isinstance(batch[0], str):
            encoded = tokenizer(batch, padding=True, return_tensors="pt")
        else:
            ids, mask = pad_right(batch, tokenizer.pad_token_id)
            encoded = dict(input_ids=ids, attention_mask=mask)
        loss = F.mse_loss(model(**encoded).logits[:, 0], rewards[picks])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        progress(f"  step {step:5d}/{steps}  mse {loss.item():.3f}", force=step % 250 == 0 or step == steps - 1)
    model.eval()


@torch.no_grad()
def proxy_reward(model, tokenizer, texts) -> torch.Tensor:
    scores = []
    for start in range(0, len(texts), 512):
        encoded = tokenizer(texts[start : start + 512], padding=True, return_tensors="pt")
        scores.append(model(**encoded).logits[:, 0])
    return torch.cat(scores)


def mean_gold(samples) -> float:
    return gold_reward([text for _, _, text in samples]).mean().item()


def report_quality(tokenizer, target, draft, aligned_draft, reward_model, seed):
    torch.manual_seed(seed)
    draft_reward = mean_gold(sample_replies(draft, tokenizer, EVAL_PROMPTS, 64))
    aligned_reward = mean_gold(sample_replies(aligned_draft, tokenizer, EVAL_PROMPTS, 64))
    n = 16
    target_samples = sample_replies(target, tokenizer, EVAL_PROMPTS, 64)
    texts = [text for _, _, text in target_samples]
    gold = gold_reward(texts)
    proxy = proxy_reward(reward_model, tokenizer, texts)
    correlation = torch.corrcoef(torch.stack([gold, proxy]))[0, 1].item()
    best_of_n = proxy.view(-1, n).argmax(-1)
    bon_gold = gold.view(-1, n).gather(1, best_of_n[:, None]).mean().item()
    eos_rate = sum(tokenizer.eos_token_id in reply for _, reply, _ in target_samples) / len(target_samples)
    print(f"mean gold reward: draft {draft_reward:.2f}, aligned draft {aligned_reward:.2f}")
    print(f"target samples: gold mean {gold.mean():.2f} std {gold.std():.2f}, eos rate {eos_rate:.2f}")
    print(f"proxy vs gold Pearson r: {correlation:.3f}")
    print(f"best-of-{n} with proxy: gold {bon_gold:.2f} vs plain {gold.mean():.2f} (+{bon_gold - gold.mean():.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the world (default: out/world, or out/world_long for --setting long; the bundled "
                             "ones are specalign/world/assets and assets_long)")
    parser.add_argument("--seed", type=int, default=0)
    # On a machine shared with other jobs, 1 thread wastes far less time spin-waiting than 2.
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setting", choices=("short", "long"), default="short",
                        help="short replies, or long ones built from the short world (train_long.py)")
    parser.add_argument("--short-world", type=Path, default=WORLD_DIR, help="the short world a long one starts from")
    args = parser.parse_args()
    args.out = args.out or Path("out/world_long" if args.setting == "long" else "out/world")
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    if args.setting == "long":
        from specalign.world.train_long import build_long_world

        return build_long_world(args)
    started = time.time()

    def phase(name):
        progress(f"[{time.time() - started:6.1f}s wall, {time.process_time():6.1f}s cpu] {name}", force=True)

    phase("corpus and tokenizer")
    corpus = [f"{prompt} {reply}" for prompt, reply in sample_corpus(CORPUS_SIZE + HELDOUT_SIZE, args.seed)]
    train_texts, heldout_texts = corpus[:CORPUS_SIZE], corpus[CORPUS_SIZE:]
    tokenizer = build_tokenizer(train_texts)
    pad_id = tokenizer.pad_token_id
    train_sequences = encode_for_lm(tokenizer, train_texts)
    heldout_sequences = encode_for_lm(tokenizer, heldout_texts)
    print(f"  vocab {len(tokenizer)}, {len(train_sequences)} training texts")

    phase("target LM")
    torch.manual_seed(args.seed + 1)
    target = new_causal_lm(tokenizer, TARGET_SHAPE)
    train_language_model(target, train_sequences, TARGET_STEPS, TARGET_LR, pad_id, args.seed + 1)

    phase("draft LM")
    torch.manual_seed(args.seed + 2)
    draft = new_causal_lm(tokenizer, DRAFT_SHAPE)
    train_language_model(draft, train_sequences, DRAFT_STEPS, DRAFT_LR, pad_id, args.seed + 2)

    phase("aligned draft (DPO)")
    torch.manual_seed(args.seed + 3)
    draft_samples = sample_replies(draft, tokenizer, all_prompts(), DPO_SAMPLES_PER_PROMPT)
    pairs = preference_pairs(draft_samples, DPO_SAMPLES_PER_PROMPT, DPO_PAIRS_PER_PROMPT)
    print(f"  {len(pairs)} preference pairs from {len(draft_samples)} draft samples")
    aligned_draft = copy.deepcopy(draft)
    for parameter in draft.parameters():
        parameter.requires_grad_(False)
    train_dpo(aligned_draft, draft, pairs, pad_id, args.seed + 3)

    phase("reward model")
    torch.manual_seed(args.seed + 4)
    aligned_samples = sample_replies(aligned_draft, tokenizer, all_prompts(), 16)
    reward_texts = train_texts[:REWARD_CORPUS_TEXTS] + [text for _, _, text in draft_samples + aligned_samples]
    reward_model = new_reward_model(tokenizer)
    train_reward_model(reward_model, tokenizer, reward_texts, gold_reward(reward_texts), args.seed + 4)

    phase("saving")
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out / "tokenizer")
    for name, model in [("target", target), ("draft", draft), ("aligned_draft", aligned_draft),
                        ("reward_model", reward_model)]:
        model.save_pretrained(args.out / name)
        tokenizer.save_pretrained(args.out / name)  # each folder loads on its own (specalign generate --model)
        print(f"  {name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    (args.out / "prompts.json").write_text(json.dumps(list(EVAL_PROMPTS), indent=1) + "\n")

    phase("evaluation")
    print(f"held-out loss: target {heldout_loss(target, heldout_sequences, pad_id):.4f}, "
          f"draft {heldout_loss(draft, heldout_sequences, pad_id):.4f}")
    report_quality(tokenizer, target, draft, aligned_draft, reward_model, args.seed + 5)
    phase(f"done: specalign demo --world {args.out}, or specalign generate --world {args.out} ...")


if __name__ == "__main__":
    main()
