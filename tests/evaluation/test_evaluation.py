"""Benchmark loaders (real files and synthetic ones), scoring, resume and data-parallel sharding, with a
scripted fake ChatModel."""

from __future__ import annotations

import json
import sys
import threading
import types
from pathlib import Path

import pytest
from PIL import Image

from spark.errors import DataError
from spark.evaluation import EvalConfig, Shard, evaluate, parse_spec, split_specs
from spark.evaluation.loaders import BUILTIN, Benchmark, canonical_number, load_rb2, load_vlrb, vlrb_subset
from spark.evaluation.scoring import best_of_n_correct, markdown_table, pairwise_correct, precision_recall_f1
from spark.tasks.prompts import (
    math_prompt,
    pointwise_prompt,
    rating_prompt,
    reflection_prompt,
    vl_rewardbench_prompt,
)
from tests.evaluation.test_tts import ScriptedModel, boxed

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "eval"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- loaders, real files


@pytest.mark.parametrize("name, rows, first_gold", [
    ("gsm8k", 1319, "18"), ("math500", 500, "\\left( 3, \\frac{\\pi}{2} \\right)"), ("aime24", 30, "204"),
    ("amc23", 40, "27"), ("minerva_math", 272, "1.6"), ("mmlu_stem", 3018, "C"),
])
def test_builtin_loaders_parse_every_row(name, rows, first_gold):
    bench = parse_spec(name, DATA_DIR)
    assert (bench.name, bench.kind, len(bench.items)) == (name, "math", rows)
    first = bench.items[0]
    assert first.gold == first_gold
    assert first.prompt == math_prompt(first.meta["question"]) and first.meta["index"] == 0
    assert all(s.gold.strip() and s.images == [] for s in bench.items)
    assert [s.meta["index"] for s in bench.items] == list(range(rows))


def test_gold_normalisation_on_real_rows():
    gsm8k = parse_spec("gsm8k", DATA_DIR).items
    assert all("," not in s.gold and "#" not in s.gold for s in gsm8k)
    assert all(s.gold.lstrip("-").isdigit() for s in parse_spec("amc23", DATA_DIR).items)  # 27.0 -> 27
    assert parse_spec("aime24", DATA_DIR).items[7].gold == "25"  # '025'
    mmlu = parse_spec("mmlu_stem", DATA_DIR, limit=50).items
    assert len(mmlu) == 50 and {s.gold for s in mmlu} <= set("ABCD")
    raw = json.loads((DATA_DIR / "mmlu_stem.jsonl").read_text().splitlines()[1])
    assert mmlu[1].gold == "ABCD"[raw["answer"]]
    assert f"(D) {raw['choices'][3]}" in mmlu[1].prompt


def test_canonical_number():
    assert [canonical_number(x) for x in ["27.0", "025", "-3", "0.5", "\\frac{1}{2}", " 12 "]] == [
        "27", "25", "-3", "0.5", "\\frac{1}{2}", "12"]


# ----------------------------------------------------------------------------- loaders, synthetic files


