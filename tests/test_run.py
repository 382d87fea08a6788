"""specalign.run: data-parallel generation over a dataset with torch.distributed (gloo on CPU).

Two processes on 127.0.0.1 give a one-process run's results token for token; a run killed mid-write
and restarted loses and repeats nothing; torn lines, reruns and bad input are handled.
"""
import json
import os
import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from specalign import BestOfN, RewardModel, RewardShiftedSpeculativeSampling, SpeculativeRejection
from specalign.cli import main
from specalign.run import CRASH_AFTER_ENV, Prompt, init_distributed, prompt_seed, read_prompts, run_dataset
from specalign.world import load_world

pytestmark = pytest.mark.usefixtures("one_thread")

GENERATE = dict(max_new_tokens=10)
PROMPTS = 8
# Units of 3 prompts: the 8 prompts make units of 3, 3 and 2, so rank 0 of two gets units of both sizes.
SSS_BATCH = 3
CRASH_AFTER = 2
# Speculative Rejection's budget in cached tokens: more than 4 samples of 8 + 10 tokens ever need.
BUDGET = 1000
PINNED_SEED = 2893515673211561612  # prompt_seed(0, "a")


def _prompts(world):
    """Prompts of 6 to 8 tokens (batches are padded), with ids of both JSON types (the output keeps them)."""
    return [Prompt(f"p{i}" if i % 2 else i, text + " the" * (i % 3)) for i, text in enumerate(world.prompts[:PROMPTS])]


def _job(world, name):
    """(method, run_dataset keywords) of the test's two jobs: Speculative Rejection and SSS."""
    reward = RewardModel(world.reward_model, world.reward_tokenizer)
    if name == "spr":
        method = SpeculativeRejection(reward, n=4, alpha=0.5, decision_tokens=[4], max_batch_tokens=BUDGET)
        return method, dict(batch_size=1)
    return RewardShiftedSpeculativeSampling(world.aligned_draft, world.draft, 3), dict(batch_size=SSS_BATCH,
                                                                                        reward_model=reward)


def _run(world, output, name, prompts=None, **overrides):
    method, kwargs = _job(world, name)
    kwargs.update(overrides)
    return run_dataset(prompts or _prompts(world), output, model=world.target, tokenizer=world.tokenizer,
                       method=method, generate_kwargs=GENERATE, seed=7, progress=False, **kwargs)


def _records(path):
    """The output's records without their wall times, the one field that may differ between runs."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        del record["stats"]["seconds"]
    return records


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """One process, no process group: the results every other run must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    for name in ("spr", "sss"):
        _run(world, folder / f"{name}.jsonl", name)
    return {name: _records(folder / f"{name}.jsonl") for name in ("spr", "sss")}


def _worker(rank, world, world_size, port, folder, crash_after):
    """One rank of a gloo group on 127.0.0.1, started as ``torchrun`` would: both jobs into ``folder``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    if crash_after is not None:
        os.environ[CRASH_AFTER_ENV] = str(crash_after)
    torch.set_num_threads(1)
    init_distributed()
    try:
        for name in ("spr", "sss"):
            _run(world, folder / f"{name}.jsonl", name)
    finally:
        dist.destroy_process_group()


def _launch(world, folder, crash_after=None, world_size=2):
    """``world_size`` ranks, forked so that they share the loaded world instead of importing and loading it again."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(world, world_size, port, folder, crash_after), nprocs=world_size,
                       start_method="fork")


@pytest.mark.slow
def test_two_processes_give_the_one_process_results_token_for_token(world, reference, tmp_path):
    _launch(world, tmp_path)
    for name in ("spr", "sss"):
        assert _records(tmp_path / f"{name}.jsonl") == reference[name]
        assert not (tmp_path / f"{name}.jsonl.parts").exists()


