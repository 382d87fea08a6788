"""Tokens per second of batched speculative sampling and SSS against HF assisted generation and plain
target sampling, on tiny Llamas trained here on one synthetic language.

    python bench/bench_speculative_sampling.py            # B in {1, 8, 32}
    python bench/bench_speculative_sampling.py --quick    # B = 8 only, fewer tokens

The language: each sequence draws one of ``TOPICS`` topics, shown as its first token; every next token
follows the topic's sparse bigram table. The target (hidden 256, 4 layers) and the draft (hidden 64,
2 layers) are trained briefly on the same sequences, so the draft agrees with the target only in
part, as a real draft does. SSS uses the draft as ``ref_draft`` and, as ``aligned_draft``, the draft
fine-tuned towards the tilt ``exp(REWARD / BETA)`` on every token ``v`` with ``v % 7 == 0``.
Trained weights are cached in the system temp directory.

Methods (``do_sample=True``, temperature 1, no EOS, ``max_new_tokens`` each):
- plain: ``target.generate`` on the whole batch;
- HF assisted: ``target.generate(assistant_model=draft)``, batch 1, looped over the prompts (HF
  refuses batch > 1);
- specalign SpS: ``custom_generate=SpeculativeSampling(draft, K)`` on the whole batch;
- specalign SSS: ``custom_generate=RewardShiftedSpeculativeSampling(aligned, draft, K)``.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specalign import RewardShiftedSpeculativeSampling, SpeculativeSampling

VOCAB = 1000
TOPICS = 2
SUCCESSORS = 4
SEQUENCE_LENGTH = 48
TARGET_SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)
DRAFT_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
REWARD, BETA = 1.0, 0.5
NUM_DRAFT_TOKENS = 4
PROMPT_LENGTH = 8
CACHE = Path(tempfile.gettempdir()) / "specalign_bench_speculative_sampling"


def synthetic_sequences(count, generator):
    """``[count, SEQUENCE_LENGTH]`` sequences: topic token, then a walk on the topic's bigram table."""
    table_generator = torch.Generator().manual_seed(0)
    successors = torch.randint(TOPICS, VOCAB, (TOPICS, VOCAB, SUCCESSORS), generator=table_generator)
    weights = 1.0 / torch.arange(1, SUCCESSORS + 1, dtype=torch.float)
    topics = torch.randint(0, TOPICS, (count,), generator=generator)
    tokens = [topics, torch.randint(TOPICS, VOCAB, (count,), generator=generator)]
    for _ in range(SEQUENCE_LENGTH - 2):
        choice = torch.multinomial(weights.expand(count, -1), 1, generator=generator).squeeze(1)
        tokens.append(successors[topics, tokens[-1], choice])
    return torch.stack(tokens, dim=1)


def new_llama(shape, seed):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, num_key_value_heads=shape["num_attention_heads"], bos_token_id=None,
                         eos_token_id=None, pad_token_id=0, max_position_embeddings=512, **shape)
    return LlamaForCausalLM(config)


def train(model, steps, loss_of_batch, generator, batch_size=32, lr=5e-3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = synthetic_sequences(batch_size, generator)
        loss = loss_of_batch(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def next_token_loss(model, batch):
    return model(input_ids=batch, labels=batch).loss


def tilted_distillation_loss(teacher):
    """KL from the teacher's distribution tilted by ``exp(REWARD / BETA)`` on the rewarded tokens."""
    tilt = torch.where(torch.arange(VOCAB) % 7 == 0, REWARD / BETA, 0.0)

    def loss(model, batch):
        with torch.no_grad():
            goal = (teacher(input_ids=batch).logits + tilt).log_softmax(-1)
        log_q = model(input_ids=batch).logits.log_softmax(-1)
        return torch.nn.functional.kl_div(log_q, goal, log_target=True, reduction="batchmean") / batch.shape[1]

    return loss


def trained_models():
    """(target, draft, aligned_draft), trained once and cached."""
    CACHE.mkdir(exist_ok=True)
    if not all((CACHE / name).exists() for name in ("target", "draft", "aligned_draft")):
        print(f"training the benchmark's tiny models once (about 3 minutes on one core), cached in {CACHE}", flush=True)
    models = {}
    for name, shape, seed, steps in (("target", TARGET_SHAPE, 0, 300), ("draft", DRAFT_SHAPE, 1, 1000)):
        path = CACHE / name
        if not path.exists():
            started = time.perf_counter()
            model = train(new_llama(shape, seed), steps, next_token_loss, torch.Generator().manual_seed(seed))
            model.save_pretrained(path)
            print(f"trained {name} in {time.perf_counter() - started:.0f} s")
        models[name] = LlamaForCausalLM.from_pretrained(path).eval()
    path = CACHE / "aligned_draft"
    if not path.exists():
        aligned = train(copy.deepcopy(models["draft"]), 100, tilted_distillation_loss(models["draft"]),
                        torch.Generator().manual_seed(2), lr=1e-3)
        aligned.save_pretrained(path)
    models["aligned_draft"] = LlamaForCausalLM.from_pretrained(path).eval()
    return models["target"], models["draft"], models["aligned_draft"]


def timed(run):
    started = time.perf_counter()
    out = run()
    return out, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 8 and 32 new tokens only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch_sizes, new_tokens = ([8], 32) if args.quick else ([1, 8, 32], 64)

    target, draft, aligned = trained_models()
    prompts = synthetic_sequences(max(batch_sizes), torch.Generator().manual_seed(123))[:, :PROMPT_LENGTH]
    common = dict(do_sample=True, temperature=1.0, top_k=0, max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    rows = []
    for batch in batch_sizes:
        ids = prompts[:batch]
        methods = {
            "plain target sampling": lambda: target.generate(input_ids=ids, **common),
            "HF assisted (B=1 loop)": lambda: [target.generate(input_ids=ids[i:i + 1], assistant_model=draft, **common)
                                               for i in range(batch)],
            "specalign SpS": lambda: target.generate(
                input_ids=ids, return_dict_in_generate=True, **common,
                custom_generate=SpeculativeSampling(draft, NUM_DRAFT_TOKENS, seed=0)),
            "specalign SSS": lambda: target.generate(
                input_ids=ids, return_dict_in_generate=True, **common,
                custom_generate=RewardShiftedSpeculativeSampling(aligned, draft, NUM_DRAFT_TOKENS, seed=0)),
        }
        for name, run in methods.items():
            run()  # warm-up
            out, seconds = min((timed(run) for _ in range(2)), key=lambda result: result[1])
            acceptance = tokens_per_call = "-"
            if hasattr(out, "acceptance_rate"):
                acceptance, tokens_per_call = f"{out.acceptance_rate:.2f}", f"{out.tokens_per_target_call:.2f}"
            rows.append((batch, name, batch * new_tokens / seconds, acceptance, tokens_per_call))
            print(f"B={batch:<3} {name:<24} {rows[-1][2]:8.0f} tok/s  acceptance {acceptance:>4}  tokens/target call {tokens_per_call:>4}",
                  flush=True)

    print(f"\n{torch.get_num_threads()} thread(s), K={NUM_DRAFT_TOKENS}, {new_tokens} new tokens, prompt {PROMPT_LENGTH}")
    print("| B | method | tokens/s | acceptance | tokens/target call |")
    print("|---|---|---|---|---|")
    for batch, name, rate, acceptance, tokens_per_call in rows:
        print(f"| {batch} | {name} | {rate:.0f} | {acceptance} | {tokens_per_call} |")


if __name__ == "__main__":
    main()
