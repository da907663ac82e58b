"""Benchmark of spark.verify against math-verify.

1. Accuracy per category on each hand-written case file, in lenient mode: the boxed forms
   (tests/verifier_cases.jsonl), the lenient grader's classes used while developing
   (tests/verifier_cases_lenient.jsonl), and the held-out set written before the lenient grader and
   never tuned on (tests/verifier_holdout.jsonl). Every false accept (a wrong answer scored right) is
   listed separately, ours and math-verify's, then every case where the two disagree.
2. Agreement with the authors' own grading: each eval set's worked solutions (MATH-500 and Minerva
   `solution`, GSM8K `answer`) are correct answers to their problems, so a grader should accept each one
   against its own gold answer; the share accepted, ours and math-verify's, per set.
3. Throughput on realistic responses built from the eval sets' gold answers (a short reasoning text
   and a boxed answer: the gold verbatim, re-formatted but equal, or wrong): cases/s of `score_batch`
   in trainer-sized batches in each mode (each on its own rows, after a warm-up on others), and per-case
   latency (p50/p99/max) of single lenient checks.

    .venv/bin/python benchmarks/verifier.py [--n 2000] [--workers 4] [--timeout 2.0]

math-verify (`.venv/bin/pip install math-verify`) is only a reference; without it only our figures
are printed. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from spark.verify import extract_answer, is_correct, score_batch, verifier_stats
from spark.verify.pool import configure, shutdown

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO / "data" / "eval"
CASE_FILES = {name: REPO / "tests" / f"verifier_{name}.jsonl" for name in ("cases", "cases_lenient", "holdout")}
BATCH = 512  # a trainer's rollout batch
TEMPLATE = (
    "Let's solve this step by step.\nFirst we set up the equations and simplify them.\n"
    "Then we compute the result carefully and check it.\nTherefore, the final answer is $\\boxed{{{}}}$."
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_golds() -> list[str]:
    """Every gold answer of the eval sets, in the form its loader passes it to the verifier."""
    golds = [row["answer"] for row in read_jsonl(EVAL / "math500.jsonl")]
    golds += [str(row["answer"]) for row in read_jsonl(EVAL / "aime24.jsonl") + read_jsonl(EVAL / "amc23.jsonl")]
    golds += [extract_answer(row["solution"], "strict") for row in read_jsonl(EVAL / "minerva_math.jsonl")]
    golds += [row["answer"].split("#### ")[-1].strip() for row in read_jsonl(EVAL / "gsm8k.jsonl")]
    golds += ["ABCD"[row["answer"]] for row in read_jsonl(EVAL / "mmlu_stem.jsonl")]
    return golds


def reformat(gold: str) -> str:
    """An equal answer spelled differently, the way a model might write it."""
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", gold):
        return gold.replace(",", "")
    if re.fullmatch(r"-?\d+", gold):
        return f"{gold}.0"
    if re.fullmatch(r"-?\d+\.0", gold):
        return gold[:-2]
    if re.fullmatch(r"[A-D]", gold):
        return f"({gold})"
    if r"\frac" in gold:
        return gold.replace(r"\frac", r"\dfrac")
    terms = gold.split("+")
    if len(terms) == 2 and all(t.strip() and t.count("{") == t.count("}") and "=" not in t and "," not in t for t in terms):
        return f"{terms[1]}+{terms[0]}"  # `a+b` as `b+a`: equal only to sympy
    return re.sub(r"\s*([-+=,])\s*", r" \1 ", gold)


def wrong(gold: str, others: list[str], rng: random.Random) -> str:
    """A different answer: an integer off by one, else another gold answer that reads differently."""
    if re.fullmatch(r"-?\d+", gold):
        return str(int(gold) + rng.choice([-1, 1]))
    other = rng.choice(others)
    while other.replace(" ", "") == gold.replace(" ", ""):
        other = rng.choice(others)
    return other


def realistic_rows(n: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    """(response, gold, expected): 40% the gold verbatim, 30% re-formatted, 30% wrong."""
    rng = random.Random(seed)
    golds = eval_golds()
    rows = []
    for gold in rng.sample(golds, n) if n <= len(golds) else rng.choices(golds, k=n):
        kind = rng.random()
        if kind < 0.4:
            rows.append((TEMPLATE.format(gold), gold, True))
        elif kind < 0.7:
            rows.append((TEMPLATE.format(reformat(gold)), gold, True))
        else:
            rows.append((TEMPLATE.format(wrong(gold, golds, rng)), gold, False))
    return rows


def math_verify_checker() -> Callable[[str, str], bool] | None:
    try:
        from math_verify import parse, verify
    except ImportError:
        return None

    def check(response: str, gold: str) -> bool:
        try:
            return bool(verify(parse("\\boxed{" + gold + "}"), parse(response)))
        except Exception:  # a reference that crashes on a row simply scores it wrong
            return False

    return check


def latencies_ms(check: Callable[[str, str], bool], rows: list[tuple[str, str, bool]]) -> tuple[list[float], list[bool]]:
    times, verdicts = [], []
    for response, gold, _ in rows:
        start = time.perf_counter()
        verdicts.append(check(response, gold))
        times.append((time.perf_counter() - start) * 1000)
    return times, verdicts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(verdicts: list[bool], rows: list[tuple[str, str, bool]], times_ms: list[float], cases_per_s: float) -> dict:
    return {
        "realistic_accuracy": round(sum(v == row[2] for v, row in zip(verdicts, rows)) / len(rows), 4),
        "cases_per_s": round(cases_per_s, 1),
        "p50_ms": round(percentile(times_ms, 0.50), 3),
        "p99_ms": round(percentile(times_ms, 0.99), 3),
        "max_ms": round(max(times_ms), 3),
    }


def real_solutions() -> list[tuple[str, str, str]]:
    """(set, worked solution, its own gold answer) for every row of MATH-500, Minerva and GSM8K; GSM8K's
    `<<48/2=24>>` calculator marks are dropped, they are no part of the written solution."""
    rows = [("math500", row["solution"], row["answer"]) for row in read_jsonl(EVAL / "math500.jsonl")]
    rows += [("minerva_math", row["solution"], extract_answer(row["solution"], "strict"))
             for row in read_jsonl(EVAL / "minerva_math.jsonl")]
    rows += [("gsm8k", re.sub(r"<<[^<>]*>>", "", row["answer"]), row["answer"].split("#### ")[-1].strip())
             for row in read_jsonl(EVAL / "gsm8k.jsonl")]
    return rows


def grade_cases(name: str, cases: list[dict], reference: Callable[[str, str], bool] | None, timeout: float) -> dict:
    """Print and return accuracy per category, false accepts and disagreements on one case file."""
    ours = [bool(s) for s in score_batch([c["response"] for c in cases], [c["gold"] for c in cases], timeout=timeout)]
    theirs = [reference(c["response"], c["gold"]) for c in cases] if reference else None
    per_category: dict[str, dict] = {}
    for i, case in enumerate(cases):
        entry = per_category.setdefault(case["category"], {"n": 0, "ours": 0, "math_verify": 0})
        entry["n"] += 1
        entry["ours"] += ours[i] == case["expected"]
        entry["math_verify"] += bool(theirs) and theirs[i] == case["expected"]
    print(f"\n{name}\n{'category':<20}{'n':>5}{'ours':>8}{'math-verify':>13}")
    for category, entry in sorted(per_category.items()):
        entry["ours"] = round(entry["ours"] / entry["n"], 3)
        entry["math_verify"] = round(entry["math_verify"] / entry["n"], 3) if theirs else None
        print(f"{category:<20}{entry['n']:>5}{entry['ours']:>8.3f}{entry['math_verify'] or float('nan'):>13.3f}")

    def describe(i: int) -> dict:
        case = cases[i]
        return {"category": case["category"], "answer": extract_answer(case["response"]) or case["response"][-80:],
                "gold": case["gold"], "expected": case["expected"], "ours": ours[i]}

    false_accepts = {"ours": [describe(i) for i, c in enumerate(cases) if ours[i] and not c["expected"]],
                     "math_verify": [describe(i) for i, c in enumerate(cases) if theirs and theirs[i] and not c["expected"]]}
    for grader, found in false_accepts.items():
        for d in found:
            print(f"false accept ({grader}) [{d['category']}] answer={d['answer']!r} gold={d['gold']!r}")
    disagreements = [describe(i) | {"right": "ours" if ours[i] == c["expected"] else "math_verify"}
                     for i, c in enumerate(cases) if theirs and ours[i] != theirs[i]]
    for d in disagreements:
        print(f"disagree [{d['category']}] answer={d['answer']!r} gold={d['gold']!r} "
              f"expected={d['expected']} ours={d['ours']} -> {d['right']} right")
    result = {"n": len(cases), "ours": round(sum(o == c["expected"] for o, c in zip(ours, cases)) / len(cases), 4),
              "ours_false_accepts": len(false_accepts["ours"])}
    if theirs:
        result |= {"math_verify": round(sum(t == c["expected"] for t, c in zip(theirs, cases)) / len(cases), 4),
                   "math_verify_false_accepts": len(false_accepts["math_verify"]),
                   "agreement": round(sum(o == t for o, t in zip(ours, theirs)) / len(cases), 4)}
    print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in result.items()))
    return result | {"per_category": per_category, "false_accepts": false_accepts, "disagreements": disagreements}


def grade_real(reference: Callable[[str, str], bool] | None, timeout: float) -> dict:
    """The share of each eval set's worked solutions accepted against their own gold answers."""
    rows = real_solutions()
    ours = score_batch([r for _, r, _ in rows], [g for _, _, g in rows], timeout=timeout)
    theirs = [reference(r, g) for _, r, g in rows] if reference else None
    result = {}
    print(f"\nworked solutions against their own gold\n{'set':<20}{'n':>5}{'ours':>8}{'math-verify':>13}")
    for name in dict.fromkeys(name for name, _, _ in rows):
        index = [i for i, row in enumerate(rows) if row[0] == name]
        entry = {"n": len(index), "ours": round(sum(ours[i] for i in index) / len(index), 4)}
        entry["math_verify"] = round(sum(theirs[i] for i in index) / len(index), 4) if theirs else None
        result[name] = entry
        print(f"{name:<20}{entry['n']:>5}{entry['ours']:>8.3f}{entry['math_verify'] or float('nan'):>13.3f}")
    return result