@pytest.mark.slow
def test_a_run_killed_mid_write_and_restarted_loses_and_repeats_nothing(world, reference, tmp_path):
    with pytest.raises(mp.ProcessExitedException, match="SIGKILL"):
        _launch(world, tmp_path, crash_after=CRASH_AFTER)
    parts = sorted((tmp_path / "spr.jsonl.parts").glob("rank-*.jsonl"))
    assert parts and not (tmp_path / "spr.jsonl").exists()
    written = [part.read_bytes() for part in parts]
    # Whichever rank died first, the others were killed with it; the crashed one left a torn line.
    assert any(not data.endswith(b"\n") for data in written)
    assert all(data.count(b"\n") <= CRASH_AFTER for data in written)

    _launch(world, tmp_path)
    for name in ("spr", "sss"):
        records = _records(tmp_path / f"{name}.jsonl")
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids)) == PROMPTS
        assert records == reference[name]


def test_a_torn_last_line_is_cut_and_redone_and_written_lines_are_kept(world, reference, tmp_path):
    lines = [json.dumps({**r, "stats": {**r["stats"], "seconds": 0.0}}) for r in reference["spr"]]
    parts = tmp_path / "spr.jsonl.parts"
    parts.mkdir()
    # A rank of an earlier, larger run: 3 whole lines and half of the fourth.
    (parts / "rank-00003.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    summary = _run(world, tmp_path / "spr.jsonl", "spr")
    assert summary.generated_now == PROMPTS - 3 and summary.prompts == PROMPTS
    assert _records(tmp_path / "spr.jsonl") == reference["spr"]
    written = [json.loads(line) for line in (tmp_path / "spr.jsonl").read_text().splitlines()]
    assert [r["stats"]["seconds"] for r in written[:3]] == [0.0] * 3  # kept, not generated again


def test_a_finished_run_rerun_generates_nothing_and_keeps_its_output(world, reference, tmp_path):
    _run(world, tmp_path / "sss.jsonl", "sss")
    before = (tmp_path / "sss.jsonl").read_text()
    summary = _run(world, tmp_path / "sss.jsonl", "sss")
    assert summary.generated_now == 0 and summary.prompts == PROMPTS
    assert (tmp_path / "sss.jsonl").read_text() == before
    assert summary.mean_reward == pytest.approx(sum(r["reward"] for r in reference["sss"]) / PROMPTS)
    assert summary.tokens_generated == sum(r["stats"]["tokens_generated"] for r in reference["sss"])


def test_a_merge_cut_short_is_finished_but_two_results_for_one_id_are_refused(world, reference, tmp_path):
    lines = [json.dumps({**r, "stats": {**r["stats"], "seconds": 0.0}}) + "\n" for r in reference["spr"]]
    output, parts = tmp_path / "spr.jsonl", tmp_path / "spr.jsonl.parts"
    parts.mkdir()
    # Killed after the output was renamed into place, before the parts were removed.
    output.write_text("".join(lines))
    (parts / "rank-00000.jsonl").write_text("".join(lines[:2]))
    assert _run(world, output, "spr").generated_now == 0
    assert output.read_text() == "".join(lines) and not parts.exists()
    # The same id in two part files: two runs wrote to one output.
    output.unlink()
    parts.mkdir()
    (parts / "rank-00000.jsonl").write_text(lines[1])
    (parts / "rank-00001.jsonl").write_text(lines[1])
    with pytest.raises(ValueError, match="rank-00001.jsonl:1: id 'p1' already has a result"):
        _run(world, output, "spr")


def test_a_prompts_result_depends_on_its_id_not_on_order_or_company(world, reference, tmp_path):
    """One prompt per call: a shuffled subset of the prompts gives the same results for them."""
    subset = _prompts(world)[2:7]
    random.Random(0).shuffle(subset)
    _run(world, tmp_path / "spr.jsonl", "spr", prompts=subset)
    by_id = {r["id"]: r for r in reference["spr"]}
    assert _records(tmp_path / "spr.jsonl") == [by_id[p.id] for p in subset]


def test_speculative_sampling_rows_do_not_depend_on_the_batch_size(world, reference, tmp_path):
    """Per-row seeds from the ids: one prompt per call gives the batched (padded) run's answers."""
    _run(world, tmp_path / "sss.jsonl", "sss", batch_size=1)
    fields = ("id", "answer", "seed")
    alone = _records(tmp_path / "sss.jsonl")
    assert [[r[f] for f in fields] for r in alone] == [[r[f] for f in fields] for r in reference["sss"]]
    assert [r["stats"]["tokens_generated"] for r in alone] == [r["stats"]["tokens_generated"] for r in reference["sss"]]
    assert [r["reward"] for r in alone] == pytest.approx([r["reward"] for r in reference["sss"]], abs=1e-5)


def test_seeds_come_from_the_id(reference):
    for name in ("spr", "sss"):
        assert [r["seed"] for r in reference[name]] == [prompt_seed(7, r["id"]) for r in reference[name]]
    # Pinned: another hash would change the seeds of the prompts a resumed run has left.
    assert prompt_seed(0, "a") == PINNED_SEED
    assert all(-(2**63) <= prompt_seed(123, i) < 2**63 for i in range(100))
    assert len({prompt_seed(0, 1), prompt_seed(0, "1"), prompt_seed(1, "1")}) == 3


def test_a_rerun_with_other_options_or_other_prompts_is_refused(world, tmp_path):
    output = tmp_path / "spr.jsonl"
    _run(world, output, "spr", prompts=_prompts(world)[:2])
    method = SpeculativeRejection(RewardModel(world.reward_model, world.reward_tokenizer), n=5, decision_tokens=[4],
                                  max_batch_tokens=BUDGET)
    with pytest.raises(ValueError, match="another configuration"):
        run_dataset(_prompts(world)[:2], output, model=world.target, tokenizer=world.tokenizer, method=method,
                    generate_kwargs=GENERATE, seed=7, progress=False)
    with pytest.raises(ValueError, match="not among the prompts"):
        _run(world, output, "spr", prompts=_prompts(world)[1:3])


def test_bad_arguments_raise_errors_naming_them(world, tmp_path):
    reward = RewardModel(world.reward_model, world.reward_tokenizer)
    common = dict(model=world.target, tokenizer=world.tokenizer, progress=False)
    prompts = _prompts(world)[:2]
    with pytest.raises(ValueError, match="batch_size must be 1"):
        run_dataset(prompts, tmp_path / "a", method=BestOfN(reward, n=2), batch_size=2, **common)
    for method in (SpeculativeRejection(reward, n=2, decision_tokens=[4]), BestOfN(reward)):
        with pytest.raises(ValueError, match="memory free when a call starts"):
            run_dataset(prompts, tmp_path / "a", method=method, **common)
    with pytest.raises(TypeError, match="method must be"):
        run_dataset(prompts, tmp_path / "a", method=None, **common)
    with pytest.raises(ValueError, match="appears twice"):
        run_dataset(prompts + prompts[:1], tmp_path / "a", method=BestOfN(reward, n=2), **common)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        run_dataset(prompts, tmp_path / "a", method=BestOfN(reward, n=2), batch_size=0, **common)
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": 1, "prompt": "a"}\n{"id": 2}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:2: expected an object with a string 'prompt'"):
        read_prompts(bad)


def test_cli_run_reads_jsonl_writes_results_and_a_summary(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "review of the pizza:"}\n{"prompt": "how was the sushi:"}\n')
    output = tmp_path / "out.jsonl"
    args = ["run", "--world", "--method", "bon", "--n", "2", "--max-new-tokens", "6", "--input", str(prompts),
            "--output", str(output), "--quiet"]
    assert main(args) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", 1]
    assert all(r["method"] == "bon" and r["config"]["n"] == 2 and isinstance(r["reward"], float) for r in records)
    assert "2 prompts (2 generated now" in capsys.readouterr().err


def test_cli_run_refuses_options_that_would_make_results_depend_on_the_device(tmp_path):
    with pytest.raises(SystemExit, match="specalign run: .*memory free when a call starts"):
        main(["run", "--world", "--method", "spr", "--output", str(tmp_path / "out.jsonl"), "--quiet"])
