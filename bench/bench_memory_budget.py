"""Peak working memory of Speculative Rejection and Best-of-N against their memory budget (CPU).

    python bench/bench_memory_budget.py [--budgets-mib 16 32 64 128] [--max-new-tokens 40]

Each run is a fresh process on the bundled world (the target as generator, the proxy reward model
as ``RewardModel``), one thread. Working memory is the peak resident set size during the call less
the resident set size just before it (weights, Python and torch already loaded and warmed up), so
it counts what the run itself allocates: KV cache, logits, activations, ids, the reward model's
activations, the candidate pool. ``n=None`` sizes the batch from the budget (its first decision at
an eighth of the answer), so unchecked the cache at full length would be several times the budget:
Speculative Rejection must prune in time and Best-of-N (``n`` = the same) split its batch.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
from specalign import BestOfN, RewardModel, SpeculativeRejection
from specalign.world import load_world

method, budget, n, max_new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
world = load_world()
reward = RewardModel(world.reward_model, world.reward_tokenizer)
inputs = world.tokenizer(world.prompts[:2], return_tensors="pt", padding=True)
make = {"spr": lambda: SpeculativeRejection(reward, n=n or None, alpha=0.5, memory_budget=budget, seed=0),
        "bon": lambda: BestOfN(reward, n=n, memory_budget=budget, seed=0)}[method]
world.target.generate(**inputs, custom_generate=BestOfN(reward, n=2, seed=1), do_sample=True, max_new_tokens=4)


def rss_now():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


before = rss_now()
out = world.target.generate(**inputs, custom_generate=make(), do_sample=True, max_new_tokens=max_new_tokens,
                            return_dict_in_generate=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(before=before, peak=peak, n=out.peak_batch_size // 2, rounds=out.rounds, batch_sizes=out.batch_sizes[:6],
                      decisions=out.decision_lengths[:6], tokens=out.tokens_generated)))
"""


def measure(method, budget, n, max_new_tokens):
    result = subprocess.run([sys.executable, "-c", CHILD, method, str(budget), str(n), str(max_new_tokens)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets-mib", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    print(f"{'method':<8}{'budget MiB':>12}{'n':>6}{'working MiB':>13}{'ratio':>8}  rounds, first batch sizes / decisions")
    for mib in args.budgets_mib:
        spr = measure("spr", mib << 20, 0, args.max_new_tokens)
        bon = measure("bon", mib << 20, spr["n"], args.max_new_tokens)
        for method, run in (("spr", spr), ("bon", bon)):
            working = (run["peak"] - run["before"]) / 2**20
            print(f"{method:<8}{mib:>12}{run['n']:>6}{working:>13.1f}{working / mib:>8.2f}  {run['rounds']}, "
                  f"{run['batch_sizes']} / {run['decisions']}")


if __name__ == "__main__":
    main()
