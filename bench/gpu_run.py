"""Driver of bench/gpu_run.sh: every GPU check of the project in one lease, stage by stage.

    python bench/gpu_run.py drive --out OUT_DIR [--dry-run] [--deadline-s 540]

Stages, in order; each runs in its own process group under a hard time limit, and each writes its
results into ``OUT_DIR/<device>.json`` as it goes, so a stage that crashes, hangs or runs out of
time keeps what it measured and costs the later stages nothing. Estimates are for one H200 (the
machine start, a minute or two, comes before and is not counted):

| stage    | what                                                                    | estimate | limit |
|----------|-------------------------------------------------------------------------|----------|-------|
| setup    | scripts/setup.sh (installs nothing on the GPU image; builds the C++     |   60 s   | 240 s |
|          | extension with every core), package lists before and after              |          |       |
| tests    | tests/test_cuda.py with compiled Triton: ops bit-identical to the       |   90 s   | 200 s |
|          | reference and the C++ backend, generate methods on CUDA                 |          |       |
| kernels  | bench/gpu_kernels.py: copy bandwidth, every op at the issue's shapes    |  150 s   | 220 s |
|          | (cold L2), batched PyTorch / HF baselines, agreement at full size       |          |       |
| spr      | bench/gpu_end_to_end.py spr: Speculative Rejection on an 8B-shaped      |   60 s   | 120 s |
|          | generator, N=512, budget schedule; compaction vs re-prefill             |          |       |
| sps      | bench/gpu_end_to_end.py sps: 8B target, 1B draft, B in {1, 8, 32, 64}   |   90 s   | 150 s |
|          | against plain and HF assisted generation                                |          |       |

Total about 7.5 minutes, inside the default overall deadline of 540 s (a device command may run
600 s): a stage's limit is cut to what the deadline leaves, and a stage that would get less than
20 s is skipped. The markdown table and a short summary are written last.

This module also holds what the stage scripts share: :class:`Results` (the JSON file and its
markdown twin) and the deadline check. It imports no torch, so the driver stays light.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DEFAULT_DEADLINE_S = 540
DRY_RUN_DEADLINE_S = 3600  # a shared 2-core CPU machine is slow; nothing leases it
MIN_STAGE_S = 20


class Results:
    """The results file: ``meta``, ``stages`` and named ``sections`` of table rows; rewritten (with
    its markdown twin beside it) after every change, so a killed process loses at most one row."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"meta": {}, "stages": [], "sections": {}}

    def section(self, name: str, title: str, notes: list[str] | None = None) -> dict:
        section = self.data["sections"].setdefault(name, {"title": title, "notes": [], "rows": [], "headline": []})
        section["title"] = title
        if notes is not None:
            section["notes"] = notes
        self.save()
        return section

    def add_row(self, name: str, row: dict) -> None:
        self.data["sections"][name]["rows"].append(row)
        self.save()

    def add_note(self, name: str, note: str) -> None:
        self.data["sections"][name]["notes"].append(note)
        self.save()

    def headline(self, name: str, line: str) -> None:
        self.data["sections"][name]["headline"].append(line)
        self.save()

    def save(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(temporary, self.path)
        self.path.with_suffix(".md").write_text(markdown(self.data))


def out_of_time(deadline: float, needed_s: float = 0.0) -> bool:
    """True when less than ``needed_s`` seconds are left before ``deadline`` (epoch seconds)."""
    return time.time() + needed_s > deadline


def stage_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments every stage script takes from the driver."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--results", required=True, help="the results JSON file to add to")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: exercise the code paths")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="epoch seconds to finish by")
    return parser


# --- markdown ----------------------------------------------------------------------------------------

def _cell(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.3g}"
    if value is None:
        return "-"
    return str(value).replace("|", "/").replace("\n", " ")