def cases_per_s(rows: list[tuple[str, str, bool]], timeout: float, mode: str) -> tuple[float, list[float]]:
    start = time.perf_counter()
    verdicts = []
    for k in range(0, len(rows), BATCH):
        chunk = rows[k : k + BATCH]
        verdicts += score_batch([r for r, _, _ in chunk], [g for _, g, _ in chunk], timeout=timeout, mode=mode)
    return len(rows) / (time.perf_counter() - start), verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="realistic responses for the throughput run")
    parser.add_argument("--workers", type=int, default=4, help="verifier worker processes")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-check timeout, seconds")
    args = parser.parse_args()
    configure(args.workers)
    reference = math_verify_checker()
    if reference is None:
        print("math-verify is not installed (.venv/bin/pip install math-verify): reporting our figures only")

    case_files = {name: grade_cases(name, read_jsonl(path), reference, args.timeout) for name, path in CASE_FILES.items()}
    real = grade_real(reference, args.timeout)

    cases_per_s(realistic_rows(args.n, seed=2), args.timeout, "lenient")  # start the pool outside the timings
    rows = realistic_rows(args.n)
    ours_rate, batch_verdicts = cases_per_s(rows, args.timeout, "lenient")
    strict_rate, _ = cases_per_s(realistic_rows(args.n, seed=1), args.timeout, "strict")  # other rows: no cache hits
    ours_times, _ = latencies_ms(lambda r, g: is_correct(r, g, timeout=args.timeout), rows)
    result = {"ours": {"accuracy": case_files["cases"]["ours"],
                       **summary([bool(v) for v in batch_verdicts], rows, ours_times, ours_rate),
                       "strict_cases_per_s": round(strict_rate, 1),
                       **{k: v for k, v in verifier_stats().items() if k in ("timeouts", "rejected")}}}
    if reference:
        mv_times, mv_verdicts = latencies_ms(reference, rows)
        result["math_verify"] = {"accuracy": case_files["cases"]["math_verify"],
                                 **summary(mv_verdicts, rows, mv_times, len(rows) / (sum(mv_times) / 1000))}
        result["realistic_agreement"] = round(
            sum(bool(o) == t for o, t in zip(batch_verdicts, mv_verdicts)) / len(rows), 4)
    result |= {"n_realistic": len(rows), "workers": args.workers, "case_files": case_files, "real_solutions": real}
    print(f"\n{'':<12}{'case acc':>10}{'real acc':>10}{'cases/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name in ("ours", "math_verify"):
        if name in result:
            r = result[name]
            print(f"{name:<12}{r['accuracy']:>10.4f}{r['realistic_accuracy']:>10.4f}{r['cases_per_s']:>10.1f}"
                  f"{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['max_ms']:>9.1f}")
    print(f"ours, strict mode: {strict_rate:.1f} cases/s")
    shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
