"""Prompt templates: the math question, the recycled judge / reflection tasks, and the reward benchmarks.

Every template asks for the final answer or verdict in `\\boxed{}` so one rule (spark.verify) scores
all tasks. Each form has NUM_VARIANTS templates for answer-based and as many for CoT-based content;
recycling draws one per sample so the model does not learn a single wording. `variant` is taken modulo
the number of templates. The first Yes/No pointwise, pairwise and neutral reflection template is the
paper's (fig. 7); the others, the A/B-coded pointwise judges and the reflections that say the shown answer
is wrong are our own paraphrases of the kinds the authors' code draws from. Templates are `str.format`
strings, hence the doubled `{{}}`.
"""

from __future__ import annotations

from typing import Literal

MATH_SUFFIX = (
    "Please first conduct reasoning, and then answer the question. "
    "Repeat the final answer using a '\\boxed{}'."
)

# How a pointwise judge writes its verdict: "Yes"/"No", or a letter ("A" for correct, "B" for incorrect).
Coding = Literal["yesno", "ab"]
# The verdict that is right for a correct ("Yes") and for an incorrect ("No") answer, in each coding.
POINTWISE_VERDICTS: dict[str, dict[str, str]] = {
    "yesno": {"Yes": "Yes", "No": "No"},
    "ab": {"Yes": "A", "No": "B"},
}

