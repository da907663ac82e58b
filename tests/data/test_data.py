"""Training rows: every bad row is reported at once (DataErrors), each naming its file, line and field."""

import json

import pytest

from spark.data.rows import load_questions
from spark.errors import DataError, DataErrors


def test_every_bad_row_is_listed_up_to_twenty_then_counted(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [json.dumps({"question": f"q{i}", "answer": str(i)}) for i in range(30)]
    for i in range(0, 30, 4):
        rows[i] = json.dumps({"question": f"q{i}"})  # no answer
    for i in range(1, 30, 4):
        rows[i] = json.dumps({"question": "", "answer": "1"})
    rows[2] = "{not json"
    rows[6] = json.dumps(["a list"])
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataErrors) as error:
        load_questions([str(path)])
    errors = error.value.errors
    assert len(errors) == 8 + 8 + 2
    assert errors[:4] == [f"{path}, line 1, field 'answer': missing", f"{path}, line 2, field 'question': empty",
                          f"{path}, line 3: not valid JSON (Expecting property name enclosed in double quotes)",
                          f"{path}, line 5, field 'answer': missing"]
    assert f"{path}, line 7: expected a JSON object, got list" in errors
    message = str(error.value).splitlines()
    assert message[0] == "18 bad rows:" and len(message) == 1 + 18

    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"question": "q"}) + "\n" for _ in range(25)))
    with pytest.raises(DataErrors) as error:
        load_questions([str(many)])
    message = str(error.value).splitlines()
    assert message[0] == "25 bad rows:" and len(message) == 1 + 20 + 1
    assert message[20] == f"  {many}, line 20, field 'answer': missing" and message[-1] == "  ... and 5 more"


def test_one_bad_row_is_a_plain_data_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n" + json.dumps({"answer": "1"}) + "\n")
    with pytest.raises(DataError, match=rf"^{path}, line 2, field 'question': missing$"):
        load_questions([str(path)])


def test_judge_rows_are_rendered_with_the_pointwise_template(tmp_path):
    from spark.data.rows import load_judge_rows
    from spark.tasks.prompts import pointwise_prompt

    path = tmp_path / "judge.jsonl"
    path.write_text('{"question": "What is 2+2?", "answer": "4", "label": "Yes"}\n'
                    '{"question": "What is 2+2?", "answer": "2+2=5. \\\\boxed{5}", "label": "No", "cot": true}\n')
    rows = load_judge_rows([str(path)], render=pointwise_prompt)
    assert [(r.prompt, r.gold, r.task) for r in rows] == [
        (pointwise_prompt("What is 2+2?", "4"), "Yes", "pointwise"),
        (pointwise_prompt("What is 2+2?", "2+2=5. \\boxed{5}", cot=True), "No", "pointwise")]


# ----------------------------------------------------------------------------- the authors' chat rows

THEIR_SUFFIX = "\nPlease first conduct reasoning, and then answer the question. Repeat the final answer using a '\\boxed{}.'"


def chat(*parts, role="user") -> str:
    """A row's `message` as the authors' files hold it: the chat as a JSON string."""
    content = parts[0] if len(parts) == 1 and isinstance(parts[0], str) else list(parts)
    return json.dumps([{"role": role, "content": content}])


def image(path) -> dict:
    return {"type": "image", "image": str(path), "max_pixels": 1048576}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


