"""Stages ``spr`` and ``sps`` of bench/gpu_run.py: the generate methods end to end on real shapes.

    python bench/gpu_end_to_end.py spr --results OUT/<device>.json [--dry-run] [--deadline EPOCH]
    python bench/gpu_end_to_end.py sps --results OUT/<device>.json [--dry-run] [--deadline EPOCH]

Random-weight Llamas built from configs straight on the device in bf16 (no hub, no download): a
Llama-3-8B-shaped generator / target (32 layers, hidden 4096, 32 heads / 8 KV heads of 128, MLP
14336, vocab 128256) and a Llama-3.2-1B-shaped draft and reward model (16 layers, hidden 2048, 32
heads / 8 KV heads, MLP 8192, tied embeddings). Every run samples (temperature 1, no top-k) with no
EOS, so every row runs to ``max_new_tokens``; each figure is one timed run after a short warm-up.

spr: Speculative Rejection, one 32-token prompt, N = 512, alpha = 0.5, ``max_new_tokens`` 128, the
   budget schedule in tokens (``max_batch_tokens`` = 512 rows x (32 + 32): decisions at 32 and 96
   new tokens), reward model on the GPU. Rows decoded per second against Best-of-N at the same N.
   Then, at each decision's shape (rows, kept, cached tokens), one ``ops.compact_rows`` of all 64
   cache tensors and the per-row state against re-prefilling the survivors into a fresh cache (what
   the reference implementation does every round). Last, the CUDA default budget (a share of the
   device's free memory, in bytes of working memory) with a ballast leaving 17 GB free: the
   schedule it gives 512 rows, rows per second, peak memory, and whether it completes.
sps: batched speculative sampling, K = 4, 32-token prompts, 64 new tokens, B in {1, 8, 32, 64}:
   tokens/s of plain ``generate``, specalign with the 1B draft and with draft = target (the
   acceptance bracket: random weights accept what they accept), HF assisted generation at B = 1
   (HF refuses B > 1), and SSS (a second random 1B draft as the aligned one); also the forward
   costs behind the figures.
"""
from __future__ import annotations

import sys
import time

import torch
from gpu_run import Results, out_of_time, stage_arguments
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from specalign import BestOfN, RewardModel, RewardShiftedSpeculativeSampling, SpeculativeRejection, SpeculativeSampling
from specalign import _compat, ops

PAD, BOS, EOS = 0, 1, 2
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False)
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True)
TINY_BIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=False)
TINY_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, vocab_size=512, tie_word_embeddings=True)
FULL = dict(big=LLAMA_8B, small=LLAMA_1B, prompt=32, n=512, spr_tokens=128, first_decision=32, free_bytes=17 << 30,
            batches=(1, 8, 32, 64), sps_tokens=64, num_draft=4)
DRY = dict(big=TINY_BIG, small=TINY_SMALL, prompt=8, n=16, spr_tokens=16, first_decision=4, free_bytes=0,
           batches=(1, 2), sps_tokens=8, num_draft=4)
SAMPLING = dict(do_sample=True, temperature=1.0, top_k=0, eos_token_id=None, pad_token_id=PAD)


