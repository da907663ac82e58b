"""Prompt templates: the math question, the recycled judge / reflection tasks, and the reward benchmarks.

Every template asks for the final answer or verdict in `\\boxed{}` so one rule (spark.verifier) scores
all tasks. The first template of each kind is the paper's (fig. 7), the others are paraphrases;
recycling draws one per sample so the model does not learn a single wording. `variant` is taken
modulo the number of templates. Templates are `str.format` strings, hence the doubled `{{}}`.
"""

from __future__ import annotations

MATH_SUFFIX = (
    "Please first conduct reasoning, and then answer the question. "
    "Repeat the final answer using a '\\boxed{}'."
)

# (cot=False: a final answer is judged, cot=True: a whole response, reasoning and answer, is judged)
_POINTWISE = {
    False: (
        "You are a specialist in answer evaluation. For the given question and answer, perform logical "
        "reasoning to assess the answer's correctness. Then state your judgment as 'Yes' or 'No'. Finally, "
        "repeat your judgment inside \\boxed{{}}.\n<Questions>:\n{question}\n<Answers>:\n{answer}\n"
        "<Judgements>:",
        "Decide whether the proposed answer to the question below is correct. Reason about it step by step, "
        "then give your verdict, Yes if the answer is correct and No otherwise, inside \\boxed{{}}.\n"
        "<Question>:\n{question}\n<Proposed answer>:\n{answer}\n<Verdict>:",
        "Check the following answer. Work out whether it correctly answers the question, then write "
        "\\boxed{{Yes}} if it does and \\boxed{{No}} if it does not.\n<Question>:\n{question}\n"
        "<Answer>:\n{answer}\n<Judgement>:",
    ),
    True: (
        "You are a specialist in answer evaluation. For the given question and solution, perform logical "
        "reasoning to assess whether both the reasoning and the final answer are correct. Then state your "
        "judgment as 'Yes' or 'No'. Finally, repeat your judgment inside \\boxed{{}}.\n<Questions>:\n"
        "{question}\n<Solution>:\n{answer}\n<Judgements>:",
        "Decide whether the solution below, its reasoning and its final answer, correctly solves the "
        "question. Check it step by step, then give your verdict, Yes if it is correct and No otherwise, "
        "inside \\boxed{{}}.\n<Question>:\n{question}\n<Solution>:\n{answer}\n<Verdict>:",
        "Check the following reasoning process (CoT). Work out whether its steps and its final answer are "
        "correct, then write \\boxed{{Yes}} if they are and \\boxed{{No}} if they are not.\n<Question>:\n"
        "{question}\n<Provided CoT>:\n{answer}\n<Judgement>:",
    ),
}

_PAIRWISE = {
    False: (
        "You're given a question and two possible answers. (A) and (B) may differ in correctness. Please "
        "analyze both answers carefully and decide which one is correct. After reasoning, restate your final "
        "choice using \\boxed{{}}.\n<Questions>:\n{question}\n(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Exactly one of the two answers below is correct. Compare them against the question, explain which "
        "one holds up, and give its letter, A or B, inside \\boxed{{}}.\n<Question>:\n{question}\n"
        "(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Which of the following answers, (A) or (B), correctly answers the question? Reason it through, then "
        "write the letter of the correct answer as \\boxed{{A}} or \\boxed{{B}}.\n<Question>:\n{question}\n"
        "(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
    ),
    True: (
        "You're given a question and two possible solutions. (A) and (B) may differ in correctness. Please "
        "analyze both reasoning processes and their final answers carefully and decide which one is correct. "
        "After reasoning, restate your final choice using \\boxed{{}}.\n<Questions>:\n{question}\n"
        "(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Exactly one of the two solutions below is correct. Check the reasoning and the final answer of "
        "each, explain which one holds up, and give its letter, A or B, inside \\boxed{{}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Which of the following reasoning processes, (A) or (B), reaches the correct answer by correct "
        "steps? Reason it through, then write its letter as \\boxed{{A}} or \\boxed{{B}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
    ),
}