# Pointwise judges: is one answer correct? [coding][cot] (cot=False: a final answer is judged, cot=True: a
# whole response, reasoning and answer, is judged). The A/B-coded ones ask for the letter alone in the box:
# spark.verify reads `\boxed{A}`, not `\boxed{A: correct}`.
_POINTWISE = {
    "yesno": {
        False: (
            "You are a specialist in answer evaluation. For the given question and answer, perform logical "
            "reasoning to assess the answer's correctness. Then state your judgment as 'Yes' or 'No'. "
            "Finally, repeat your judgment inside \\boxed{{}}.\n<Questions>:\n{question}\n<Answers>:\n"
            "{answer}\n<Judgements>:",
            "Decide whether the proposed answer to the question below is correct. Reason about it step by "
            "step, then give your verdict, Yes if the answer is correct and No otherwise, inside "
            "\\boxed{{}}.\n<Question>:\n{question}\n<Proposed answer>:\n{answer}\n<Verdict>:",
            "Check the following answer. Work out whether it correctly answers the question, then write "
            "\\boxed{{Yes}} if it does and \\boxed{{No}} if it does not.\n<Question>:\n{question}\n"
            "<Answer>:\n{answer}\n<Judgement>:",
            "Is the answer below right for the question? Think it through before you decide, then put a "
            "single word in \\boxed{{}}: Yes if the answer is right, No if it is not.\n<Question>:\n"
            "{question}\n<Answer>:\n{answer}\n<Judgement>:",
            "A student gave the answer below. Work the question out yourself, compare your result with the "
            "student's, and finish with \\boxed{{Yes}} if the student is right or \\boxed{{No}} if not.\n"
            "<Question>:\n{question}\n<Student's answer>:\n{answer}\n<Verdict>:",
            "You grade answers. Explain what you find about the answer given here, then write your grade, "
            "Yes for a correct answer or No for a wrong one, inside \\boxed{{}}.\n<Question>:\n{question}\n"
            "<Answer to grade>:\n{answer}\n<Grade>:",
            "Verify the candidate answer: derive what the answer should be, compare it with the candidate, "
            "and conclude with \\boxed{{Yes}} when the candidate is correct or \\boxed{{No}} when it is "
            "wrong.\n<Question>:\n{question}\n<Candidate answer>:\n{answer}\n<Verification>:",
            "Read the question and the answer that follows it. Reason carefully about whether the answer "
            "holds, then give a one-word verdict in \\boxed{{}}, Yes or No.\n<Question>:\n{question}\n"
            "<Answer>:\n{answer}\n<Verdict>:",
            "As a careful reviewer, determine whether the answer below is correct. Lay out your check, and "
            "end with your conclusion in \\boxed{{}}: Yes when the answer is correct, No when it is wrong.\n"
            "<Problem>:\n{question}\n<Given answer>:\n{answer}\n<Review>:",
            "Your job is to catch wrong answers. Examine the answer to the question below step by step. If "
            "it holds up, write \\boxed{{Yes}}; if it is wrong, write \\boxed{{No}}.\n<Question>:\n"
            "{question}\n<Answer>:\n{answer}\n<Judgement>:",
        ),
        True: (
            "You are a specialist in answer evaluation. For the given question and solution, perform "
            "logical reasoning to assess whether both the reasoning and the final answer are correct. Then "
            "state your judgment as 'Yes' or 'No'. Finally, repeat your judgment inside \\boxed{{}}.\n"
            "<Questions>:\n{question}\n<Solution>:\n{answer}\n<Judgements>:",
            "Decide whether the solution below, its reasoning and its final answer, correctly solves the "
            "question. Check it step by step, then give your verdict, Yes if it is correct and No "
            "otherwise, inside \\boxed{{}}.\n<Question>:\n{question}\n<Solution>:\n{answer}\n<Verdict>:",
            "Check the following reasoning process (CoT). Work out whether its steps and its final answer "
            "are correct, then write \\boxed{{Yes}} if they are and \\boxed{{No}} if they are not.\n"
            "<Question>:\n{question}\n<Provided CoT>:\n{answer}\n<Judgement>:",
            "Is the solution below right, both its steps and its final answer? Go through it before you "
            "decide, then put a single word in \\boxed{{}}: Yes if it is right, No if it is not.\n"
            "<Question>:\n{question}\n<Solution>:\n{answer}\n<Judgement>:",
            "A student wrote the worked solution below. Follow each step, note any mistake, and finish with "
            "\\boxed{{Yes}} if the student's reasoning and answer are right or \\boxed{{No}} if not.\n"
            "<Question>:\n{question}\n<Student's solution>:\n{answer}\n<Verdict>:",
            "You grade worked solutions. Explain what you find in the steps and the final answer given "
            "here, then write your grade, Yes for a correct solution or No for a wrong one, inside "
            "\\boxed{{}}.\n<Question>:\n{question}\n<Solution to grade>:\n{answer}\n<Grade>:",
            "Verify the candidate solution: check each of its steps and recompute its final answer, then "
            "conclude with \\boxed{{Yes}} when the solution is correct or \\boxed{{No}} when it is not.\n"
            "<Question>:\n{question}\n<Candidate solution>:\n{answer}\n<Verification>:",
            "Read the question and the reasoning that follows it. Think about whether the reasoning reaches "
            "the right answer without errors, then give a one-word verdict in \\boxed{{}}, Yes or No.\n"
            "<Question>:\n{question}\n<Reasoning>:\n{answer}\n<Verdict>:",
            "As a careful reviewer, determine whether the step-by-step solution below is correct. Lay out "
            "your check of its steps and its result, and end with your conclusion in \\boxed{{}}: Yes when "
            "the solution is correct, No when it is not.\n<Problem>:\n{question}\n<Given solution>:\n"
            "{answer}\n<Review>:",
            "Your job is to catch flawed solutions. Examine the solution below step by step. If every step "
            "and the final answer hold up, write \\boxed{{Yes}}; if anything is wrong, write "
            "\\boxed{{No}}.\n<Question>:\n{question}\n<Solution>:\n{answer}\n<Judgement>:",
        ),
    },
    "ab": {
        False: (
            "Decide whether the answer below correctly answers the question. Reason step by step, then "
            "choose:\nA: the answer is correct\nB: the answer is incorrect\nWrite only the letter of your "
            "choice inside \\boxed{{}}.\n<Question>:\n{question}\n<Answer>:\n{answer}\n<Judgement>:",
            "Check the following answer, then pick the option that describes it.\n(A) It is correct.\n(B) "
            "It is incorrect.\nExplain your check first and end with the letter alone, \\boxed{{A}} or "
            "\\boxed{{B}}.\n<Question>:\n{question}\n<Answer>:\n{answer}\n<Verdict>:",
            "You grade answers with two marks: A means correct and B means incorrect. Work out whether the "
            "answer given here is correct, then write your mark inside \\boxed{{}}.\n<Question>:\n"
            "{question}\n<Answer to grade>:\n{answer}\n<Grade>:",
            "Is the proposed answer right? Think it through, then answer with one letter in \\boxed{{}}: A "
            "if the answer is correct, B if it is wrong.\n<Question>:\n{question}\n<Proposed answer>:\n"
            "{answer}\n<Choice>:",
            "A student gave the answer below. Check it against the question and choose the statement that "
            "is true.\nA. The student's answer is correct.\nB. The student's answer is incorrect.\nAfter "
            "your reasoning, box the letter alone, as \\boxed{{A}} or \\boxed{{B}}.\n<Question>:\n"
            "{question}\n<Student's answer>:\n{answer}\n<Choice>:",
            "Verify the candidate answer by working the question out yourself. Then select A (the candidate "
            "is correct) or B (the candidate is incorrect) and put that letter in \\boxed{{}}.\n"
            "<Question>:\n{question}\n<Candidate answer>:\n{answer}\n<Verification>:",
            "Which statement about the answer below is true?\nA) It answers the question correctly.\nB) It "
            "does not.\nReason first, then write the letter of the true statement inside \\boxed{{}}.\n"
            "<Question>:\n{question}\n<Answer>:\n{answer}\n<Judgement>:",
            "As a careful reviewer, examine whether the given answer solves the question. Conclude with "
            "\\boxed{{A}} if it is correct and with \\boxed{{B}} if it is not.\n<Problem>:\n{question}\n"
            "<Given answer>:\n{answer}\n<Review>:",
            "Evaluate the answer below and label it A if it is correct or B if it is incorrect. Show your "
            "reasoning, then repeat the label, the letter only, inside \\boxed{{}}.\n<Question>:\n"
            "{question}\n<Answer>:\n{answer}\n<Label>:",
            "Sort the answer below into one of two bins: A for correct answers, B for incorrect ones. Look "
            "at it step by step, then name its bin by writing \\boxed{{A}} or \\boxed{{B}}.\n<Question>:\n"
            "{question}\n<Answer>:\n{answer}\n<Bin>:",
        ),
        True: (
            "Decide whether the solution below, its reasoning and its final answer, correctly solves the "
            "question. Check it step by step, then choose:\nA: the solution is correct\nB: the solution is "
            "incorrect\nWrite only the letter of your choice inside \\boxed{{}}.\n<Question>:\n{question}\n"
            "<Solution>:\n{answer}\n<Judgement>:",
            "Check the following reasoning process (CoT), then pick the option that describes it.\n(A) Its "
            "steps and its final answer are correct.\n(B) It contains an error or reaches a wrong answer.\n"
            "Explain your check first and end with the letter alone, \\boxed{{A}} or \\boxed{{B}}.\n"
            "<Question>:\n{question}\n<Provided CoT>:\n{answer}\n<Verdict>:",
            "You grade worked solutions with two marks: A means correct and B means incorrect. Go through "
            "the steps and the final answer given here, then write your mark inside \\boxed{{}}.\n"
            "<Question>:\n{question}\n<Solution to grade>:\n{answer}\n<Grade>:",
            "Is the solution below right, both its steps and its final answer? Think it through, then "
            "answer with one letter in \\boxed{{}}: A if it is correct, B if it is wrong.\n<Question>:\n"
            "{question}\n<Solution>:\n{answer}\n<Choice>:",
            "A student wrote the worked solution below. Follow each step and choose the statement that is "
            "true.\nA. The student's solution is correct.\nB. The student's solution is incorrect.\nAfter "
            "your reasoning, box the letter alone, as \\boxed{{A}} or \\boxed{{B}}.\n<Question>:\n"
            "{question}\n<Student's solution>:\n{answer}\n<Choice>:",
            "Verify the candidate solution: check each of its steps and recompute its final answer. Then "
            "select A (the solution is correct) or B (it is not) and put that letter in \\boxed{{}}.\n"
            "<Question>:\n{question}\n<Candidate solution>:\n{answer}\n<Verification>:",
            "Which statement about the reasoning below is true?\nA) It reaches the right answer without "
            "errors.\nB) It makes an error or reaches a wrong answer.\nReason first, then write the letter "
            "of the true statement inside \\boxed{{}}.\n<Question>:\n{question}\n<Reasoning>:\n{answer}\n"
            "<Judgement>:",
            "As a careful reviewer, examine whether the step-by-step solution below is correct, its steps "
            "and its result. Conclude with \\boxed{{A}} if it is correct and with \\boxed{{B}} if it is "
            "not.\n<Problem>:\n{question}\n<Given solution>:\n{answer}\n<Review>:",
            "Evaluate the solution below and label it A if both its reasoning and its final answer are "
            "correct, or B otherwise. Show your check, then repeat the label, the letter only, inside "
            "\\boxed{{}}.\n<Question>:\n{question}\n<Solution>:\n{answer}\n<Label>:",
            "Sort the solution below into one of two bins: A for correct solutions, B for flawed ones. "
            "Examine it step by step, then name its bin by writing \\boxed{{A}} or \\boxed{{B}}.\n"
            "<Question>:\n{question}\n<Solution>:\n{answer}\n<Bin>:",
        ),
    },
}