def build(shape: dict, device: torch.device, seed: int, classifier: bool = False):
    """A random-weight Llama made directly on ``device`` in bf16 (no fp32 copy, no host round trip)."""
    torch.manual_seed(seed)
    config = LlamaConfig(**shape, max_position_embeddings=4096, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                         num_labels=1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = (LlamaForSequenceClassification if classifier else LlamaForCausalLM)(config)
    finally:
        torch.set_default_dtype(previous)
    if model.dtype != torch.bfloat16:
        raise RuntimeError(f"the model was built in {model.dtype}, not bfloat16")
    return model.eval()


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache per cached token of one row: keys and values of every layer."""
    config = model.config
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * model.dtype.itemsize


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run):
    """(result, seconds) of ``run()``, the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    result = run()
    sync(device)
    return result, time.perf_counter() - start


def prompts(rows: int, length: int, vocab: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (rows, length), generator=generator).to(device)


def peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


# --- Speculative Rejection ---------------------------------------------------------------------------

def spr_run(generator, method, ids, max_new_tokens):
    return generator.generate(input_ids=ids, attention_mask=torch.ones_like(ids), custom_generate=method,
                              max_new_tokens=max_new_tokens, return_dict_in_generate=True, **SAMPLING)


def spr_methods(results: Results, generator, reward, ids, shape, device, deadline):
    tokens = shape["n"] * (shape["prompt"] + shape["first_decision"])
    methods = {"Speculative Rejection": lambda: SpeculativeRejection(reward, n=shape["n"], alpha=0.5,
                                                                      max_batch_tokens=tokens, seed=0),
               "Best-of-N": lambda: BestOfN(reward, n=shape["n"], seed=0)}
    # Warm-up: prefill, replication, decoding, scoring and one compaction of N rows.
    spr_run(generator, SpeculativeRejection(reward, n=shape["n"], alpha=0.5, decision_tokens=(1,), seed=0), ids, 2)
    outputs = {}
    for name, method in methods.items():
        if out_of_time(deadline, 30):
            results.add_note("spr", f"stopped before {name}: deadline")
            break
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            out, seconds = timed(device, lambda: spr_run(generator, method(), ids, shape["spr_tokens"]))
        except Exception as error:  # noqa: BLE001 - the other method and the later measures still run
            results.add_note("spr", f"{name} failed: {error!r}"[:400])
            continue
        outputs[name] = out
        results.add_row("spr", dict(
            method=name, N=shape["n"], new_tokens=shape["spr_tokens"], seconds=seconds, rows_decoded=out.rows_decoded,
            rows_per_s=out.rows_decoded / seconds, tokens_generated=out.tokens_generated,
            tokens_per_s=out.tokens_generated / seconds, decisions=out.decision_lengths, batch_sizes=out.batch_sizes,
            reward_calls=out.reward_calls, peak_GB=peak_memory_gb(device)))
    return outputs


def decision_state(rows: int, width: int, cached: int, generator, device) -> list[torch.Tensor]:
    """What the engine compacts at a decision: every layer's keys and values, ids, mask, per-row state."""
    config = generator.config
    kv_shape = (rows, config.num_key_value_heads, cached, config.head_dim)
    kv = [torch.randn(kv_shape, device=device, dtype=generator.dtype) for _ in range(2 * config.num_hidden_layers)]
    ids = torch.randint(3, config.vocab_size, (rows, width), device=device)
    per_row = [torch.randint(0, 100, (rows,), device=device) for _ in range(4)]
    return kv + [ids, torch.ones_like(ids)] + per_row + [torch.zeros(rows, dtype=torch.bool, device=device)]


def compaction_vs_reprefill(results: Results, generator, out, shape, device, deadline):
    """At each decision's shape: one ops.compact_rows call against re-prefilling the survivors."""
    cache_argument = _compat.cache_argument(generator)
    for i, decision in enumerate(out.decision_lengths):
        if out_of_time(deadline, 20) or i + 1 >= len(out.batch_sizes):
            break
        rows, kept = out.batch_sizes[i], out.batch_sizes[i + 1]
        cached = shape["prompt"] + decision - 1  # the last sampled token is fed after the decision either way
        state = decision_state(rows, shape["prompt"] + shape["spr_tokens"], cached, generator, device)
        keep = torch.randperm(rows, device=device)[:kept].sort().values
        ops.compact_rows(state, keep)  # warm-up
        _, compact_s = timed(device, lambda: ops.compact_rows(state, keep))
        del state
        survivors = prompts(kept, cached, generator.config.vocab_size, device)
        with torch.no_grad():
            def reprefill():
                return generator(input_ids=survivors, attention_mask=torch.ones_like(survivors), use_cache=True,
                                 logits_to_keep=1, **{cache_argument: DynamicCache(config=generator.config)})
            reprefill()  # warm-up
            _, reprefill_s = timed(device, reprefill)
        results.add_row("spr_compaction", dict(
            decision_new_tokens=decision, rows=rows, kept=kept, cached_tokens=cached,
            cache_GB=rows * cached * kv_bytes_per_token(generator) / 1e9, compact_ms=compact_s * 1e3,
            reprefill_ms=reprefill_s * 1e3, ratio=reprefill_s / compact_s))
        if device.type == "cuda":
            torch.cuda.empty_cache()


def default_budget_run(results: Results, generator, reward, ids, shape, device):
    """The default budget, a share of the device's free memory: with a ballast leaving
    ``shape["free_bytes"]`` free, the schedule it gives N rows, its speed and its peak memory."""
    torch.cuda.empty_cache()
    ballast = torch.empty(max(torch.cuda.mem_get_info(device)[0] - shape["free_bytes"], 0), dtype=torch.uint8,
                          device=device)
    torch.cuda.reset_peak_memory_stats(device)
    row = dict(free_GB=torch.cuda.mem_get_info(device)[0] / 1e9, N=shape["n"], new_tokens=shape["spr_tokens"])
    try:
        out, seconds = timed(device, lambda: spr_run(generator, SpeculativeRejection(reward, n=shape["n"], alpha=0.5,
                                                                                     seed=0), ids, shape["spr_tokens"]))
        row.update(outcome="completed", seconds=seconds, rows_per_s=out.rows_decoded / seconds,
                   decisions=out.decision_lengths, batch_sizes=out.batch_sizes)
    except torch.cuda.OutOfMemoryError as error:
        row.update(outcome="out of memory: " + str(error).splitlines()[0][:160])
    except Exception as error:  # noqa: BLE001 - reported in the results like the other outcomes
        row.update(outcome=f"failed: {error!r}"[:200])
    finally:
        row.update(peak_GB=(torch.cuda.max_memory_allocated(device) - ballast.numel()) / 1e9)
        del ballast
        torch.cuda.empty_cache()
    results.add_row("spr_default_budget", row)
    results.headline("spr", f"default budget with {row['free_GB']:.0f} GB free: {row['outcome'][:60]}, decisions "
                     f"{row.get('decisions')}, peak {row['peak_GB']:.1f} GB beyond the ballast")


def spr(results: Results, shape: dict, device: torch.device, deadline: float):
    results.section("spr", "Speculative Rejection vs Best-of-N, Llama-3-8B-shaped generator (random weights, bf16)", [
        f"one {shape['prompt']}-token prompt, N={shape['n']}, alpha=0.5, {shape['spr_tokens']} new tokens, no EOS; "
        "reward model: 1B-shaped random Llama classifier on the same device; one timed run after a warm-up",
        "rows_per_s: rows decoded (sum of the batch size over decode forwards) per wall second, reward calls included"])
    results.section("spr_compaction", "Per decision: one compact_rows call vs re-prefilling the survivors", [
        "at the shapes of the run above: all 64 cache tensors plus ids, mask and per-row state in one call; "
        "re-prefill = a forward of the survivors' cached tokens into a fresh DynamicCache "
        "(logits of the last token only)"])
    generator = build(shape["big"], device, seed=0)
    reward = RewardModel(build(shape["small"], device, seed=1, classifier=True))
    ids = prompts(1, shape["prompt"], generator.config.vocab_size, device)
    outputs = spr_methods(results, generator, reward, ids, shape, device, deadline)
    rows = {row["method"]: row for row in results.data["sections"]["spr"]["rows"]}
    if "Speculative Rejection" in rows:
        row = rows["Speculative Rejection"]
        best_of_n = f"; Best-of-N {rows['Best-of-N']['seconds']:.1f} s" if "Best-of-N" in rows else ""
        results.headline("spr", f"Speculative Rejection N={row['N']}: {row['rows_per_s']:.0f} rows/s, "
                         f"{row['seconds']:.1f} s, batches {row['batch_sizes']}{best_of_n}")
        compaction_vs_reprefill(results, generator, outputs["Speculative Rejection"], shape, device, deadline)
        ratios = [r["ratio"] for r in results.data["sections"]["spr_compaction"]["rows"]]
        if ratios:
            results.headline("spr", f"compaction vs re-prefill per decision: {min(ratios):.0f}-{max(ratios):.0f}x")
    results.section("spr_default_budget", "Speculative Rejection under the default budget (a share of free memory)",
                    ["a ballast leaves the free memory shown; peak: allocated beyond the ballast, weights included"])
    if device.type != "cuda":
        results.add_note("spr_default_budget", "skipped: no CUDA device")
    elif not out_of_time(deadline, 30):
        default_budget_run(results, generator, reward, ids, shape, device)


# --- speculative sampling ----------------------------------------------------------------------------

def forward_costs(results: Results, target, draft, ids, num_draft, device):
    """One timing of each forward a decoding step is made of, after a warm-up."""
    cache_argument = _compat.cache_argument(target)
    row = dict(B=ids.shape[0])
    with torch.no_grad():
        for name, model, width in (("target_1", target, 1), (f"target_{num_draft + 1}", target, num_draft + 1),
                                   ("draft_1", draft, 1)):
            cache = DynamicCache(config=model.config)
            model(input_ids=ids, use_cache=True, **{cache_argument: cache})
            step = ids[:, :width]
            model(input_ids=step, use_cache=True, logits_to_keep=width, **{cache_argument: cache})  # warm-up
            _, seconds = timed(device, lambda: model(input_ids=step, use_cache=True, logits_to_keep=width,
                                                     **{cache_argument: cache}))
            row[f"{name}_ms"] = seconds * 1e3
    results.add_row("sps_forwards", row)


def sps_methods(batch: int, target, draft, aligned, num_draft: int) -> dict:
    methods = {
        "plain generate": dict(),
        "specalign SpS": dict(custom_generate=SpeculativeSampling(draft, num_draft, seed=0),
                              return_dict_in_generate=True),
        "specalign SpS, draft = target": dict(custom_generate=SpeculativeSampling(target, num_draft, seed=0),
                                              return_dict_in_generate=True),
        "specalign SSS": dict(custom_generate=RewardShiftedSpeculativeSampling(aligned, draft, num_draft, seed=0),
                              return_dict_in_generate=True),
    }
    if batch == 1:
        methods["HF assisted"] = dict(assistant_model=draft)
    return methods


def sps_measure(results: Results, target, ids, name: str, kwargs: dict, new_tokens: int, device):
    def run(tokens):
        return target.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                               **SAMPLING, **kwargs)

    run(4)  # warm-up: kernels compiled for this batch, allocator filled
    out, seconds = timed(device, lambda: run(new_tokens))
    acceptance = getattr(out, "acceptance_rate", None)
    results.add_row("sps", dict(B=ids.shape[0], method=name, new_tokens=new_tokens, seconds=seconds,
                                tokens_per_s=ids.shape[0] * new_tokens / seconds, acceptance=acceptance,
                                tokens_per_target_call=getattr(out, "tokens_per_target_call", None)))