_REFLECTION = {
    False: (
        "You are given a question and a proposed answer. Judge whether the answer is correct. If it is, "
        "briefly confirm it. If it is incorrect, provide correct reasoning and the correct answer.\n"
        "<Question>:\n{question}\n<Answer>:\n{answer}\n{math_suffix}",
        "Here is a question and an answer someone proposed for it. Verify the answer. If it is right, say so "
        "briefly; if it is wrong, solve the question correctly.\n<Question>:\n{question}\n"
        "<Proposed answer>:\n{answer}\n{math_suffix}",
        "Review the answer below. Confirm it if it correctly answers the question; otherwise find the "
        "mistake and work out the right answer.\n<Question>:\n{question}\n<Answer>:\n{answer}\n{math_suffix}",
    ),
    True: (
        "You are given a question and a reasoning process (CoT). Your task is to judge whether both the "
        "reasoning and the final answer are correct. If correct, summarize the logic and repeat the answer. "
        "If not, provide a correct reasoning process and answer.\n<Question>:\n{question}\n"
        "<Provided CoT>:\n{answer}\n{math_suffix}",
        "Here is a question and an attempted solution. Check every step and the final answer. If the "
        "solution is right, summarize it and restate the answer; if not, point out the error and solve the "
        "question correctly.\n<Question>:\n{question}\n<Attempted solution>:\n{answer}\n{math_suffix}",
        "Review the reasoning below. Confirm it if both its steps and its final answer are correct; "
        "otherwise give a corrected reasoning process and the correct answer.\n<Question>:\n{question}\n"
        "<Reasoning>:\n{answer}\n{math_suffix}",
    ),
}

NUM_VARIANTS = {
    "pointwise": len(_POINTWISE[False]),
    "pairwise": len(_PAIRWISE[False]),
    "reflection": len(_REFLECTION[False]),
}

# Paper fig. 6, verbatim (it asks for "Answer X is better", not a \boxed{} verdict).
_VL_REWARDBENCH = """You are a highly capable multimodal AI assistant tasked with evaluating answers to visual questions. Please analyze the following image and question, then determine which of the two provided answers is better.

Question: {question}

Answer 1: {answer_1}

Answer 2: {answer_2}

Please evaluate both answers based on the following criteria:

1. Accuracy: How well does the answer align with the visual information in the image?
2. Completeness: Does the answer fully address all aspects of the question?
3. Clarity: Is the answer easy to understand and well-articulated?
4. Relevance: Does the answer directly relate to the question and the image?

After your evaluation, please:

1. Explain your reasoning for each criterion.
2. Provide an overall judgment on which answer is better (Answer 1 or Answer 2). For example: Overall Judgment: Answer X is better.

Your response should be structured and detailed, demonstrating your understanding of both the visual and textual elements of the task."""

# RewardBench2-style absolute rating of one response (its ratings judge prompt, verdict moved into \boxed{}).
_RATING = """Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the user query displayed below.

Notes:
1- Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response.
2- Begin your evaluation by providing a short explanation.
3- Be as objective as possible. After providing your explanation, rate the response on a scale of 1 to 10 and give the rating, an integer between 1 and 10, inside \\boxed{{}}.

[Query]
{question}

[Response]
{answer}

[Your judgement]"""


def math_prompt(question: str) -> str:
    """The policy prompt: the question followed by the \\boxed{} instruction (paper fig. 5)."""
    return f"{question}\n{MATH_SUFFIX}"


def pointwise_prompt(question: str, answer: str, *, cot: bool = False, variant: int = 0) -> str:
    """Is `answer` (a final answer, or with cot=True a whole response) correct? Yes/No in \\boxed{}."""
    templates = _POINTWISE[cot]
    return templates[variant % len(templates)].format(question=question, answer=answer)


def pairwise_prompt(
    question: str, answer_a: str, answer_b: str, *, cot: bool = False, variant: int = 0
) -> str:
    """Which of (A) and (B) is correct? Letter in \\boxed{}."""
    templates = _PAIRWISE[cot]
    return templates[variant % len(templates)].format(question=question, answer_a=answer_a, answer_b=answer_b)


def reflection_prompt(question: str, answer: str, *, cot: bool = False, variant: int = 0) -> str:
    """Judge a proposed answer (or with cot=True a reasoning process); if wrong, solve the question again.
    The final answer goes in \\boxed{} and is checked against the question's gold answer."""
    templates = _REFLECTION[cot]
    template = templates[variant % len(templates)]
    return template.format(question=question, answer=answer, math_suffix=MATH_SUFFIX)


def vl_rewardbench_prompt(question: str, answer_1: str, answer_2: str) -> str:
    """VL-RewardBench pairwise judgement prompt (paper fig. 6); the verdict reads "Answer X is better"."""
    return _VL_REWARDBENCH.format(question=question, answer_1=answer_1, answer_2=answer_2)


def rating_prompt(question: str, answer: str) -> str:
    """RewardBench2-style rating of one response: an integer 1-10 in \\boxed{}."""
    return _RATING.format(question=question, answer=answer)
