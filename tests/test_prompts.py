from __future__ import annotations

import pytest

from spark.prompts import (
    MATH_SUFFIX,
    NUM_VARIANTS,
    math_prompt,
    pairwise_prompt,
    pointwise_prompt,
    rating_prompt,
    reflection_prompt,
    vl_rewardbench_prompt,
)

QUESTION = "Solve {x} + 1 = 3."  # braces in the inputs must survive str.format
ANSWER = "\\boxed{2}"


def all_judge_and_reflection_prompts() -> list[str]:
    prompts = []
    for cot in (False, True):
        for variant in range(max(NUM_VARIANTS.values())):
            prompts.append(pointwise_prompt(QUESTION, ANSWER, cot=cot, variant=variant))
            prompts.append(pairwise_prompt(QUESTION, ANSWER, "(B) text", cot=cot, variant=variant))
            prompts.append(reflection_prompt(QUESTION, ANSWER, cot=cot, variant=variant))
    return prompts


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


@pytest.mark.parametrize("kind, render", [("pointwise", pointwise_prompt), ("reflection", reflection_prompt)])
def test_variant_is_taken_modulo(kind, render):
    assert render("Q", "A", variant=NUM_VARIANTS[kind]) == render("Q", "A", variant=0)


def test_vl_rewardbench_prompt():
    prompt = vl_rewardbench_prompt("What is shown?", "A cat.", "A dog.")
    assert "Question: What is shown?\n\nAnswer 1: A cat.\n\nAnswer 2: A dog." in prompt
    assert "Overall Judgment: Answer X is better." in prompt
