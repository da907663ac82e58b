"""Datasets in the schemas their hub repositories ship: tiny Parquet files with the same column names and
types (images embedded as the `datasets` Image feature's {bytes, path} struct, PNGs written by pillow),
through the training loader (ViRL39K) and the evaluation loaders (MathVista & co., RewardBench2,
VL-RewardBench)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from spark.data.rows import load_questions
from spark.errors import DataError
from spark.evaluation import parse_spec
from spark.evaluation.loaders import load_rb2, load_vlrb, option_letters
from spark.evaluation.scoring import rounds_to
from spark.tasks.prompts import math_prompt

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Image() in Parquet


def png(seed: int, height: int = 30, width: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def embedded(seed: int) -> dict:
    return {"bytes": png(seed), "path": f"{seed}.png"}


def write(path, rows: list[dict], schema: pa.Schema):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


# ----------------------------------------------------------------------------- ViRL39K (training)

VIRL39K = pa.schema([("answer", pa.string()), ("category", pa.string()), ("qid", pa.string()),
                     ("images", pa.list_(IMAGE)), ("problem", pa.string()), ("id", pa.int64())])


def virl_row(i: int, problem: str, images: list[dict], answer: str = "4") -> dict:
    return {"answer": answer, "category": "(GradeSchool) Geometric", "qid": f"q{i}", "images": images,
            "problem": problem, "id": i}


@pytest.fixture
def virl_dir(tmp_path):
    folder = tmp_path / "ViRL39K"
    folder.mkdir()
    write(folder / "train-00000-of-00002.parquet", [
        virl_row(0, "<image>What is 2 + 2?", [embedded(0)]),
        virl_row(1, "<image>Left.\n<image>Right. Which is larger?", [embedded(1), embedded(2)], "B"),
    ], VIRL39K)
    write(folder / "train-00001-of-00002.parquet", [virl_row(2, "No image: 1 + 1?", [], "2")], VIRL39K)
    return folder


def test_virl39k_parquet_by_glob(virl_dir):
    samples = load_questions([str(virl_dir / "*.parquet")], question_field="problem", answer_field="answer",
                             image_field="images", prompt=math_prompt)
    assert [s.gold for s in samples] == ["4", "B", "2"]
    assert [len(s.images) for s in samples] == [1, 2, 0]
    assert samples[1].images == [png(1), png(2)]  # embedded bytes, in order
    assert samples[1].meta["question"] == "<image>Left.\n<image>Right. Which is larger?"
    assert samples[2].meta["source"].endswith("train-00001-of-00002.parquet:1")


def test_virl39k_bad_rows_fail_at_load(virl_dir):
    def load(rows):
        path = write(virl_dir / "bad.parquet", rows, VIRL39K)
        with pytest.raises(DataError) as error:
            load_questions([str(path)], question_field="problem", image_field="images")
        return error.value

    truncated = {"bytes": png(3)[:-50], "path": "3.png"}
    error = load([virl_row(0, "<image>ok", [embedded(0)]), virl_row(1, "<image><image>x", [embedded(1), truncated])])
    assert (error.line, error.field) == (2, "images") and "image 2 of 2" in str(error) and "decoded" in str(error)
    error = load([virl_row(0, "<image><image>two marks", [embedded(0)])])
    assert (error.line, error.field) == (1, "problem") and "2 <image> placeholders for 1 images" in str(error)
    error = load([virl_row(0, "fine", [embedded(0)]), virl_row(1, "x", [embedded(1)], answer=None)])
    assert (error.line, error.field) == (2, "answer") and "missing" in str(error)
    with pytest.raises(DataError, match="no file matches"):
        load_questions([str(virl_dir / "nothing-*.parquet")])


# ----------------------------------------------------------------------------- math benchmarks

MATHVISTA = pa.schema([
    ("pid", pa.string()), ("question", pa.string()), ("image", pa.string()), ("decoded_image", IMAGE),
    ("choices", pa.list_(pa.string())), ("unit", pa.string()), ("precision", pa.float64()),
    ("answer", pa.string()), ("question_type", pa.string()), ("answer_type", pa.string()),
    ("metadata", pa.struct([("category", pa.string()), ("context", pa.string()), ("grade", pa.string()),
                            ("img_height", pa.int64()), ("img_width", pa.int64()), ("language", pa.string()),
                            ("skills", pa.list_(pa.string())), ("source", pa.string()), ("split", pa.string()),
                            ("task", pa.string())])),
    ("query", pa.string()),
])


def mathvista_row(pid, question_type, answer_type, answer, choices=None, precision=None, unit=None):
    return {"pid": pid, "question": f"question {pid}", "image": f"images/{pid}.jpg", "decoded_image": embedded(int(pid)),
            "choices": choices, "unit": unit, "precision": precision, "answer": answer,
            "question_type": question_type, "answer_type": answer_type,
            "metadata": {"category": "math-targeted-vqa", "context": "geometry diagram", "grade": "high school",
                         "img_height": 30, "img_width": 40, "language": "english", "skills": ["algebraic reasoning"],
                         "source": "Geometry3K", "split": "testmini", "task": "geometry problem solving"},
            "query": f"Hint: ... at the end.\nQuestion: question {pid}"}


def test_mathvista_testmini(tmp_path):
    path = write(tmp_path / "testmini-00000-of-00001.parquet", [
        mathvista_row("1", "multi_choice", "text", "5", choices=["3", "5", "7"]),
        mathvista_row("2", "free_form", "integer", "025"),
        mathvista_row("3", "free_form", "float", "1.5", precision=2.0, unit="cm"),
        mathvista_row("4", "free_form", "list", "[1, 2]"),
    ], MATHVISTA)
    bench = parse_spec(f"mathvista:{tmp_path}/testmini-*.parquet", "unused")
    assert (bench.name, bench.kind) == ("mathvista", "math")
    assert [s.gold for s in bench.items] == ["B", "25", "1.50", "[1, 2]"]
    assert bench.items[2].meta["precision"] == 2 and "precision" not in bench.items[1].meta
    assert bench.items[0].prompt == math_prompt("Hint: ... at the end.\nQuestion: question 1")
    assert [s.images for s in bench.items] == [[png(i)] for i in range(1, 5)]
    assert parse_spec(f"mathvista:{path}:name=mv", "unused", limit=2).name == "mv"
    assert rounds_to("1.456", "1.46", 2) and not rounds_to("1.44", "1.46", 2) and not rounds_to(None, "1", 0)


def test_mathvista_bad_rows(tmp_path):
    row = mathvista_row("1", "multi_choice", "text", "9", choices=["3", "5"])
    with pytest.raises(DataError, match="neither a choice letter") as error:
        parse_spec(f"mathvista:{write(tmp_path / 'a.parquet', [row], MATHVISTA)}", "unused")
    assert (error.value.line, error.value.field) == (1, "answer")
    row = mathvista_row("1", "free_form", "float", "1.5")
    with pytest.raises(DataError, match="number of decimals") as error:
        parse_spec(f"mathvista:{write(tmp_path / 'b.parquet', [row], MATHVISTA)}", "unused")
    assert error.value.field == "precision"
    row = mathvista_row("1", "free_form", "integer", "3") | {"decoded_image": {"bytes": b"\x89PNG broken", "path": "x"}}
    with pytest.raises(DataError, match="cannot be decoded") as error:
        parse_spec(f"mathvista:{write(tmp_path / 'c.parquet', [row], MATHVISTA)}", "unused")
    assert (error.value.path, error.value.line, error.value.field) == (str(tmp_path / "c.parquet"), 1, "decoded_image")


MATHVERSE = pa.schema([
    ("sample_index", pa.string()), ("problem_index", pa.string()), ("problem_version", pa.string()),
    ("question", pa.string()), ("image", IMAGE), ("answer", pa.string()), ("question_type", pa.string()),
    ("metadata", pa.struct([("split", pa.string()), ("source", pa.string()), ("subject", pa.string()),
                            ("subfield", pa.string())])),
    ("query_wo", pa.string()), ("query_cot", pa.string()), ("question_for_eval", pa.string()),
])
MATHVISION = pa.schema([("id", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())),
                        ("image", pa.string()), ("decoded_image", IMAGE), ("answer", pa.string()),
                        ("solution", pa.string()), ("level", pa.int64()), ("subject", pa.string())])
WEMATH = pa.schema([("ID", pa.string()), ("split", pa.string()), ("knowledge concept", pa.string()),
                    ("question", pa.string()), ("option", pa.string()), ("answer", pa.string()),
                    ("image_path", IMAGE), ("key", pa.string()), ("question number", pa.int64()),
                    ("knowledge concept description", pa.string())])
DYNAMATH = pa.schema([("id", pa.string()), ("question", pa.string()), ("image", pa.string()),
                      ("decoded_image", IMAGE), ("ground_truth", pa.string()), ("answer_type", pa.string()),
                      ("subject", pa.string()), ("knowledge_level", pa.string())])
LOGICVISTA = pa.schema([("question", pa.string()), ("image", IMAGE), ("answer", pa.string())])
MMK12 = pa.schema([("id", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                   ("subject", pa.string()), ("image", IMAGE)])


def mathverse_row(i, version, question, question_type, answer):
    return {"sample_index": str(i), "problem_index": str(i), "problem_version": version, "question": question,
            "image": embedded(i), "answer": answer, "question_type": question_type,
            "metadata": {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"},
            "query_wo": f"wo {i}", "query_cot": f"Please reason step by step. {question}", "question_for_eval": question}


@pytest.mark.parametrize("name, schema, rows, golds, first_question", [
    ("mathverse", MATHVERSE, [mathverse_row(0, "Text Dominant", "Angle? Choices: A:30 B:60", "multi-choice", "B"),
                              mathverse_row(1, "Vision Only", "", "free-form", "3.0")],
     ["B", "3"], "Please reason step by step. Angle? Choices: A:30 B:60"),
    ("mathvision", MATHVISION, [
        {"id": "1", "question": "<image1> Which?", "options": ["1", "2", "3", "4", "5"], "image": "images/1.jpg",
         "decoded_image": embedded(0), "answer": "C", "solution": None, "level": 2, "subject": "metric geometry"},
        {"id": "2", "question": "<image1> How many?", "options": [], "image": "images/2.jpg",
         "decoded_image": embedded(1), "answer": "12", "solution": None, "level": 3, "subject": "counting"}],
     ["C", "12"], "<image1> Which?\n(A) 1\n(B) 2\n(C) 3\n(D) 4\n(E) 5\nAnswer with the letter of the correct option."),
    ("wemath", WEMATH, [{"ID": "1", "split": "testmini", "knowledge concept": "Area", "question": "Area?",
                         "option": "A. 3; B. 4; C. 5", "answer": "B", "image_path": embedded(0), "key": "1",
                         "question number": 1, "knowledge concept description": "..."}],
     ["B"], "Area?\nA. 3; B. 4; C. 5\nAnswer with the letter of the correct option."),
    ("dynamath", DYNAMATH, [
        {"id": "1", "question": "Which? A: 1 B: 2", "image": "1.png", "decoded_image": embedded(0),
         "ground_truth": "(B)", "answer_type": "multiple choice", "subject": "algebra", "knowledge_level": "college"},
        {"id": "2", "question": "Slope?", "image": "2.png", "decoded_image": embedded(1), "ground_truth": "2.50",
         "answer_type": "float", "subject": "algebra", "knowledge_level": "college"}],
     ["B", "2.50"], "Which? A: 1 B: 2"),
    ("logicvista", LOGICVISTA, [{"question": "Which two? A B C D", "image": embedded(0), "answer": "C, A"}],
     ["A, C"], "Which two? A B C D"),
    ("mmk12", MMK12, [{"id": "1", "question": "Find x.", "answer": "4.0", "subject": "math", "image": embedded(0)}],
     ["4"], "Find x."),
])
def test_hub_math_loaders(tmp_path, name, schema, rows, golds, first_question):
    bench = parse_spec(f"{name}:{write(tmp_path / 'test.parquet', rows, schema)}", "unused")
    assert (bench.name, bench.kind) == (name, "math")
    assert [s.gold for s in bench.items] == golds
    assert bench.items[0].meta["question"] == first_question
    assert all(len(s.images) == 1 and s.images[0].startswith(b"\x89PNG") for s in bench.items)


def test_hub_loader_missing_field_and_image(tmp_path):
    rows = [{"id": "1", "question": "Find x.", "answer": None, "subject": "math", "image": embedded(0)}]
    with pytest.raises(DataError, match="missing") as error:
        parse_spec(f"mmk12:{write(tmp_path / 'a.parquet', rows, MMK12)}", "unused")
    assert (error.value.line, error.value.field) == (1, "answer")
    rows = [{"id": "1", "question": "Find x.", "answer": "1", "subject": "math", "image": None}]
    with pytest.raises(DataError, match="missing") as error:
        parse_spec(f"mmk12:{write(tmp_path / 'b.parquet', rows, MMK12)}", "unused")
    assert error.value.field == "image"


def test_option_letters():
    assert [option_letters(x) for x in ["B", "(b)", "C.", "C, A", "A and D"]] == ["B", "B", "C", "A, C", "A, D"]
    with pytest.raises(ValueError):
        option_letters("12")


# ----------------------------------------------------------------------------- reward benchmarks

VLRB = pa.schema([("id", pa.string()), ("query", pa.string()), ("response", pa.list_(pa.string())),
                  ("image", IMAGE), ("human_ranking", pa.list_(pa.int64())), ("models", pa.list_(pa.string())),
                  ("judge", pa.string()), ("rationale", pa.string()), ("query_source", pa.string()),
                  ("meta", pa.string()), ("ground_truth", pa.string())])
RB2 = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("chosen", pa.list_(pa.string())),
                 ("rejected", pa.list_(pa.string())), ("num_correct", pa.int64()), ("num_incorrect", pa.int64()),
                 ("total_completions", pa.int64()), ("models", pa.list_(pa.string())), ("subset", pa.string()),
                 ("additional_metadata", pa.struct([("category", pa.string()), ("valid", pa.float64())]))])


def vlrb_row(i, row_id, ranking):
    return {"id": row_id, "query": f"q{i}", "response": ["r0", "r1"], "image": embedded(i), "human_ranking": ranking,
            "models": ["m0", "m1"], "judge": "human", "rationale": "", "query_source": "x", "meta": "{}",
            "ground_truth": ""}


def test_reward_benchmarks_in_hub_parquet(tmp_path):
    path = write(tmp_path / "test-00000-of-00001.parquet",
                 [vlrb_row(0, "mathverse_1", [1, 0]), vlrb_row(1, "RLAIF-V_2", [0, 1])], VLRB)
    bench = parse_spec(f"vlrb:{path}", "unused")
    assert bench.name == "vlrb" and [(p.better, p.subset) for p in bench.items] == [(1, "reasoning"), (0, "hallucination")]
    assert bench.items[1].images == [png(1)]
    rb2 = write(tmp_path / "rb2.parquet", [
        {"id": "1", "prompt": "p", "chosen": ["good"], "rejected": ["b1", "b2", "b3"], "num_correct": 1,
         "num_incorrect": 3, "total_completions": 4, "models": ["a"], "subset": "Math",
         "additional_metadata": {"category": None, "valid": None}}], RB2)
    assert [(i.chosen, i.subset) for i in load_rb2(rb2)] == [(["good"], "Math")]
    broken = write(tmp_path / "broken.parquet", [vlrb_row(0, "a", [0, 1]) | {"image": {"bytes": b"xx", "path": None}}],
                   VLRB)
    with pytest.raises(DataError, match="cannot be decoded") as error:
        load_vlrb(broken)
    assert (error.value.line, error.value.field) == (1, "image")
