"""The device check: what a GPU has to show, in one command that survives a bare image, a failing part and the
device's time limit.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out DIR [--only S,S | --skip S,S] [--cpu]

Sections (benchmarks/gpu_check_sections.py has one function each; the GPU shapes, --cpu runs tiny ones on CPU to
check the script, not a device):
  preflight  Python, torch, CUDA and driver versions, the GPU and its memory, which optional packages import, the
             toolchain torch.compile's triton needs (C compiler, Python headers, libcuda), the attention backend
             and compute dtype, and a compile probe (inductor with CUDA graphs on a small function);
  tests      `pytest -m gpu` (tests/test_gpu.py), each test's outcome kept as it comes;
  train      two trainer steps on a Qwen2.5-1.5B-shaped model (random weights, FSDP2 on one GPU, bf16,
             activation checkpointing, policy-only GRPO with the KL reference, 64 rollouts of 256 tokens): each
             step's seconds, MFU, peak allocated and reserved memory; the tensors spark.plan counts, measured;
  vision     Qwen2.5-VL-7B's vision tower (random weights, bf16) over four ~1 MP images: memory held after the
             forward and the peak of forward + backward, with and without activation checkpointing;
  head       the update's log-prob head at Qwen2.5-7B's shape, 16k tokens: GEMMs in fp32 and in bf16, seconds
             of a forward + backward and the mean |log-prob difference|;
  plan       spark.plan's bytes per item for the train and vision workloads next to what those sections measured;
  sampler    the 1.5B model, 64 prompts x 256 tokens, 256 new tokens each: tokens/s of our sampler eager, of
             transformers `generate` (static cache) and of our sampler with CUDA graphs, each timed on its own
             (with compile time, graphs compiled, recompiles and inductor's CUDA-graph skips), against the HBM
             bound (every weight and the KV cache so far read once per decode step);
  offload    the train section's run with each model.offload setting (all, optimizer, none): step 2's seconds,
             rollout and update seconds, peak allocated and reserved memory and what stays allocated between
             steps (--cpu skips "all": FSDP2's CPUOffloadPolicy needs an accelerator). Last, so that the deadline
             cuts it before the others: `--only offload` runs it alone.

Each section runs in a process of its own (a crash, a hang or an NCCL abort ends that section only, and its
memory is gone before the next one starts) under its own time limit, within an overall deadline that ends the
check before the device's command limit. A section saves its results as they come (DIR/sections/NAME.json) and
its output goes to DIR/logs/NAME.log; DIR/gpu_check.json is rewritten after every section, and one line per
section is printed. A section that needs a package the image lacks is skipped, saying which. A second call with
the same --out and `--only` reruns just those sections in the same report. The exit status is 0 when no section
failed. This file imports only the standard library: whatever breaks on an image breaks inside a section.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS_SCRIPT = Path(__file__).resolve().with_name("gpu_check_sections.py")


@dataclass(frozen=True)
class Section:
    name: str
    limit_s: int  # its time limit; the check's estimate for each is in the README ("On a GPU")
    headline: tuple[str, ...]  # the results its summary line shows (dotted paths into its results)
    needs: tuple[str, ...] = ()  # optional packages (import names) it cannot run without


# In the order they run: the cheap and the telling first, the sampler's long compile and the offload settings'
# three runs last; plan reads train's and vision's results.
SECTIONS = (
    Section("preflight", 60, ("gpu.name", "gpu.memory_gb", "gpu.driver", "python", "torch", "cuda_runtime",
                              "attention.backend", "compile_probe.compile_s", "compile_probe.cudagraph_skips")),
    Section("tests", 150, ("passed", "failed", "error", "skipped", "running"), needs=("pytest",)),
    Section("train", 150, ("step1.seconds", "step2.seconds", "step2.update_tok_s", "step2.mfu_update",
                           "step2.peak_allocated_gb", "step2.peak_reserved_gb"), needs=("tensorboard",)),
    Section("vision", 60, ("checkpointed.held_gb", "checkpointed.peak_gb", "plain.held_gb", "plain.peak_gb",
                           "plain.pass_s")),
    Section("head", 60, ("fp32.pass_s", "bf16.pass_s", "mean_abs_logp_diff")),
    Section("plan", 30, ("train.total.plan_gb", "train.total.peak_allocated_gb", "vision.plain.plan_gb",
                         "vision.plain.held_gb")),
    Section("sampler", 240, ("eager.tok_s", "transformers.tok_s", "cuda_graphs.tok_s", "compiled.tok_s",
                             "cuda_graphs.of_hbm_bound", "cuda_graphs.first_call_s", "cuda_graphs.cudagraph_skips",
                             "hbm_bound_tok_s")),
    Section("offload", 150, ("none.step_s", "optimizer.step_s", "all.step_s", "none.peak_allocated_gb",
                             "optimizer.peak_allocated_gb", "all.peak_allocated_gb", "all.skipped")),
)
DEADLINE_S = 510  # the whole check: under the device's 10 minutes per command, with time to write the report
MIN_SECTION_S = 15  # a section is not started with less time than this before the deadline
GRACE_S = 10  # after a section's limit, for its own time-out to dump its stacks and exit
FAILURES = ("raise", "hang", "crash")  # what --fail makes a section do


def write_json(path: Path, value: dict) -> None:
    """Replace `path` whole (a kill mid-write leaves the previous version, never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2))
    os.replace(partial, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def names(text: str | None) -> list[str]:
    """'a,b' -> ['a', 'b'], each a section's name."""
    chosen = [name.strip() for name in (text or "").split(",") if name.strip()]
    unknown = sorted(set(chosen) - {s.name for s in SECTIONS})
    if unknown:
        raise SystemExit(f"gpu_check: unknown section {', '.join(unknown)} (sections: "
                         f"{', '.join(s.name for s in SECTIONS)})")
    return chosen


def failures(text: str | None) -> dict[str, str]:
    """--fail 'vision,head:hang' -> {'vision': 'raise', 'head': 'hang'}."""
    modes = {}
    for item in (text or "").split(","):
        if item.strip():
            name, _, mode = item.strip().partition(":")
            if (mode or "raise") not in FAILURES:
                raise SystemExit(f"gpu_check: --fail {item}: the mode is one of {', '.join(FAILURES)}")
            modes[names(name)[0]] = mode or "raise"
    return modes


def selected(only: str | None, skip: str | None) -> list[Section]:
    wanted, unwanted = names(only), names(skip)
    return [s for s in SECTIONS if (not wanted or s.name in wanted) and s.name not in unwanted]


def missing_packages(section: Section) -> list[str]:
    return [name for name in section.needs if importlib.util.find_spec(name) is None]


def stop_group(process: subprocess.Popen) -> None:
    """End the section's process and every process it started (compile workers, verifier workers), which could
    otherwise outlive it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def exit_reason(returncode: int | None, seconds: float, limit: float) -> tuple[str, str]:
    """(status, error) of a section process that ended without recording a status of its own."""
    if returncode is None or seconds >= limit:
        return "timeout", f"time limit of {limit:.0f} s reached (its stacks at that moment: log_tail)"
    if returncode < 0:
        return "failed", f"killed by {signal.Signals(-returncode).name}"
    return "failed", f"exited with status {returncode}"


def run_section(section: Section, args: argparse.Namespace, limit: float) -> dict:
    """Run one section in a process of its own, under `limit` seconds; its report entry."""
    results, log = args.out / "sections" / f"{section.name}.json", args.out / "logs" / f"{section.name}.log"
    results.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-X", "faulthandler", str(SECTIONS_SCRIPT), section.name, "--out", str(args.out),
               "--work", str(args.work), "--limit", str(limit)]
    command += ["--cpu"] if args.cpu else []
    command += ["--fail", args.fail[section.name]] if section.name in args.fail else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with open(log, "w") as output:  # a file, not a pipe: a leftover child cannot keep it open and block us
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=limit + GRACE_S)
        except subprocess.TimeoutExpired:
            returncode = None
        stop_group(process)
    seconds = time.monotonic() - started
    entry = {"status": None, **read_json(results), "seconds": round(seconds, 1), "limit_s": round(limit)}
    if entry["status"] is None:
        entry["status"], entry["error"] = exit_reason(returncode, seconds, limit)
    if entry["status"] not in ("ok", "skipped"):
        entry["log_tail"] = tail(log)
    return entry


def lookup(result: dict, path: str):
    for key in path.split("."):
        result = result.get(key) if isinstance(result, dict) else None
    return result


def summary_line(section: Section, entry: dict) -> str:
    """The section's status and time, its error or skip reason, its headline results and its parts' problems."""
    result = entry.get("result", {})
    headline = [f"{path}={value}" for path in section.headline if (value := lookup(result, path)) is not None]
    problems = [f"[{name}: {part.get('error') or 'skipped: ' + part['skipped']}]" for name, part in result.items()
                if isinstance(part, dict) and ("error" in part or "skipped" in part)]
    detail = " ".join(filter(None, [entry.get("error") or entry.get("reason"), *headline, *problems]))
    line = f"gpu_check: {section.name:<9} {entry['status']:<8} {entry['seconds']:6.1f} s  {detail}"
    return line if len(line) <= 400 else line[:397] + "..."


def no_cuda(entry: dict) -> bool:
    return entry["status"] == "ok" and entry.get("result", {}).get("cuda") is False


def run_check(args: argparse.Namespace) -> int:
    report_path = args.out / "gpu_check.json"
    report = read_json(report_path) or {"runs": [], "sections": {}}  # a rerun keeps the sections it does not run
    sections = selected(args.only, args.skip)
    report["runs"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "argv": sys.argv[1:],
                           "sections": [s.name for s in sections]})
    print(f"gpu_check: {len(sections)} sections, deadline {args.deadline:.0f} s, report {report_path}", flush=True)
    started = time.monotonic()
    stop = None  # why the remaining sections cannot run
    for section in sections:
        left = args.deadline - (time.monotonic() - started)
        missing = missing_packages(section)
        if stop or missing or left < MIN_SECTION_S:
            reason = stop or (f"needs {', '.join(missing)} (not installed)" if missing
                              else f"{left:.0f} s left before the check's deadline")
            entry = {"status": "skipped", "reason": reason, "seconds": 0.0}
        else:
            limit = min(section.limit_s, args.section_limit or section.limit_s, left)
            report["sections"][section.name] = {"status": "running", "limit_s": round(limit)}
            write_json(report_path, report)  # a check killed now still says where it was
            entry = run_section(section, args, limit)
        report["sections"][section.name] = entry
        report["runs"][-1]["seconds"] = round(time.monotonic() - started, 1)
        write_json(report_path, report)
        print(summary_line(section, entry), flush=True)
        if section.name == "preflight" and not args.cpu and no_cuda(entry):
            stop = "no CUDA device (--cpu checks the script on CPU)"
    statuses = [report["sections"][s.name]["status"] for s in sections]
    print(f"gpu_check: {statuses.count('ok')} ok, {statuses.count('skipped')} skipped, "
          f"{len(statuses) - statuses.count('ok') - statuses.count('skipped')} not ok, in "
          f"{(time.monotonic() - started) / 60:.1f} min; report {report_path}", flush=True)
    return 0 if set(statuses) <= {"ok", "skipped"} else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check",
                        help="the report folder: the only thing that has to come back from the device")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "spark-gpu-check",
                        help="scratch folder (the 1.5B checkpoint, trainer runs); reused by a rerun")
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on CPU: checks the script, not a device")
    parser.add_argument("--only", help="comma-separated sections to run (default: all)")
    parser.add_argument("--skip", help="comma-separated sections not to run")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for the whole check")
    parser.add_argument("--section-limit", type=float, default=0,
                        help="cap on every section's time limit, seconds (tests of the check)")
    parser.add_argument("--fail", help="SECTION[:raise|hang|crash],...: make sections fail (tests of the check)")
    args = parser.parse_args(argv)
    args.fail = failures(args.fail)
    args.out, args.work = args.out.resolve(), args.work.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    return run_check(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
