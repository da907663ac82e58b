"""Training rows: every bad row is reported at once (DataErrors), each naming its file, line and field."""

import json

import pytest

from spark.data import DataError, DataErrors, load_questions


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
    from spark.data import load_judge_rows
    from spark.prompts import pointwise_prompt

    path = tmp_path / "judge.jsonl"
    path.write_text('{"question": "What is 2+2?", "answer": "4", "label": "Yes"}\n'
                    '{"question": "What is 2+2?", "answer": "2+2=5. \\\\boxed{5}", "label": "No", "cot": true}\n')
    rows = load_judge_rows([str(path)], render=pointwise_prompt)
    assert [(r.prompt, r.gold, r.task) for r in rows] == [
        (pointwise_prompt("What is 2+2?", "4"), "Yes", "pointwise"),
        (pointwise_prompt("What is 2+2?", "2+2=5. \\boxed{5}", cot=True), "No", "pointwise")]