# Pairwise judges: which of (A) and (B) is correct? [cot]
_PAIRWISE = {
    False: (
        "You're given a question and two possible answers. (A) and (B) may differ in correctness. Please "
        "analyze both answers carefully and decide which one is correct. After reasoning, restate your "
        "final choice using \\boxed{{}}.\n<Questions>:\n{question}\n(A) {answer_a}\n(B) {answer_b}\n"
        "<Judgement>:",
        "Exactly one of the two answers below is correct. Compare them against the question, explain which "
        "one holds up, and give its letter, A or B, inside \\boxed{{}}.\n<Question>:\n{question}\n(A) "
        "{answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Which of the following answers, (A) or (B), correctly answers the question? Reason it through, "
        "then write the letter of the correct answer as \\boxed{{A}} or \\boxed{{B}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Two answers to the same question follow, and only one of them is right. Work the question out, "
        "compare both answers with your result, and write the letter of the right one as \\boxed{{A}} or "
        "\\boxed{{B}}.\n<Question>:\n{question}\n(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Compare answers (A) and (B). Explain which of them correctly answers the question, then put that "
        "letter, and nothing else, inside \\boxed{{}}.\n<Question>:\n{question}\n(A) {answer_a}\n(B) "
        "{answer_b}\n<Comparison>:",
        "A teacher has two answers to one question, one correct and one incorrect. Help grade them: reason "
        "about each, then give the letter of the correct answer in \\boxed{{}}.\n<Question>:\n{question}\n"
        "(A) {answer_a}\n(B) {answer_b}\n<Grade>:",
        "Pick the correct answer. Check (A) and (B) against the question step by step and finish with the "
        "letter of the correct one, \\boxed{{A}} or \\boxed{{B}}.\n<Problem>:\n{question}\n(A) {answer_a}\n"
        "(B) {answer_b}\n<Choice>:",
        "Answers (A) and (B) below disagree. Decide which of them is correct and justify your choice, then "
        "end with your choice, a single letter, inside \\boxed{{}}.\n<Question>:\n{question}\n(A) "
        "{answer_a}\n(B) {answer_b}\n<Verdict>:",
        "As a careful reviewer, determine which of the two candidate answers is correct. Show your check of "
        "both, then box the letter of the correct one: \\boxed{{A}} or \\boxed{{B}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Review>:",
        "One of the two answers below is wrong. Find it by reasoning through the question, and report the "
        "other one, the correct answer, by its letter inside \\boxed{{}}.\n<Question>:\n{question}\n(A) "
        "{answer_a}\n(B) {answer_b}\n<Judgement>:",
    ),
    True: (
        "You're given a question and two possible solutions. (A) and (B) may differ in correctness. Please "
        "analyze both reasoning processes and their final answers carefully and decide which one is "
        "correct. After reasoning, restate your final choice using \\boxed{{}}.\n<Questions>:\n{question}\n"
        "(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Exactly one of the two solutions below is correct. Check the reasoning and the final answer of "
        "each, explain which one holds up, and give its letter, A or B, inside \\boxed{{}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Which of the following reasoning processes, (A) or (B), reaches the correct answer by correct "
        "steps? Reason it through, then write its letter as \\boxed{{A}} or \\boxed{{B}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Two worked solutions to the same question follow, and only one of them is right. Work the question "
        "out, compare both solutions with your own, and write the letter of the right one as \\boxed{{A}} "
        "or \\boxed{{B}}.\n<Question>:\n{question}\n(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
        "Compare solutions (A) and (B), their steps and their final answers. Explain which of them solves "
        "the question correctly, then put that letter, and nothing else, inside \\boxed{{}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Comparison>:",
        "A teacher has two worked solutions to one question, one correct and one flawed. Help grade them: "
        "follow the steps of each, then give the letter of the correct solution in \\boxed{{}}.\n"
        "<Question>:\n{question}\n(A) {answer_a}\n(B) {answer_b}\n<Grade>:",
        "Pick the correct solution. Check every step and the final answer of (A) and of (B), and finish "
        "with the letter of the correct one, \\boxed{{A}} or \\boxed{{B}}.\n<Problem>:\n{question}\n(A) "
        "{answer_a}\n(B) {answer_b}\n<Choice>:",
        "Solutions (A) and (B) below reach different conclusions. Decide which of them is correct and "
        "justify your choice, then end with your choice, a single letter, inside \\boxed{{}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Verdict>:",
        "As a careful reviewer, determine which of the two step-by-step solutions is correct. Show your "
        "check of both, then box the letter of the correct one: \\boxed{{A}} or \\boxed{{B}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Review>:",
        "One of the two solutions below goes wrong. Find where by reasoning through the question, and "
        "report the other one, the correct solution, by its letter inside \\boxed{{}}.\n<Question>:\n"
        "{question}\n(A) {answer_a}\n(B) {answer_b}\n<Judgement>:",
    ),
}