def table(rows: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def markdown(data: dict) -> str:
    meta = data.get("meta", {})
    lines = [f"# GPU run: {meta.get('device', '?')}", ""]
    lines += [f"- {key}: {_cell(value)}" for key, value in meta.items()] + [""]
    if data.get("stages"):
        lines += ["## Stages", ""] + table(data["stages"]) + [""]
    for section in data.get("sections", {}).values():
        lines += [f"## {section['title']}", ""]
        lines += [f"- {note}" for note in section["notes"]] + ([""] if section["notes"] else [])
        if section["rows"]:
            lines += table(section["rows"]) + [""]
    return "\n".join(lines)


# --- the driver --------------------------------------------------------------------------------------

STAGES = {  # name: (estimate_s, limit_s)
    "setup": (60, 240),
    "tests": (90, 200),
    "kernels": (150, 220),
    "spr": (60, 120),
    "sps": (90, 150),
}


def run_stage(command: list[str], timeout_s: float, env: dict | None = None) -> tuple[int | None, float]:
    """Run ``command`` in its own process group; kill the group at ``timeout_s``. (rc or None, seconds)."""
    started = time.time()
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        rc = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        rc = None
    return rc, time.time() - started


def captured(command: list[str], timeout_s: float = 60) -> str:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        return (done.stdout + done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable ({error})"


def device_slug(dry_run: bool) -> tuple[str, str]:
    """(name, file-name slug) of the GPU, from nvidia-smi."""
    if dry_run:
        return "CPU dry run", "cpu-dry-run"
    name = captured(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).splitlines()
    name = name[0].strip() if name and not name[0].startswith("unavailable") else "unknown GPU"
    return name, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def package_set(python: str) -> set[str]:
    listing = captured([python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"])
    return {line for line in listing.splitlines() if "==" in line and not line.lower().startswith("specalign")}


def setup_stage(python: str, timeout_s: float) -> tuple[int | None, float, str]:
    """scripts/setup.sh, then (if it failed) a direct editable build; what changed in pip's list."""
    before = package_set(python)
    rc, seconds = run_stage(["bash", "scripts/setup.sh"], timeout_s)
    note = f"setup.sh rc={rc}"
    if rc != 0 and timeout_s - seconds > MIN_STAGE_S:
        print("setup.sh failed: building the extension directly (no dependency checks)", flush=True)
        rc, more = run_stage([python, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation",
                              "--no-deps", "-e", "."], timeout_s - seconds)
        seconds += more
        note += f"; direct editable build rc={rc}"
    changed = sorted(package_set(python) ^ before)
    note += "; pip list unchanged" if not changed else f"; pip list changed: {', '.join(changed)}"
    versions = captured([python, "-c", "import torch, triton, transformers, specalign._C; print('torch', torch.__version__, "
                         "'cuda', torch.version.cuda, '| triton', triton.__version__, '| transformers', "
                         "transformers.__version__)"])
    return rc, seconds, f"{note}; {versions.splitlines()[-1] if versions else ''}"


def tests_stage(python: str, out: Path, timeout_s: float) -> tuple[int | None, float, str]:
    junit = out / "cuda_tests.xml"
    env = dict(os.environ, TRITON_INTERPRET="0")  # compiled Triton kernels, not the interpreter
    rc, seconds = run_stage([python, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "tests/test_cuda.py",
                             f"--junitxml={junit}"], timeout_s, env)
    return rc, seconds, junit_summary(junit)


def junit_summary(junit: Path) -> str:
    if not junit.exists():
        return "no JUnit report"
    suite = ElementTree.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    note = (f"{counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']} passed, "
            f"{counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped")
    return note + (f"; failing: {', '.join(failed[:12])}" if failed else "")


def script_stage(python: str, script: list[str], results: Path, dry_run: bool, timeout_s: float):
    deadline = time.time() + timeout_s - 5  # the script stops itself before the hard kill
    command = [python, str(BENCH / script[0]), *script[1:], "--results", str(results), "--deadline", f"{deadline:.0f}"]
    rc, seconds = run_stage(command + (["--dry-run"] if dry_run else []), timeout_s)
    return rc, seconds, ""


def drive(args) -> int:
    started = time.time()
    deadline = started + (args.deadline_s or (DRY_RUN_DEADLINE_S if args.dry_run else DEFAULT_DEADLINE_S))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name, slug = device_slug(args.dry_run)
    results = Results(out / f"{slug}.json")
    smi = captured(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,"
                    "clocks.max.sm,power.limit,temperature.gpu", "--format=csv"])
    results.data["meta"].update(device=name, dry_run=args.dry_run, started=time.strftime("%Y-%m-%d %H:%M:%S"),
                                commit=captured(["git", "rev-parse", "--short", "HEAD"]),
                                nvidia_smi=" / ".join(smi.splitlines()), python=sys.executable)
    results.save()
    python = sys.executable
    for stage, (estimate, limit) in STAGES.items():
        timeout_s = min(limit, deadline - time.time() - 5)
        print(f"\n===== stage {stage}: estimate {estimate} s, limit {timeout_s:.0f} s =====", flush=True)
        if timeout_s < MIN_STAGE_S:
            status, seconds, note = "skipped", 0.0, "no time left before the deadline"
        else:
            if stage == "setup":
                rc, seconds, note = setup_stage(python, timeout_s)
            elif stage == "tests":
                rc, seconds, note = tests_stage(python, out, timeout_s)
            else:
                script = ["gpu_kernels.py"] if stage == "kernels" else ["gpu_end_to_end.py", stage]
                rc, seconds, note = script_stage(python, script, results.path, args.dry_run, timeout_s)
            status = "ok" if rc == 0 else "timeout" if rc is None else f"failed (rc {rc})"
        results = Results(results.path)  # the stage wrote to it
        results.data["stages"].append(dict(stage=stage, status=status, seconds=round(seconds, 1),
                                           estimate_s=estimate, limit_s=round(timeout_s), note=note))
        results.save()
        print(f"===== stage {stage}: {status} in {seconds:.0f} s {note}", flush=True)
    print_summary(results.data, time.time() - started)
    return 0


def print_summary(data: dict, seconds: float) -> None:
    print(f"\n===== summary: {data['meta'].get('device')} ({seconds:.0f} s in all) =====")
    print(f"{'stage':<9}{'status':<9}{'seconds':>8}  note")
    for stage in data["stages"]:
        print(f"{stage['stage']:<9}{stage['status']:<9}{stage['seconds']:>8.0f}  {stage['note'][:150]}")
    for section in data["sections"].values():
        for line in section["headline"]:
            print(f"- {line}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    drive_parser = commands.add_parser("drive", help="run every stage")
    drive_parser.add_argument("--out", required=True)
    drive_parser.add_argument("--dry-run", action="store_true")
    drive_parser.add_argument("--deadline-s", type=float, default=None, help="overall time limit in seconds")
    args = parser.parse_args()
    sys.exit(drive(args))


if __name__ == "__main__":
    main()