def sps(results: Results, shape: dict, device: torch.device, deadline: float):
    results.section("sps", "Speculative sampling, Llama-3-8B-shaped target, 1B-shaped draft (random weights, bf16)", [
        f"K={shape['num_draft']}, {shape['prompt']}-token prompts, {shape['sps_tokens']} new tokens, temperature 1, "
        "no top-k, no EOS; one timed run after a 4-token warm-up; tokens/s = B x new tokens / wall seconds",
        "draft = target brackets the acceptance from above; SSS uses a second random 1B model as the aligned draft; "
        "HF assisted runs at B = 1 only (HF refuses larger batches), with HF's default schedule"])
    results.section("sps_forwards", "Forward costs behind the speculative sampling figures (one timed call each, ms)",
                    ["a cache of the prompt; target_1 / target_K+1: decode of 1 / K+1 tokens; "
                     "draft_1: the draft's 1-token decode"])
    target = build(shape["big"], device, seed=0)
    draft = build(shape["small"], device, seed=1)
    aligned = build(shape["small"], device, seed=2)
    all_ids = prompts(max(shape["batches"]), shape["prompt"], target.config.vocab_size, device)
    for batch in shape["batches"]:
        ids = all_ids[:batch]
        if not out_of_time(deadline, 20):
            forward_costs(results, target, draft, ids, shape["num_draft"], device)
        for name, kwargs in sps_methods(batch, target, draft, aligned, shape["num_draft"]).items():
            if out_of_time(deadline, 15):
                results.add_note("sps", f"stopped before B={batch} {name}: deadline")
                return
            try:
                sps_measure(results, target, ids, name, kwargs, shape["sps_tokens"], device)
            except Exception as error:  # noqa: BLE001 - one failing method must not stop the others
                results.add_note("sps", f"B={batch} {name} failed: {error!r}"[:400])
        rows = [row for row in results.data["sections"]["sps"]["rows"] if row["B"] == batch]
        results.headline("sps", f"B={batch}: " + ", ".join(
            f"{row['method']} {row['tokens_per_s']:.0f} tok/s"
            + (f" (acc {row['acceptance']:.2f})" if row["acceptance"] is not None else "") for row in rows))


def main():
    stage = sys.argv.pop(1) if len(sys.argv) > 1 and sys.argv[1] in ("spr", "sps") else None
    args = stage_arguments(__doc__.splitlines()[0]).parse_args()
    if stage is None:
        raise SystemExit("usage: gpu_end_to_end.py {spr,sps} --results FILE [--dry-run] [--deadline EPOCH]")
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
    torch.set_grad_enabled(False)
    (spr if stage == "spr" else sps)(Results(args.results), DRY if args.dry_run else FULL, device, args.deadline)


if __name__ == "__main__":
    main()