# Reflections: answer the question again after seeing an answer. [says_wrong][cot]: says_wrong=False leaves
# open whether the shown answer is right (the model has to judge it), True tells the model it is wrong.
_REFLECTION = {
    False: {
        False: (
            "You are given a question and a proposed answer. Judge whether the answer is correct. If it is, "
            "briefly confirm it. If it is incorrect, provide correct reasoning and the correct answer.\n"
            "<Question>:\n{question}\n<Answer>:\n{answer}\n{math_suffix}",
            "Here is a question and an answer someone proposed for it. Verify the answer. If it is right, "
            "say so briefly; if it is wrong, solve the question correctly.\n<Question>:\n{question}\n"
            "<Proposed answer>:\n{answer}\n{math_suffix}",
            "Review the answer below. Confirm it if it correctly answers the question; otherwise find the "
            "mistake and work out the right answer.\n<Question>:\n{question}\n<Answer>:\n{answer}\n"
            "{math_suffix}",
            "Below are a question and an answer to it. Check whether the answer is correct. If it is, "
            "confirm it in a sentence or two; if it is not, explain the error and solve the question "
            "correctly.\n<Question>:\n{question}\n<Answer>:\n{answer}\n{math_suffix}",
            "A student answered the question below. Decide whether the student's answer is right. If so, "
            "restate it with a brief reason; if not, work out the correct answer.\n<Question>:\n{question}\n"
            "<Student's answer>:\n{answer}\n{math_suffix}",
            "Verify the candidate answer by solving the question yourself. Keep the candidate if your "
            "result agrees with it; otherwise give your own, correct answer.\n<Question>:\n{question}\n"
            "<Candidate answer>:\n{answer}\n{math_suffix}",
            "Is the answer below right? Reason it through. When it is correct, say so and repeat it; when "
            "it is wrong, replace it with the correct answer and the reasoning behind it.\n<Question>:\n"
            "{question}\n<Answer>:\n{answer}\n{math_suffix}",
            "Double-check the answer given for this problem. Keep it if it holds up; correct it if it does "
            "not.\n<Problem>:\n{question}\n<Given answer>:\n{answer}\n{math_suffix}",
            "As a careful reviewer, assess whether the proposed answer to the question is correct. Agree "
            "with it briefly if it is; if it is not, show the correct solution.\n<Question>:\n{question}\n"
            "<Proposed answer>:\n{answer}\n{math_suffix}",
            "Someone proposed the answer below; it may or may not be correct. Work the question out, then "
            "either confirm that answer or give the correct one.\n<Question>:\n{question}\n<Answer>:\n"
            "{answer}\n{math_suffix}",
        ),
        True: (
            "You are given a question and a reasoning process (CoT). Your task is to judge whether both the "
            "reasoning and the final answer are correct. If correct, summarize the logic and repeat the "
            "answer. If not, provide a correct reasoning process and answer.\n<Question>:\n{question}\n"
            "<Provided CoT>:\n{answer}\n{math_suffix}",
            "Here is a question and an attempted solution. Check every step and the final answer. If the "
            "solution is right, summarize it and restate the answer; if not, point out the error and solve "
            "the question correctly.\n<Question>:\n{question}\n<Attempted solution>:\n{answer}\n"
            "{math_suffix}",
            "Review the reasoning below. Confirm it if both its steps and its final answer are correct; "
            "otherwise give a corrected reasoning process and the correct answer.\n<Question>:\n{question}\n"
            "<Reasoning>:\n{answer}\n{math_suffix}",
            "Below are a question and a worked solution to it. Check whether the solution is correct. If it "
            "is, sum it up in a sentence or two; if it is not, explain the error and solve the question "
            "correctly.\n<Question>:\n{question}\n<Solution>:\n{answer}\n{math_suffix}",
            "A student wrote the solution below. Follow the student's steps and decide whether they and the "
            "final answer are right. If so, restate the answer with a brief reason; if not, work out the "
            "correct answer.\n<Question>:\n{question}\n<Student's solution>:\n{answer}\n{math_suffix}",
            "Verify the candidate solution step by step and recompute its final answer. Keep that answer if "
            "your check agrees with it; otherwise give your own, correct solution.\n<Question>:\n"
            "{question}\n<Candidate solution>:\n{answer}\n{math_suffix}",
            "Is the reasoning below right? Go through it. When its steps and answer are correct, say so and "
            "repeat the answer; when they are not, replace them with a correct solution.\n<Question>:\n"
            "{question}\n<Reasoning>:\n{answer}\n{math_suffix}",
            "Double-check the worked solution given for this problem. Keep its answer if every step holds "
            "up; correct the solution if one does not.\n<Problem>:\n{question}\n<Given solution>:\n"
            "{answer}\n{math_suffix}",
            "As a careful reviewer, assess whether the step-by-step solution to the question is correct. "
            "Agree with it briefly if it is; if it is not, show where it goes wrong and give the correct "
            "solution.\n<Question>:\n{question}\n<Proposed solution>:\n{answer}\n{math_suffix}",
            "Someone wrote the solution below; it may or may not be correct. Work through it, then either "
            "confirm its answer or give the correct one with your own reasoning.\n<Question>:\n{question}\n"
            "<Solution>:\n{answer}\n{math_suffix}",
        ),
    },
    True: {
        False: (
            "The answer below is incorrect. Do not rely on it: solve the question again from the start, "
            "reasoning carefully, and give the correct answer.\n<Question>:\n{question}\n"
            "<Incorrect answer>:\n{answer}\n{math_suffix}",
            "A student answered this question wrongly. Think about how someone could reach that answer, "
            "then solve the question correctly.\n<Question>:\n{question}\n<Wrong answer>:\n{answer}\n"
            "{math_suffix}",
            "This answer has been marked wrong. Set it aside, work through the question yourself, and find "
            "the right answer.\n<Question>:\n{question}\n<Answer marked wrong>:\n{answer}\n{math_suffix}",
            "The proposed answer does not solve the question. Solve the question properly and state the "
            "answer that does.\n<Question>:\n{question}\n<Rejected answer>:\n{answer}\n{math_suffix}",
            "Here is a question together with a mistaken answer. Find the correct answer with your own "
            "step-by-step reasoning.\n<Question>:\n{question}\n<Mistaken answer>:\n{answer}\n{math_suffix}",
            "The answer given for the problem below is known to be wrong. Start afresh and reason your way "
            "to the correct answer.\n<Problem>:\n{question}\n<Wrong answer>:\n{answer}\n{math_suffix}",
            "A checker found the answer below to be incorrect. Solve the question again so that your answer "
            "is correct.\n<Question>:\n{question}\n<Incorrect answer>:\n{answer}\n{math_suffix}",
            "Do not repeat the answer below: it is wrong. Think the question through from the beginning and "
            "give the answer that is actually correct.\n<Question>:\n{question}\n<Wrong answer>:\n{answer}\n"
            "{math_suffix}",
            "The following attempt got the question wrong. Figure out the correct answer, reasoning step by "
            "step.\n<Question>:\n{question}\n<Failed attempt>:\n{answer}\n{math_suffix}",
            "This answer to the question is wrong. Solve the question anew, checking each step, and give "
            "the right answer.\n<Question>:\n{question}\n<Incorrect answer>:\n{answer}\n{math_suffix}",
        ),
        True: (
            "The solution below does not reach the correct answer. Do not rely on it: solve the question "
            "again from the start, reasoning carefully, and give the correct answer.\n<Question>:\n"
            "{question}\n<Incorrect solution>:\n{answer}\n{math_suffix}",
            "A student solved this question wrongly. Find where the student's reasoning goes wrong, then "
            "solve the question correctly.\n<Question>:\n{question}\n<Wrong solution>:\n{answer}\n"
            "{math_suffix}",
            "This solution has been marked wrong. Set it aside, work through the question yourself, and "
            "find the right answer.\n<Question>:\n{question}\n<Solution marked wrong>:\n{answer}\n"
            "{math_suffix}",
            "The reasoning process (CoT) below fails to solve the question. Solve the question properly and "
            "state the correct answer.\n<Question>:\n{question}\n<Failed CoT>:\n{answer}\n{math_suffix}",
            "Here is a question together with a mistaken solution. Find the correct answer with your own "
            "step-by-step reasoning.\n<Question>:\n{question}\n<Mistaken solution>:\n{answer}\n{math_suffix}",
            "The worked solution given for the problem below is known to end in a wrong answer. Start "
            "afresh and reason your way to the correct one.\n<Problem>:\n{question}\n<Wrong solution>:\n"
            "{answer}\n{math_suffix}",
            "A checker found the reasoning below to be incorrect. Solve the question again so that your "
            "steps and your answer are correct.\n<Question>:\n{question}\n<Incorrect reasoning>:\n{answer}\n"
            "{math_suffix}",
            "Do not repeat the reasoning below: it leads to a wrong answer. Think the question through from "
            "the beginning and give the answer that is actually correct.\n<Question>:\n{question}\n"
            "<Wrong reasoning>:\n{answer}\n{math_suffix}",
            "The following attempt got the question wrong. Spot its mistake, then figure out the correct "
            "answer, reasoning step by step.\n<Question>:\n{question}\n<Failed attempt>:\n{answer}\n"
            "{math_suffix}",
            "This solution to the question is wrong. Solve the question anew, checking each step, and give "
            "the right answer.\n<Question>:\n{question}\n<Incorrect solution>:\n{answer}\n{math_suffix}",
        ),
    },
}