@pytest.fixture
def vl_file(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    rows = [
        {"q": "Which shape?", "a": "circle", "img": "img/a.png", "opts": ["square", "circle"]},
        {"q": "How many?", "a": 3.0, "img": "img/a.png", "opts": None},
        {"q": "Pick one", "a": 0, "img": None, "opts": ["x", "y", "z"]},
        {"q": "Letter?", "a": "(B)", "img": "img/a.png", "opts": ["x", "y"]},
    ]
    return write_jsonl(tmp_path / "vl.jsonl", rows)


def test_generic_loader_with_field_mapping(vl_file):
    [spec] = split_specs(f"file:{vl_file}:question=q,answer=a,image=img,choices=opts,name=mini")
    bench = parse_spec(spec, "unused")
    assert (bench.name, bench.kind) == ("mini", "math")
    assert [s.gold for s in bench.items] == ["B", "3", "A", "B"]
    assert bench.items[0].images == [str(vl_file.parent / "img" / "a.png")] and bench.items[2].images == []
    assert bench.items[0].meta["question"].startswith("Which shape?\n(A) square\n(B) circle\n")
    assert bench.items[1].meta["question"] == "How many?"


def test_a_file_reads_an_image_column_by_default_as_training_does(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    rows = [{"question": "Which shape?", "answer": "circle", "image": "img/a.png"},
            {"question": "How many?", "answer": "3", "image": None}, {"question": "Text only?", "answer": "yes"}]
    bench = parse_spec(f"file:{write_jsonl(tmp_path / 'mixed.jsonl', rows)}", "unused")
    assert [s.images for s in bench.items] == [[str(tmp_path / "img" / "a.png")], [], []]
    # A mapped image field must be in every row: a misspelt mapping is not a silent text-only run.
    with pytest.raises(DataError, match=r"mixed\.jsonl, line 1, field 'img': missing"):
        parse_spec(f"file:{tmp_path / 'mixed.jsonl'}:image=img", "unused")


@pytest.mark.parametrize("row, field, message", [
    ({"q": "x", "img": None, "opts": None}, "a", "missing"),
    ({"q": "x", "a": "1", "img": "img/none.png", "opts": None}, "img", "image file not found"),
    ({"q": "x", "a": "w", "img": None, "opts": ["u", "v"]}, "a", "neither a choice letter"),
    ({"q": "x", "a": 5, "img": None, "opts": ["u", "v"]}, "a", "out of range"),
    ({"q": "x", "a": "1", "opts": None}, "img", "missing"),
    ({"q": "", "a": "1", "img": None, "opts": None}, "q", "empty"),
])
def test_generic_loader_bad_rows_name_file_line_field(vl_file, row, field, message):
    path = write_jsonl(vl_file, [{"q": "ok", "a": "1", "img": None, "opts": None}, row])
    with pytest.raises(DataError, match=message) as error:
        parse_spec(f"file:{path}:question=q,answer=a,image=img,choices=opts", "unused")
    assert (error.value.path, error.value.line, error.value.field) == (str(path), 2, field)


def test_reward_loaders(tmp_path):
    rb2 = write_jsonl(tmp_path / "rb2.jsonl", [
        {"id": "7", "prompt": "p", "chosen": ["good"], "rejected": ["b1", "b2", "b3"], "subset": "Math"},
        {"id": "8", "prompt": "p", "chosen": ["g1", "g2"], "rejected": ["b"], "subset": "Ties"},
    ])
    items = load_rb2(rb2)
    assert (items[0].chosen, items[0].rejected, items[1].subset) == (["good"], ["b1", "b2", "b3"], "Ties")
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    vlrb = write_jsonl(tmp_path / "vlrb.jsonl", [
        {"id": "mathverse_12", "query": "q", "response": ["r0", "r1"], "human_ranking": [1, 0], "image": "i.png"},
        {"id": "RLAIF-V_3", "query": "q", "response": ["r0", "r1"], "human_ranking": [0, 1], "image": None},
        {"id": "x", "query": "q", "response": ["r0", "r1"], "human_ranking": [0, 1], "image": None, "subset": "s"},
    ])
    pairs = load_vlrb(vlrb)
    assert [(p.better, p.subset) for p in pairs] == [(1, "reasoning"), (0, "hallucination"), (0, "s")]
    assert pairs[0].images == [str(tmp_path / "i.png")]
    assert vlrb_subset("wildvision-battle_1") == "general" and vlrb_subset("vlfeedback_9") == "general"


@pytest.mark.parametrize("loader, row, field", [
    (load_rb2, {"prompt": "p", "chosen": "good", "rejected": ["b"], "subset": "s"}, "chosen"),
    (load_rb2, {"prompt": "p", "chosen": ["g"], "rejected": [], "subset": "s"}, "rejected"),
    (load_rb2, {"prompt": "p", "chosen": ["g"], "rejected": ["b"]}, "subset"),
    (load_vlrb, {"id": "a", "query": "q", "response": ["r"], "human_ranking": [0, 1], "image": None}, "response"),
    (load_vlrb, {"id": "a", "query": "q", "response": ["r", "s"], "human_ranking": [0, 0], "image": None},
     "human_ranking"),
])
def test_reward_loaders_bad_rows(tmp_path, loader, row, field):
    path = write_jsonl(tmp_path / "bad.jsonl", ["", row])
    with pytest.raises(DataError) as error:
        loader(path)
    assert (error.value.line, error.value.field) == (2, field)


def test_specs():
    assert split_specs("gsm8k,file:a.jsonl:question=q,answer=a,rb2:r.jsonl") == [
        "gsm8k", "file:a.jsonl:question=q,answer=a", "rb2:r.jsonl"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        parse_spec("mathvista", "unused")
    with pytest.raises(ValueError, match="unknown keys"):
        parse_spec("rb2:r.jsonl:question=q", "unused")
    assert set(BUILTIN) == {"gsm8k", "math500", "aime24", "amc23", "minerva_math", "mmlu_stem"}


# ----------------------------------------------------------------------------- scoring


def test_best_of_n_ties_count_as_wrong():
    assert best_of_n_correct([8.0], [7.0, 3.0, 1.0])
    assert not best_of_n_correct([7.0], [7.0, 3.0, 1.0])  # a tie with a rejected response
    assert not best_of_n_correct([6.0], [7.0, 3.0, 1.0])
    assert best_of_n_correct([8.0], [None, 3.0, 1.0])  # an unreadable rejected rating loses
    assert not best_of_n_correct([None], [1.0, 1.0, 1.0])
    assert not best_of_n_correct([9.0, 5.0], [6.0])  # several chosen: each must beat every rejected


def test_pairwise_needs_both_orders():
    assert pairwise_correct("A", "B", better=0) and pairwise_correct("B", "A", better=1)
    assert not pairwise_correct("A", "A", better=0)  # always "Answer 1": position bias scores nothing
    assert not pairwise_correct("B", "B", better=1)
    assert not pairwise_correct(None, "B", better=0)


def test_precision_recall_f1_by_hand():
    metrics = precision_recall_f1([True, True, True, False, False, False], [True, False, False, True, False, False])
    assert metrics["precision"] == pytest.approx(1 / 3)  # TP 1 of 3 predicted
    assert metrics["recall"] == pytest.approx(1 / 2)  # TP 1 of 2 actual
    assert metrics["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # 0.4
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert precision_recall_f1([False], [False])["f1"] == 0.0


def test_markdown_table():
    table = markdown_table({"gsm8k": {"accuracy": 0.5}, "rb2": {"accuracy": 0.25, "math_accuracy": 0.75}}, "ckpt")
    assert table.splitlines() == [
        "| Model | gsm8k | rb2 | rb2-math | Avg |", "|---|---|---|---|---|", "| ckpt | 50.0 | 25.0 | 75.0 | 50.0 |"]


# ----------------------------------------------------------------------------- runs with a scripted model

N = 10
CORRECT = {2, 4, 6, 8}  # rows 0 and 5 have no answer, the odd rows a wrong one
JUDGED_YES = {1, 2, 4}


def math_bench(tmp_path: Path, limit: int | None = None) -> Benchmark:
    rows = [{"question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(N)]
    return parse_spec(f"file:{write_jsonl(tmp_path / 'toy.jsonl', rows)}", "unused", limit=limit)


def reply(i: int) -> str:
    if i % 5 == 0:
        return "I do not know."
    return boxed(str(i + 1)) if i in CORRECT else boxed(str(i + 2))


def math_model(rows=range(N)) -> ScriptedModel:
    replies = {}
    for i in rows:
        question = f"What is {i} + 1?"
        replies[math_prompt(question)] = reply(i)
        replies[pointwise_prompt(question, reply(i), cot=True)] = "\\boxed{Yes}" if i in JUDGED_YES else "\\boxed{No}"
    return ScriptedModel(replies)


def test_math_accuracy_unanswered_and_self_judgment(tmp_path):
    cfg = EvalConfig(judge=True, batch_size=4)
    summary = evaluate(math_model(), [math_bench(tmp_path)], cfg, out_dir=tmp_path / "out", model_name="m")
    toy = summary["toy"]
    assert (toy["accuracy"], toy["n"], toy["unanswered"]) == (pytest.approx(0.4), 10, 2)
    judged = toy["self_judgment"]  # judged Yes {1, 2, 4}, correct {2, 4, 6, 8}: TP 2
    assert (judged["precision"], judged["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 4))
    assert judged["f1"] == pytest.approx(4 / 7) and judged["n"] == 10
    out = tmp_path / "out"
    assert json.loads((out / "summary.json").read_text()) == {"preset": "ours", "mean_accuracy": pytest.approx(0.4),
                                                              "benchmarks": summary}
    assert (out / "results.md").read_text().splitlines()[-1] == "| m | 40.0 | 40.0 |"
    records = [json.loads(line) for line in (out / "toy.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(N))
    answer_turn = records[2]["traces"][0]["turns"][0]
    assert (answer_turn["extracted"], answer_turn["correct"], records[2]["gold"]) == ("3", True, "3")


def test_mean_and_pass_at_n(tmp_path):
    rows = [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}]
    bench = parse_spec(f"file:{write_jsonl(tmp_path / 'two.jsonl', rows)}", "unused")
    model = ScriptedModel({math_prompt("a"): [boxed("1"), boxed("0")], math_prompt("b"): [boxed("0"), boxed("0")]})
    summary = evaluate(model, [bench], EvalConfig(n=2))["two"]
    assert (summary["mean@2"], summary["pass@2"], summary["accuracy"]) == (0.25, 0.5, 0.25)


def test_resume_generates_only_missing_rows(tmp_path):
    out, cfg = tmp_path / "out", EvalConfig(batch_size=3)
    evaluate(math_model(), [math_bench(tmp_path, limit=6)], cfg, out_dir=out)
    later = math_model(rows=range(6, N))  # knows only the rows not done: any other prompt is a KeyError
    resumed = evaluate(later, [math_bench(tmp_path)], cfg, out_dir=out)
    assert sorted(p for call in later.calls for p in call) == sorted(
        math_prompt(f"What is {i} + 1?") for i in range(6, N))
    fresh = evaluate(math_model(), [math_bench(tmp_path)], cfg, out_dir=tmp_path / "fresh")
    assert resumed == fresh
    assert len((out / "toy.jsonl").read_text().splitlines()) == N
    with pytest.raises(ValueError, match="other settings"):
        evaluate(math_model(), [math_bench(tmp_path)], EvalConfig(judge=True), out_dir=out)


class ThreadRanks:
    """In-process stand-in for all_gather_object: ranks are threads meeting at a barrier."""

    def __init__(self, world_size: int):
        self.slots: list = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=30)

    def gather_for(self, rank: int):
        def gather(obj):
            self.slots[rank] = obj
            self.barrier.wait()
            gathered = list(self.slots)
            self.barrier.wait()  # nobody overwrites a slot before everyone has read it
            return gathered
        return gather


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_run_matches_one_shard(tmp_path, world_size):
    cfg, bench = EvalConfig(judge=True, batch_size=2), math_bench(tmp_path)
    single = evaluate(math_model(), [bench], cfg, out_dir=tmp_path / "one")
    model, ranks, results = math_model(), ThreadRanks(world_size), [None] * world_size

    def run(rank: int):
        try:
            shard = Shard(rank, world_size, ranks.gather_for(rank))
            results[rank] = evaluate(model, [bench], cfg, out_dir=tmp_path / "many", shard=shard)
        except Exception as e:  # surfaced below, in the test's thread
            results[rank] = e
            ranks.barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result in results:
        if isinstance(result, Exception):
            raise result
    assert all(result == single for result in results)
    assert json.loads((tmp_path / "many" / "summary.json").read_text())["benchmarks"] == single
    lines = [json.loads(line) for line in (tmp_path / "many" / "toy.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(N))
    assert sum(len(call) for call in model.calls) == 2 * N  # every row answered and judged once


def test_reward_benchmarks_with_the_model_as_judge(tmp_path):
    rb2 = Benchmark("rb2", "rb2", load_rb2(write_jsonl(tmp_path / "rb2.jsonl", [
        {"id": "0", "prompt": "p0", "chosen": ["good"], "rejected": ["bad", "bad2", "bad3"], "subset": "Math"},
        {"id": "1", "prompt": "p1", "chosen": ["good"], "rejected": ["bad", "tie", "bad3"], "subset": "Math"},
        {"id": "2", "prompt": "p2", "chosen": ["good"], "rejected": ["bad", "bad2", "bad3"], "subset": "Focus"},
    ])))
    ratings = {"good": "\\boxed{8}", "bad": "\\boxed{3}", "bad2": "\\boxed{2}", "bad3": "no rating", "tie": "\\boxed{8}"}
    replies = {rating_prompt(f"p{i}", text): rating for i in range(3) for text, rating in ratings.items()}

    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    vlrb = Benchmark("vlrb", "vlrb", load_vlrb(write_jsonl(tmp_path / "vlrb.jsonl", [
        {"id": "mathverse_0", "query": "q0", "response": ["right", "wrong"], "human_ranking": [0, 1], "image": "i.png"},
        {"id": "mathverse_1", "query": "q1", "response": ["wrong", "right"], "human_ranking": [1, 0], "image": None},
        {"id": "povid_2", "query": "q2", "response": ["first", "second"], "human_ranking": [1, 0], "image": None},
    ])))
    for q, a, b in [("q0", "right", "wrong"), ("q1", "wrong", "right")]:  # a judge that finds the right one
        replies[vl_rewardbench_prompt(q, a, b)] = f"Overall Judgment: Answer {1 + (a == 'wrong')} is better"
        replies[vl_rewardbench_prompt(q, b, a)] = f"Overall Judgment: Answer {1 + (b == 'wrong')} is better"
    for a, b in [("first", "second"), ("second", "first")]:  # position bias: always Answer 1
        replies[vl_rewardbench_prompt("q2", a, b)] = "Overall Judgment: Answer 1 is better"

    summary = evaluate(ScriptedModel(replies), [rb2, vlrb], EvalConfig())
    assert summary["rb2"]["accuracy"] == pytest.approx(2 / 3)  # row 1: the chosen one ties with a rejected one
    assert summary["rb2"]["subsets"] == {"Focus": {"accuracy": 1.0, "n": 1}, "Math": {"accuracy": 0.5, "n": 2}}
    assert (summary["rb2"]["math_accuracy"], summary["rb2"]["unparsed"]) == (0.5, 3)
    assert summary["vlrb"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["vlrb"]["subsets"] == {"hallucination": {"accuracy": 0.0, "n": 1},
                                          "reasoning": {"accuracy": 1.0, "n": 2}}
    assert summary["vlrb"]["math_accuracy"] == 1.0


def test_cli_main_end_to_end_with_a_fake_chat_module(tmp_path, monkeypatch, capsys):
    """evaluate.main(argv): specs, the process group of one, loading via spark.generation.chat, outputs, table."""
    import evaluate

    group_of_one = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    for key in group_of_one:  # set first, so that monkeypatch restores their absence after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    loaded = []
    fake_chat = types.ModuleType("spark.generation.chat")
    fake_chat.load_chat_model = lambda path, device, dtype, **engine: loaded.append((path, device, dtype)) or math_model()
    monkeypatch.setitem(sys.modules, "spark.generation.chat", fake_chat)
    toy = write_jsonl(tmp_path / "toy.jsonl", [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(N)])
    summary = evaluate.main(["--model", str(tmp_path / "ckpt"), "--bench", f"file:{toy}:question=q,answer=a",
                             "--limit", "5", "--out", str(tmp_path / "out"), "--judge"])
    assert loaded[0][:2] == (str(tmp_path / "ckpt"), "cpu")
    assert (summary["toy"]["n"], summary["toy"]["accuracy"]) == (5, pytest.approx(2 / 5))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["benchmarks"] == summary
    assert "| ckpt | 40.0 | 40.0 |" in capsys.readouterr().out
    # --tts prints each round: rows 0 and 3 of the 5 are judged wrong, and both reflections fix them.
    model = math_model()
    for i in range(N):
        model.replies[reflection_prompt(f"What is {i} + 1?", reply(i), cot=True)] = boxed(str(i + 1))
    fake_chat.load_chat_model = lambda path, device, dtype, **engine: model
    for key in group_of_one:  # a new process group of one, on a new port
        monkeypatch.delenv(key)
    evaluate.main(["--model", str(tmp_path / "ckpt"), "--bench", f"file:{toy}:question=q,answer=a", "--limit", "5",
                   "--tts", "--max-rounds", "1"])
    assert "\n".join(["toy, test-time scaling by round:",
                      "round  accuracy  judged  judged wrong  fixed  broke  verdict prob",
                      "    0     40.0%       -             -      -      -             -",
                      "    1     80.0%       5             2      2      0             -"]) in capsys.readouterr().out