@pytest.fixture
def pictures(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.new("RGB", (28, 28), (60 * i, 0, 0)).save(tmp_path / "images" / f"{i}.png")
    return tmp_path / "images"


def test_the_authors_chat_rows_load_as_the_same_rows_in_our_schema(tmp_path, pictures):
    from spark.tasks.prompts import MATH_SUFFIX, math_prompt

    absolute = str(pictures / "1.png")
    theirs = [
        {"message": chat(image("images/0.png"), text("What is 2 + 2?" + THEIR_SUFFIX)), "answer": "4"},
        {"message": chat("No image: 1 + 1?\n" + MATH_SUFFIX), "answer": "2"},  # text content, our suffix
        {"message": chat(text("Which is larger, "), image("file://" + absolute), text(" or 3?")), "answer": "3"},
        {"message": chat(image("images/0.png"), image(absolute), text("<image>Left, <image>right: same?")),
         "answer": "No"},
    ]
    ours = [
        {"question": "What is 2 + 2?", "answer": "4", "image": "images/0.png"},
        {"question": "No image: 1 + 1?", "answer": "2"},
        {"question": "Which is larger, <image> or 3?", "answer": "3", "image": absolute},
        {"question": "<image>Left, <image>right: same?", "answer": "No", "image": ["images/0.png", absolute]},
    ]
    (tmp_path / "theirs.json").write_text(json.dumps(theirs, indent=2))  # a JSON list
    (tmp_path / "theirs_lines.json").write_text("".join(json.dumps(row) + "\n" for row in theirs))  # JSON Lines
    (tmp_path / "ours.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ours))

    def load(name, **kwargs):
        samples = load_questions([str(tmp_path / name)], prompt=math_prompt, **kwargs)
        return [(s.prompt, s.gold, s.task, s.images, s.meta["question"]) for s in samples]

    expected = load("ours.jsonl")
    assert load("theirs.json", row_format="messages", question_field="message") == expected
    assert load("theirs_lines.json", row_format="messages", question_field="message") == expected
    first = str(pictures.resolve() / "0.png")
    assert [row[3] for row in expected] == [[first], [], [absolute], [first, absolute]]
    assert expected[0][0] == "What is 2 + 2?\n" + MATH_SUFFIX


@pytest.mark.parametrize("question, kept", [
    ("Q" + THEIR_SUFFIX, "Q"),  # the authors' training rows
    ("Q\nPlease first conduct reasoning, and then answer the question. Repeat the final answer using a '\\boxed{}'.",
     "Q"),  # their README's and evaluation's form, ours
    ("Q Please first conduct reasoning, and then answer the question. Repeat the final answer using a '\\boxed{}'.",
     "Q Please first conduct reasoning, and then answer the question. Repeat the final answer using a '\\boxed{}'."),
    ("Q" + THEIR_SUFFIX + " Thanks.", "Q" + THEIR_SUFFIX + " Thanks."),  # only at the end
])
def test_only_the_exact_boxed_instruction_at_the_end_is_removed(question, kept):
    from spark.data.messages import chat_question

    assert chat_question(chat(text(question)), path="f.json", line=1, key="message") == (kept, [])


def test_malformed_chat_rows_name_file_row_and_field(tmp_path, pictures):
    rows = [
        {"answer": "1"},
        {"message": "[{oops", "answer": "1"},
        {"message": json.dumps({"role": "user", "content": "Q"}), "answer": "1"},
        {"message": json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]),
         "answer": "1"},
        {"message": chat(text("Q"), {"type": "image_url", "image_url": {"url": "images/0.png"}}), "answer": "1"},
        {"message": chat(image("images/missing.png"), text("Q")), "answer": "1"},
        {"message": chat(image("images/0.png"), text(THEIR_SUFFIX)), "answer": "1"},
        {"message": chat(image("images/0.png"), text("<image><image>Q")), "answer": "1"},
        {"message": chat(text("Q")), "answer": ""},
        ["not", "a", "row"],
        {"message": chat(text("Q")), "answer": "1"},
    ]
    path = tmp_path / "theirs.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataErrors) as error:
        load_questions([str(path)], row_format="messages", question_field="message")
    assert error.value.errors == [
        f"{path}, line 1, field 'message': missing",
        f"{path}, line 2, field 'message': not a JSON chat (Expecting property name enclosed in double quotes)",
        f'{path}, line 3, field \'message\': expected a list of chat messages, got {{"role": "user", "content": "Q"}}',
        f"{path}, line 4, field 'message': expected one user message, got the roles ['system', 'user']",
        f"{path}, line 5, field 'message': user message part 2: expected {{type: text, text: str}} or "
        f'{{type: image, image: path}}, got {{"type": "image_url", "image_url": {{"url": "images/0.png"}}}}',
        f"{path}, line 6, field 'message': image 1 of 1: image file not found: {pictures.resolve() / 'missing.png'}",
        f"{path}, line 7, field 'message': the user message has no question text",
        f"{path}, line 8, field 'message': 2 <image> placeholders for 1 images (one per image, or none to show the "
        f"images first)",
        f"{path}, line 9, field 'answer': empty",
        f"{path}, line 10: expected a JSON object, got list",
    ]


def test_a_broken_json_list_names_the_line(tmp_path):
    path = tmp_path / "theirs.json"
    path.write_text('[\n  {"message": "[]", "answer": "1"},\n  {"message": \n]\n')
    with pytest.raises(DataError, match=rf"^{path}, line 4: not valid JSON \(Expecting value\)$"):
        load_questions([str(path)], row_format="messages", question_field="message")


# ----------------------------------------------------------------------------- max_rows

def test_max_rows_draws_a_seeded_subset_in_file_order():
    from spark.data.rows import Sample, step_prompts, subset_rows

    rows = [Sample(f"q{i}", str(i)) for i in range(10)]
    four = subset_rows(rows, 4, seed=0, source="train.jsonl")
    assert [s.gold for s in four] == ["1", "4", "5", "7"]
    assert subset_rows(rows, 4, seed=0, source="train.jsonl") == four
    assert [s.gold for s in subset_rows(rows, 4, seed=1, source="train.jsonl")] == ["1", "2", "5", "6"]
    assert set(map(id, four)) < set(map(id, subset_rows(rows, 6, seed=0, source="train.jsonl")))
    assert subset_rows(rows, 0, seed=0, source="train.jsonl") == rows
    assert subset_rows(rows, 10, seed=0, source="train.jsonl") == rows
    # Every rank draws the same subset, so the ranks' shares of a step are the one-rank step's prompts.
    for world_size in (1, 2, 4):
        shares = [step_prompts(four, 1, 4, seed=3, rank=r, world_size=world_size) for r in range(world_size)]
        assert sorted(s.gold for share in shares for s in share) == sorted(s.gold for s in four)
    with pytest.raises(DataError, match=r"^a.jsonl, b/\*.parquet: data.max_rows = 11 is more than the 10 rows there$"):
        subset_rows(rows, 11, seed=0, source="a.jsonl, b/*.parquet")