NUM_VARIANTS = {
    "pointwise": len(_POINTWISE["yesno"][False]),
    "pairwise": len(_PAIRWISE[False]),
    "reflection": len(_REFLECTION[False][False]),
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


def pointwise_prompt(
    question: str, answer: str, *, cot: bool = False, variant: int = 0, coding: Coding = "yesno"
) -> str:
    """Is `answer` (a final answer, or with cot=True a whole response) correct? The verdict in \\boxed{}:
    Yes/No, or with coding="ab" the letter A (correct) or B (incorrect); POINTWISE_VERDICTS maps the labels."""
    templates = _POINTWISE[coding][cot]
    return templates[variant % len(templates)].format(question=question, answer=answer)


def pairwise_prompt(
    question: str, answer_a: str, answer_b: str, *, cot: bool = False, variant: int = 0
) -> str:
    """Which of (A) and (B) is correct? Letter in \\boxed{}."""
    templates = _PAIRWISE[cot]
    return templates[variant % len(templates)].format(question=question, answer_a=answer_a, answer_b=answer_b)


def reflection_prompt(
    question: str, answer: str, *, cot: bool = False, variant: int = 0, says_wrong: bool = False
) -> str:
    """Judge a proposed answer (or with cot=True a reasoning process); if wrong, solve the question again.
    With says_wrong=True the prompt states that the answer shown is wrong and asks for a new solution.
    The final answer goes in \\boxed{} and is checked against the question's gold answer."""
    templates = _REFLECTION[says_wrong][cot]
    template = templates[variant % len(templates)]
    return template.format(question=question, answer=answer, math_suffix=MATH_SUFFIX)


def vl_rewardbench_prompt(question: str, answer_1: str, answer_2: str) -> str:
    """VL-RewardBench pairwise judgement prompt (paper fig. 6); the verdict reads "Answer X is better"."""
    return _VL_REWARDBENCH.format(question=question, answer_1=answer_1, answer_2=answer_2)


def rating_prompt(question: str, answer: str) -> str:
    """RewardBench2-style rating of one response: an integer 1-10 in \\boxed{}."""
    return _RATING.format(question=question, answer=answer)


# ----------------------------------------------------------------------------- the authors' evaluation prompts
# The system message, judge and reflection prompts of the authors' evaluation scripts (InternLM/Spark,
# Evaluation/evaluation.py and evaluation_tts.py), used by the "paper" preset (spark.evaluation.presets); their answer
# prompt is math_prompt. Their wording and layout are kept, as their results were measured with them, but for
# the judge's box: theirs reads "repeat your judgment inside '\box{}.'", while their verdict reader looks for
# the first "\boxed{": here the judge is asked for the box that is read, the full stop outside the quotes.

PAPER_SYSTEM = "You are a helpful assistant."

_PAPER_JUDGE = (
    "You are a specialist in answer evaluation. For the given question and answer, perform logical reasoning to "
    "assess the answer's correctness. Then state your judgment as 'Yes' or 'No'. Finally, repeat your judgment "
    "inside '\\boxed{{}}'.\n\n<Questions>:\n{question}\n\n<Answers>:\n{answer}\n\n<Judgements>:"
)

# Tells the model the answer is incorrect: their loop only reflects on answers its judge did not accept.
_PAPER_REFLECTION = (
    "Below is a question and an incorrect answer. Do not follow the incorrect answer. Instead, reason through the "
    "question properly and provide the correct final answer.\n\nQuestion:\n{question}\n\nIncorrect Answer:\n"
    "{answer}\n\n{math_suffix}"
)


def paper_judge_prompt(question: str, answer: str) -> str:
    """The authors' test-time judge: is the final answer `answer` correct? 'Yes' or 'No' in \\boxed{}."""
    return _PAPER_JUDGE.format(question=question, answer=answer)


def paper_reflection_prompt(question: str, answer: str) -> str:
    """The authors' test-time reflection: `answer` is incorrect, solve the question again."""
    return _PAPER_REFLECTION.format(question=question, answer=answer, math_suffix=MATH_SUFFIX)
