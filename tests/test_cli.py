"""The command line: help texts, --world, --json, --quiet, --memory-budget, bench's folder, bad arguments."""
import argparse
import json
import subprocess

import pytest
from transformers import AutoTokenizer

from specalign import cli
from specalign.world import WORLD_DIR

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["review of the pizza:", "how was the sushi:"]
MODEL_FOLDERS = ("target", "draft", "aligned_draft", "reward_model")


def command_parser(*argv):
    """The parser of one subcommand, e.g. ``command_parser("bench")``."""
    return cli.build_parser().parse_known_args(list(argv))[0].parser


def help_text(*argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def run_json(capsys, *argv):
    assert cli.main(["generate", "--world", "--json", "--quiet", *argv]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


@pytest.mark.parametrize("command", ["demo", "generate"])
def test_every_option_has_help_and_shows_its_default(command):
    required = ["--method", "sd", "--prompt", "x"] if command == "generate" else []
    parser = command_parser(command, *required)
    for action in parser._actions:
        assert action.help, f"{command} {action.option_strings} has no help text"
        has_default = action.default not in (None, False, argparse.SUPPRESS)
        if has_default:
            assert "default" in action.help, f"{command} {action.option_strings} does not show its default"


def test_generate_help_spells_out_the_methods_and_the_world(capsys):
    text = help_text("generate", capsys=capsys)
    for spelled_out in ("Best-of-N", "Speculative Rejection", "speculative sampling",
                        "reward-shifted speculative sampling"):
        assert spelled_out in text
    for option in ("--n", "--alpha", "--prompt", "--num-draft-tokens", "--max-new-tokens", "--temperature", "--top-k",
                   "--greedy", "--seed", "--memory-budget", "--world", "--json", "--quiet", "--threads"):
        assert option in text
    assert "(default: 16)" in text and "(default: 0.5)" in text  # --n, --alpha
    assert str(WORLD_DIR) in text.replace("\n", "")


def test_bench_help_says_what_each_suite_does(capsys):
    text = " ".join(help_text("bench", capsys=capsys).split())
    for suite in cli.BENCH_SUITES:
        assert f"{suite} " in text
    assert "pass through" in text
    assert "trains its tiny models once first (about 3 minutes" in text


def test_world_model_folders_carry_their_tokenizer():
    shared = AutoTokenizer.from_pretrained(WORLD_DIR / "tokenizer").get_vocab()
    for folder in MODEL_FOLDERS:
        assert AutoTokenizer.from_pretrained(WORLD_DIR / folder).get_vocab() == shared, folder


def test_generate_json_with_the_bundled_world(capsys):
    report, _ = run_json(capsys, "--method", "spr", "--n", "4", "--decision-tokens", "4", "--max-new-tokens", "10",
                         "--prompt", PROMPTS[0], "--prompt", PROMPTS[1])
    assert report["method"] == "spr" and report["method_name"] == "Speculative Rejection"
    assert report["threads"] == 1  # the world's default
    assert [r["prompt"] for r in report["results"]] == PROMPTS
    for result in report["results"]:
        assert isinstance(result["text"], str) and isinstance(result["reward"], float)
        assert 1 <= result["tokens"] <= 10
    statistics = report["statistics"]
    assert statistics["peak_batch_size"] == 8 and statistics["decision_lengths"][:1] == [4]
    assert statistics["tokens_generated"] == report["tokens_generated"] >= sum(r["tokens"] for r in report["results"])


def test_generate_json_for_sss_scores_answers_with_the_world_reward_model(capsys):
    report, _ = run_json(capsys, "--method", "sss", "--max-new-tokens", "10", "--prompt", PROMPTS[0])
    (result,) = report["results"]
    assert isinstance(result["reward"], float)
    assert 0.0 <= report["statistics"]["acceptance_rate"] <= 1.0
    assert report["statistics"]["target_calls"] >= 1


def test_memory_budget_places_the_decision_points(capsys):
    common = ["--method", "spr", "--n", "8", "--max-new-tokens", "24", "--prompt", PROMPTS[0]]
    unbounded, _ = run_json(capsys, *common)
    # The world's target caches 4 KiB per token, and each row takes about 30 KiB of logits and
    # activations besides; with the reward model's share set aside, 1.5 MiB holds 8 rows of about 20.
    bounded, _ = run_json(capsys, *common, "--memory-budget", "1536K")
    assert unbounded["statistics"]["decision_lengths"] == []
    assert bounded["statistics"]["decision_lengths"], "a small budget must bring decision points"
    assert bounded["statistics"]["decision_lengths"][0] < 24


@pytest.mark.parametrize("method", ["sd", "sss"])
def test_progress_bars_for_speculative_sampling_and_quiet_silences_them(method, capsys):
    argv = ["generate", "--world", "--method", method, "--max-new-tokens", "8", "--prompt", PROMPTS[0]]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert ("SSS" if method == "sss" else "speculative sampling") in err and "tok" in err
    assert cli.main([*argv, "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out.startswith(PROMPTS[0])


def test_memory_sizes():
    assert cli.memory_size("512M") == 512 * 2**20
    assert cli.memory_size("2G") == 2 * 2**30
    assert cli.memory_size("1.5KiB") == 1536
    assert cli.memory_size("1000") == 1000


def _target():
    return str(WORLD_DIR / "target")


BAD_ARGUMENTS = {
    "bon without reward model": (["generate", "--method", "bon", "--model", _target(), "--prompt", "x"],
                                 "--method bon needs --reward-model DIR"),
    "sss without reference draft": (["generate", "--method", "sss", "--model", _target(), "--draft", _target(),
                                     "--prompt", "x"], "--method sss needs --ref-draft DIR"),
    "no model": (["generate", "--method", "sd", "--prompt", "x"], "--method sd needs --model DIR"),
    "missing folder": (["generate", "--method", "sd", "--world", "--draft", "/no/such/draft", "--prompt", "x"],
                       "--draft /no/such/draft: no such folder"),
    "not a world": (["generate", "--method", "sd", "--world", "/", "--prompt", "x"], "not a world folder"),
    "n 0": (["generate", "--world", "--method", "bon", "--n", "0", "--prompt", "x"],
            "argument --n: expected an integer >= 1, got '0'"),
    "alpha 1": (["generate", "--world", "--method", "spr", "--alpha", "1", "--prompt", "x"],
                "argument --alpha: expected a rejection rate in [0, 1), got '1'"),
    "memory budget": (["generate", "--world", "--method", "spr", "--memory-budget", "lots", "--prompt", "x"],
                      "argument --memory-budget: expected a size in bytes"),
    "temperature 0": (["generate", "--world", "--method", "sd", "--temperature", "0", "--prompt", "x"],
                      "argument --temperature: expected a number > 0"),
    "greedy best-of-n": (["generate", "--world", "--method", "bon", "--greedy", "--prompt", "x"],
                         "greedy decoding is for sd and sss"),
    "unknown method": (["generate", "--world", "--method", "beam", "--prompt", "x"], "invalid choice: 'beam'"),
    "empty prompt": (["generate", "--world", "--method", "sd", "--prompt", " "], "argument --prompt: expected a prompt"),
    "demo unknown option": (["demo", "--fast"], "unrecognized arguments: --fast"),
    "bench unknown suite": (["bench", "--suite", "gpu"], "invalid choice: 'gpu'"),
}


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_get_a_message_not_a_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_model_folder_without_tokenizer(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--method", "sd", "--model", str(tmp_path), "--draft", str(tmp_path), "--prompt", "x"])
    assert f"{tmp_path} has no tokenizer" in capsys.readouterr().err


def test_bench_runs_in_the_callers_folder_and_passes_arguments_through(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command, cwd: calls.append((command, cwd)) or 0)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--suite", "spr", "--quiet", "--n", "4"]) == 0
    ((command, cwd),) = calls
    assert cwd == str(tmp_path)
    assert command[-2:] == ["--n", "4"]
    script = next(part for part in command if part.endswith("bench_speculative_rejection.py"))
    assert script.startswith("/") and script.endswith("/bench/bench_speculative_rejection.py")
    calls.clear()
    assert cli.main(["bench", "--suite", "ops", "--quiet"]) == 0
    assert [command[1].rsplit("/", 1)[-1] for command, _ in calls] == [
        f"bench_{op}.py" for op in ("speculative_verify", "speculative_verify_probs", "sample", "sample_with_stats",
                                    "compact_rows", "fork_rows", "compact_columns")]


def test_world_training_has_a_default_folder(monkeypatch, capsys):
    from specalign.world import train

    monkeypatch.setattr("sys.argv", ["train", "--help"])
    with pytest.raises(SystemExit):
        train.main()
    assert "default: out/world" in capsys.readouterr().out
