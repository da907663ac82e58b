from __future__ import annotations

import re

import pytest
from spark.verify import extract_answer, parse_judgment, score_batch

from spark.tasks.prompts import (
    MATH_SUFFIX,
    NUM_VARIANTS,
    POINTWISE_VERDICTS,
    math_prompt,
    pairwise_prompt,
    pointwise_prompt,
    rating_prompt,
    reflection_prompt,
    vl_rewardbench_prompt,
)

QUESTION = "Solve {x} + 1 = 3."  # braces in the inputs must survive str.format
ANSWER = "\\boxed{2}"


# Every template family: (task, render(question, answer, cot, variant) -> prompt).
FAMILIES = {
    "pointwise yesno": ("pointwise", lambda q, a, cot, v: pointwise_prompt(q, a, cot=cot, variant=v)),
    "pointwise ab": ("pointwise", lambda q, a, cot, v: pointwise_prompt(q, a, cot=cot, variant=v, coding="ab")),
    "pairwise": ("pairwise", lambda q, a, cot, v: pairwise_prompt(q, a, "(B) text", cot=cot, variant=v)),
    "reflection neutral": ("reflection", lambda q, a, cot, v: reflection_prompt(q, a, cot=cot, variant=v)),
    "reflection says wrong": (
        "reflection", lambda q, a, cot, v: reflection_prompt(q, a, cot=cot, variant=v, says_wrong=True)),
}


def family_prompts(family: str, question: str = QUESTION, answer: str = ANSWER) -> list[str]:
    task, render = FAMILIES[family]
    return [render(question, answer, cot, variant) for cot in (False, True) for variant in range(NUM_VARIANTS[task])]


def all_judge_and_reflection_prompts() -> list[str]:
    return [prompt for family in FAMILIES for prompt in family_prompts(family)]


def test_every_template_quotes_its_inputs_and_asks_for_a_box():
    prompts = all_judge_and_reflection_prompts() + [rating_prompt(QUESTION, ANSWER)]
    assert len(set(prompts)) == len(prompts)  # the variants and the cot forms really differ
    for prompt in prompts:
        assert QUESTION in prompt and ANSWER in prompt
        assert "\\boxed{" in prompt
        assert "\\box{" not in prompt and "{{" not in prompt


def test_math_prompt_is_question_then_suffix():
    assert math_prompt("What is 1+1?") == "What is 1+1?\n" + MATH_SUFFIX
    assert MATH_SUFFIX.endswith("Repeat the final answer using a '\\boxed{}'.")


def test_paper_templates_are_variant_zero():
    pointwise = pointwise_prompt("Q", "A")
    assert pointwise.startswith("You are a specialist in answer evaluation.")
    assert pointwise.endswith("<Questions>:\nQ\n<Answers>:\nA\n<Judgements>:")
    assert pairwise_prompt("Q", "a", "b").endswith("<Questions>:\nQ\n(A) a\n(B) b\n<Judgement>:")
    assert reflection_prompt("Q", "c", cot=True).startswith("You are given a question and a reasoning")
    assert reflection_prompt("Q", "a").endswith("<Question>:\nQ\n<Answer>:\na\n" + MATH_SUFFIX)


def test_at_least_ten_templates_per_family_and_content():
    assert min(NUM_VARIANTS.values()) >= 10
    for family, (task, render) in FAMILIES.items():
        for cot in (False, True):
            prompts = [render("Q", "A", cot, variant) for variant in range(NUM_VARIANTS[task] + 1)]
            # NUM_VARIANTS[task] distinct templates, and the next variant wraps round to the first
            assert len(set(prompts)) == NUM_VARIANTS[task] and prompts[-1] == prompts[0], (family, cot)


@pytest.mark.parametrize("kind, render", [("pointwise", pointwise_prompt), ("reflection", reflection_prompt)])
def test_variant_is_taken_modulo(kind, render):
    assert render("Q", "A", variant=NUM_VARIANTS[kind]) == render("Q", "A", variant=0)


def instruction(prompt: str) -> str:
    """The template's own words: the text before the quoted question."""
    return prompt.split(QUESTION)[0]


def test_each_judge_template_names_the_verdicts_of_its_coding():
    for prompt in family_prompts("pointwise yesno"):
        assert "Yes" in instruction(prompt) and "No" in instruction(prompt), prompt
    for prompt in family_prompts("pointwise ab"):  # each letter and what it means
        assert re.search(r"\bA\b.{0,60}(correct|right)", instruction(prompt), re.DOTALL), prompt
        assert re.search(r"\bB\b.{0,60}(incorrect|wrong|not|flawed|otherwise)", instruction(prompt), re.DOTALL), prompt
        assert "Yes" not in instruction(prompt)
    for prompt in family_prompts("pairwise"):
        assert "(A) " in prompt and "(B) " in prompt and "Yes" not in instruction(prompt)


@pytest.mark.parametrize("family, kind, verdicts", [
    ("pointwise yesno", "pointwise", POINTWISE_VERDICTS["yesno"]),
    ("pointwise ab", "pairwise", POINTWISE_VERDICTS["ab"]),
    ("pairwise", "pairwise", {"A": "A", "B": "B"}),
])
def test_every_judge_template_verdict_round_trips_through_the_verifier(family, kind, verdicts):
    """A response that boxes the verdict as the template asks is read back as that verdict, scores 1 against it
    and 0 against the other one."""
    for prompt in family_prompts(family):
        # the boxes a template shows are empty or hold one of its coding's verdicts
        assert set(re.findall(r"\\boxed\{([^{}]*)\}", instruction(prompt))) <= {"", *verdicts.values()}, prompt
        for label, verdict in verdicts.items():
            (other,) = set(verdicts.values()) - {verdict}
            response = f"Having checked the answer to {QUESTION!r} ...\nSo my verdict is \\boxed{{{verdict}}}."
            assert parse_judgment(response, kind) == verdict, (prompt, label)
            assert score_batch([response] * 2, [verdict, other], [kind] * 2) == [1.0, 0.0]


@pytest.mark.parametrize("family", ["reflection neutral", "reflection says wrong"])
def test_every_reflection_template_ends_with_the_math_suffix_and_its_answer_is_scored(family):
    for prompt in family_prompts(family):
        assert prompt.endswith(f"<{prompt.split('<')[-1].split('>')[0]}>:\n{ANSWER}\n{MATH_SUFFIX}")
    response = "Redoing it: x + 1 = 3 gives x = 2.\n\\boxed{2}"
    assert extract_answer(response, "strict") == "2"
    assert score_batch([response, response], ["2", "3"], mode="strict") == [1.0, 0.0]


def test_reflections_that_say_the_answer_is_wrong_say_so_and_the_neutral_ones_do_not():
    negative = re.compile(r"\b(?:wrong|wrongly|incorrect|mistaken|fails|does not reach|does not solve)\b")
    for prompt in family_prompts("reflection says wrong"):
        assert negative.search(instruction(prompt).split(".")[0]), prompt  # said in the first sentence
    for prompt in family_prompts("reflection neutral"):
        first = instruction(prompt).split(".")[0]
        assert not negative.search(first), prompt


def test_pointwise_verdicts_of_each_coding():
    assert POINTWISE_VERDICTS == {"yesno": {"Yes": "Yes", "No": "No"}, "ab": {"Yes": "A", "No": "B"}}


def test_vl_rewardbench_prompt():
    prompt = vl_rewardbench_prompt("What is shown?", "A cat.", "A dog.")
    assert "Question: What is shown?\n\nAnswer 1: A cat.\n\nAnswer 2: A dog." in prompt
    assert "Overall Judgment: Answer X is better." in prompt
