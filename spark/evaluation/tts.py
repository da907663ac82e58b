"""Test-time scaling with self-reflection (paper section 3.3, eqs. 9-11).

One model answers, judges its own answer and, when it does not accept it, reflects:

    o_0     = pi(q, I)                              answer, math_prompt                   (eq. 9)
    r_t     = pi(q, I, judge(o_t))                  pointwise_prompt showing o_t          (eq. 10)
    o_{t+1} = o_t                     if r_t = Yes                                        (eq. 11)
              pi(q, I, reflect(o_t))  otherwise     reflection_prompt showing o_t

for t = 0 .. max_rounds - 1; a trace stops at its first Yes. A verdict that cannot be parsed is not
a Yes. The last reflection is not judged again: nothing would follow from its verdict. The reported
accuracy is that of each trace's final answer. Batched across problems: each round only the
still-open traces go to the model.

Each judgment records the probability the model puts on its verdict (`verdict_prob`, spark.evaluation.verdicts),
and with it the judge's probability that the answer is wrong (`p_wrong`). With `reject_above` = P the loop
reflects only when p_wrong > P instead of whenever the verdict is not Yes: P = 0.5 is the verdict rule for a
greedy verdict, P = 1 never reflects, P = 0 reflects on every answer the judge gives any doubt, and
spark.evaluation.calibration picks P on problems held out from the evaluation. With `keep_better`, a trace that
is still rejecting after its last round has its last reflection judged too, and keeps, of all its answers, the one
the judge rated most likely right (the earliest of equals), as a "keep" turn (a copy of it) when that is not the last.

`content` says what the judge and the reflection are shown of o_t, and with it which form of the
templates they get: "cot", the whole response (the templates' CoT form), or "answer", its final
\boxed{} answer (the answer form). A model should be asked in the form it was trained to judge in
(spark.recycle's `content`).

`Style` is the rest of how the loop asks and reads: the templates and verdict rule ("spark": the method's
templates, verdicts read as spark.verify.parse_judgment reads them; "paper": the authors' evaluation
prompts, and their rule that only a first \\boxed{} holding exactly "Yes" accepts), how an answer is read
(spark.verify's answer modes) and the system message. spark.evaluation.presets names the two ways of running it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from spark.data.images import ImageSource, image_label
from spark.evaluation.verdicts import verdict_probabilities
from spark.generation.sampler import Sampling
from spark.tasks.prompts import (
    math_prompt,
    paper_judge_prompt,
    paper_reflection_prompt,
)
from spark.tasks.table import tts_task
from spark.verify import ANSWER_MODES, extract_answer, parse_judgment, score_batch

ANSWER_ROLES = ("answer", "reflect", "keep")
CONTENTS = ("cot", "answer")
TEMPLATES = ("spark", "paper")


@dataclass(frozen=True)
class Style:
    """How the loop asks and reads (see the module doc)."""

    templates: str = "spark"  # judge / reflection prompts and verdict rule: "spark" | "paper"
    answer_mode: str = "lenient"  # how an answer turn's final answer is read and scored (spark.verify)
    system: str | None = None  # every turn's system message; None: the chat template's own

    def __post_init__(self):
        if self.templates not in TEMPLATES:
            raise ValueError(f"tts templates must be one of {TEMPLATES}, got {self.templates!r}")
        if self.answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer mode must be one of {ANSWER_MODES}, got {self.answer_mode!r}")


@dataclass
class Problem:
    question: str  # the bare question (with its options), shown again to the judge and the reflection
    gold: str | None = None  # None: nothing is scored (a question typed at the terminal)
    images: list[ImageSource] = field(default_factory=list)  # shown with every turn of the exchange


@dataclass
class Turn:
    role: str  # "answer" (o_0) | "judge" (r_t) | "reflect" (o_{t+1}) | "keep" (keep_better's pick: a copy, 0 tokens)
    round: int  # the t of the o_t this turn produced or judged
    response: str
    num_tokens: int
    finish_reason: str
    extracted: str | None = None  # answer / reflect: the \boxed{} answer; judge: "Yes" / "No" / None
    correct: bool | None = None  # answer / reflect: the verifier's verdict against the gold
    verdict_prob: float | None = None  # judge: the probability of its verdict (spark.evaluation.verdicts); None: unknown
    prompt: str = ""  # kept for display, not saved


@dataclass
class Trace:
    """One problem's exchange, turn by turn."""

    problem: Problem
    turns: list[Turn] = field(default_factory=list)

    @property
    def answers(self) -> list[Turn]:
        return [turn for turn in self.turns if turn.role in ANSWER_ROLES]

    @property
    def final(self) -> Turn:
        return self.answers[-1]

    def to_dict(self) -> dict:
        return {"turns": [{k: v for k, v in asdict(turn).items() if k != "prompt"} for turn in self.turns]}

    @classmethod
    def from_dict(cls, problem: Problem, data: dict) -> Trace:
        return cls(problem, [Turn(**turn) for turn in data["turns"]])


def _generate(model, prompts: list[str], images: list[list[ImageSource]], sampling: Sampling, seed: int,
              style: Style, n: int = 1):
    return model.generate(prompts, images, n=n, seed=seed, system=style.system, **asdict(sampling))


def _answer_turns(role: str, rounds: list[int], problems: list[Problem], prompts: list[str], completions,
                  answer_mode: str) -> list[Turn]:
    """Answer / reflect turns (lists aligned, one per completion) with their extracted answers and, where
    a gold is known, the verifier's verdicts, checked in one batch."""
    scored = [i for i, p in enumerate(problems) if p.gold is not None]
    scores = score_batch([completions[i].text for i in scored], [problems[i].gold for i in scored],
                         mode=answer_mode)
    correct: list[bool | None] = [None] * len(completions)
    for i, score in zip(scored, scores):
        correct[i] = score == 1.0
    return [
        Turn(role, r, c.text, c.num_tokens, c.finish_reason, extract_answer(c.text, answer_mode), ok, prompt=prompt)
        for r, prompt, c, ok in zip(rounds, prompts, completions, correct)
    ]


def answer(model, problems: list[Problem], *, sampling: Sampling, seed: int = 0, n: int = 1,
           style: Style = Style()) -> list[list[Trace]]:
    """o_0 (eq. 9): n traces per problem, each starting with one sampled answer."""
    prompts = [math_prompt(p.question) for p in problems]
    outputs = _generate(model, prompts, [p.images for p in problems], sampling, seed, style, n=n)
    completions = [c for samples in outputs for c in samples]  # problem k's samples at k * n ... k * n + n - 1
    each_sample = [(p, prompt) for p, prompt in zip(problems, prompts) for _ in range(n)]
    turns = _answer_turns("answer", [0] * len(completions), [p for p, _ in each_sample],
                          [prompt for _, prompt in each_sample], completions, style.answer_mode)
    return [[Trace(p, [turn]) for turn in turns[k * n : (k + 1) * n]] for k, p in enumerate(problems)]


def shown(turn: Turn, content: str) -> str:
    """What the judge and the reflection see of an answer turn: the whole response ("cot") or its final
    answer ("answer"; empty when none could be extracted)."""
    if content not in CONTENTS:
        raise ValueError(f"tts content must be one of {CONTENTS}, got {content!r}")
    return turn.response if content == "cot" else turn.extracted or ""


def judge_prompt(question: str, shown_answer: str, content: str, style: Style) -> str:
    if style.templates == "paper":
        return paper_judge_prompt(question, shown_answer)
    return tts_task("judge").render(question, shown_answer, cot=content == "cot")


def reflect_prompt(question: str, shown_answer: str, content: str, style: Style) -> str:
    if style.templates == "paper":
        return paper_reflection_prompt(question, shown_answer)
    return tts_task("reflect").render(question, shown_answer, cot=content == "cot")


def p_wrong(turn: Turn) -> float:
    """A judgment's probability that the answer it judged is wrong: p(No) (1 - p(Yes) after a Yes). Without a
    probability, its verdict at face value: 0 after a Yes, 1 otherwise (an unreadable verdict is not a Yes)."""
    if turn.verdict_prob is None:
        return 0.0 if turn.extracted == "Yes" else 1.0
    return 1.0 - turn.verdict_prob if turn.extracted == "Yes" else turn.verdict_prob


def rejects(turn: Turn, reject_above: float | None) -> bool:
    """Whether a judgment sends its answer to reflection: its verdict is not Yes (reject_above None), or its
    p_wrong exceeds reject_above."""
    return turn.extracted != "Yes" if reject_above is None else p_wrong(turn) > reject_above


def read_verdict(response: str, style: Style) -> str | None:
    """The judge's verdict: "Yes" / "No", None when unreadable. The paper's rule takes only a first \\boxed{}
    holding exactly "Yes" or "No" (`\\boxed{yes}`, `\\boxed{\\text{Yes}}`: unreadable, so not a Yes)."""
    if style.templates == "paper":
        return {"Yes": "Yes", "No": "No"}.get(extract_answer(response, "first"))
    return parse_judgment(response, "pointwise")


def verdict_confidences(model, prompts: list[str], images: list[list[ImageSource]], completions: list,
                        verdicts: list[str | None], style: Style) -> list[float | None]:
    """p(verdict) of each judge completion (spark.evaluation.verdicts), read from the box the style reads the
    verdict from; all None from a model that returns text only (no tokenizer: the tests' scripted models)."""
    if getattr(model, "tokenizer", None) is None:
        return [None] * len(completions)
    rendered = model.render(prompts, images, system=style.system)
    return verdict_probabilities(model, rendered, completions, verdicts, "first" if style.templates == "paper" else "last")


def judge(model, traces: list[Trace], *, sampling: Sampling, seed: int = 0, content: str = "cot",
          style: Style = Style()) -> list[Turn]:
    """r_t (eq. 10): each trace's model judges its latest answer, shown as `content` says. Appends a judge
    turn (its verdict: "Yes" / "No" / None when none could be parsed, and the verdict's probability) to every
    trace and returns them."""
    prompts = [judge_prompt(t.problem.question, shown(t.final, content), content, style) for t in traces]
    images = [t.problem.images for t in traces]
    completions = [c for (c,) in _generate(model, prompts, images, sampling, seed, style)]
    verdicts = [read_verdict(c.text, style) for c in completions]
    probabilities = verdict_confidences(model, prompts, images, completions, verdicts, style)
    for trace, prompt, completion, verdict, probability in zip(traces, prompts, completions, verdicts, probabilities):
        trace.turns.append(Turn("judge", trace.final.round, completion.text, completion.num_tokens,
                                completion.finish_reason, verdict, verdict_prob=probability, prompt=prompt))
    return [trace.turns[-1] for trace in traces]


def reflect(model, traces: list[Trace], *, sampling: Sampling, seed: int = 0, content: str = "cot",
            style: Style = Style()) -> None:
    """o_{t+1} (eq. 11, rejected branch): a revised solution from a prompt that shows the judged one."""
    prompts = [reflect_prompt(t.problem.question, shown(t.final, content), content, style) for t in traces]
    outputs = _generate(model, prompts, [t.problem.images for t in traces], sampling, seed, style)
    rounds = [t.final.round + 1 for t in traces]
    turns = _answer_turns("reflect", rounds, [t.problem for t in traces], prompts, [c for (c,) in outputs],
                          style.answer_mode)
    for trace, turn in zip(traces, turns):
        trace.turns.append(turn)


def keep_best(trace: Trace) -> None:
    """Of a trace whose every answer is judged, keep the answer with the lowest p_wrong (the earliest of equals):
    a "keep" turn copying it, unless it is the last answer already."""
    judged = [(p_wrong(turn), k) for k, turn in enumerate(t for t in trace.turns if t.role == "judge")]
    best = trace.answers[min(judged)[1]]
    if best is not trace.final:
        trace.turns.append(Turn("keep", trace.final.round, best.response, 0, best.finish_reason, best.extracted,
                                best.correct))


def refine(model, traces: list[Trace], *, max_rounds: int = 2, sampling: Sampling, seed: int = 0,
           content: str = "cot", style: Style = Style(), reject_above: float | None = None,
           keep_better: bool = False) -> None:
    """Judge, and reflect on what the judge rejects (`rejects`), for up to max_rounds rounds (traces are
    extended); with keep_better, judge the last reflections too and keep the best-rated answer (`keep_best`)."""
    open_traces = traces
    for _ in range(max_rounds):
        judgments = judge(model, open_traces, sampling=sampling, seed=seed, content=content, style=style)
        open_traces = [trace for trace, turn in zip(open_traces, judgments) if rejects(turn, reject_above)]
        if not open_traces:
            return
        reflect(model, open_traces, sampling=sampling, seed=seed, content=content, style=style)
    if keep_better and open_traces:
        judge(model, open_traces, sampling=sampling, seed=seed, content=content, style=style)
        for trace in open_traces:
            keep_best(trace)


def run_tts(model, problems: list[Problem], *, max_rounds: int = 2, sampling: Sampling, seed: int = 0,
            content: str = "cot", style: Style = Style(), reject_above: float | None = None,
            keep_better: bool = False) -> list[Trace]:
    """The whole loop for a batch of problems: one trace per problem."""
    traces = [rows[0] for rows in answer(model, problems, sampling=sampling, seed=seed, style=style)]
    refine(model, traces, max_rounds=max_rounds, sampling=sampling, seed=seed, content=content, style=style,
           reject_above=reject_above, keep_better=keep_better)
    return traces


def reflection_alone(model, traces: list[Trace], *, sampling: Sampling, seed: int = 0, content: str = "cot",
                     style: Style = Style()) -> dict[str, int]:
    """The reflection with the judge left out: every trace's first answer reflected on once, as if the judge had
    said No. `fixed` of the `wrong` first answers turn right, `kept` of the `right` ones stay right. A loop
    whose reflections fix few wrong answers cannot gain whatever its judge (traces are not changed)."""
    copies = [Trace(t.problem, t.turns[:1]) for t in traces]
    reflect(model, copies, sampling=sampling, seed=seed, content=content, style=style)
    first, revised = [bool(t.turns[0].correct) for t in copies], [bool(t.final.correct) for t in copies]
    return {"fixed": sum(r and not f for f, r in zip(first, revised)), "wrong": first.count(False),
            "kept": sum(r and f for f, r in zip(first, revised)), "right": first.count(True)}


def rate(count: int, total: int) -> float:
    """count / total, 0 when there is nothing to count."""
    return count / total if total else 0.0


def _held(trace: Trace, t: int) -> Turn:
    """The answer a trace holds after round t."""
    return [turn for turn in trace.answers if turn.round <= t][-1]


def tts_statistics(traces: list[Trace], max_rounds: int, reject_above: float | None = None) -> dict:
    """What the loop did, over scored traces, with the judge's rule `reject_above` (`rejects`):
    accuracy_by_round[t]: accuracy of the answers held after round t (index 0: before any judging);
    false_accept: an accepted wrong answer (rate over judged wrong answers); false_reject: a rejected right
    one (rate over judged right answers); fixed / broke: reflections that turned a wrong answer right /
    a right one wrong; extra_tokens: tokens of judge and reflect turns, beyond the first answers;
    rounds: for round t = 1 .. max_rounds (o_{t-1} judged, then reflected on unless accepted), its answers
    judged, judged wrong (rejected: reflected on), fixed and broke, and verdict_prob, the mean probability of
    the verdicts that have one (None when none has); kept_earlier: keep_better's picks of an earlier answer (the
    judgments of the last reflections that it asks for are left out of the counts above)."""
    judged_right = judged_wrong = false_accept = false_reject = 0
    rounds = [dict.fromkeys(("judged", "judged_wrong", "fixed", "broke"), 0) for _ in range(max_rounds)]
    confidences: list[list[float]] = [[] for _ in range(max_rounds)]
    for trace in traces:
        right = False  # whether the answer held at this point of the trace is correct
        for turn in trace.turns:
            if turn.role == "judge" and turn.round < max_rounds:
                rejected = rejects(turn, reject_above)
                judged_right += right
                judged_wrong += not right
                false_accept += not rejected and not right
                false_reject += rejected and right
                rounds[turn.round]["judged"] += 1
                rounds[turn.round]["judged_wrong"] += rejected
                if turn.verdict_prob is not None:
                    confidences[turn.round].append(turn.verdict_prob)
            elif turn.role == "reflect":
                rounds[turn.round - 1]["fixed"] += not right and bool(turn.correct)
                rounds[turn.round - 1]["broke"] += right and not turn.correct
            if turn.role in ANSWER_ROLES:
                right = bool(turn.correct)
    answer_tokens = sum(t.turns[0].num_tokens for t in traces)
    accuracy_by_round = [rate(sum(bool(_held(trace, t).correct) for trace in traces), len(traces))
                         for t in range(max_rounds + 1)]
    return {
        "accuracy_by_round": accuracy_by_round,
        "judged": judged_right + judged_wrong,
        "false_accept": false_accept,
        "false_accept_rate": rate(false_accept, judged_wrong),
        "false_reject": false_reject,
        "false_reject_rate": rate(false_reject, judged_right),
        "reflections": sum(turn.role == "reflect" for t in traces for turn in t.turns),
        "fixed": sum(r["fixed"] for r in rounds),
        "broke": sum(r["broke"] for r in rounds),
        "kept_earlier": sum(turn.role == "keep" for t in traces for turn in t.turns),
        "answer_tokens": answer_tokens,
        "extra_tokens": sum(turn.num_tokens for t in traces for turn in t.turns) - answer_tokens,
        "rounds": [{"round": t + 1, "accuracy": accuracy_by_round[t + 1], **counts,
                    "verdict_prob": sum(confidences[t]) / len(confidences[t]) if confidences[t] else None}
                   for t, counts in enumerate(rounds)],
    }


def format_rounds(statistics: dict) -> str:
    """`tts_statistics`' rounds as a table: round 0 the first answers' accuracy, then each round's."""
    lines = ["round  accuracy  judged  judged wrong  fixed  broke  verdict prob",
             f"{0:>5}  {100 * statistics['accuracy_by_round'][0]:>7.1f}%  {'-':>6}  {'-':>12}  {'-':>5}  {'-':>5}  "
             f"{'-':>12}"]
    lines += [f"{r['round']:>5}  {100 * r['accuracy']:>7.1f}%  {r['judged']:>6}  {r['judged_wrong']:>12}  "
              f"{r['fixed']:>5}  {r['broke']:>5}  "
              f"{'-' if r['verdict_prob'] is None else format(r['verdict_prob'], '.3f'):>12}"
              for r in statistics["rounds"]]
    return "\n".join(lines)


def format_trace(trace: Trace, *, show_prompts: bool = False) -> str:
    """The exchange as terminal text: each turn under a rule naming its round and role, then its outcome."""
    lines = [f"Question: {trace.problem.question}"]
    lines += [f"Image: {image_label(image)}" for image in trace.problem.images]
    for turn in trace.turns:
        title = {"answer": "answer", "judge": "self-judgment", "reflect": "reflection", "keep": "kept"}[turn.role]
        lines += ["", f"── round {turn.round} · {title} " + "─" * 40]
        if show_prompts and turn.prompt:
            lines += [turn.prompt, "· · ·"]
        lines.append(turn.response.strip())
        if turn.role == "judge":
            outcome = f"verdict: {turn.extracted or 'unparsed'}"
            if turn.verdict_prob is not None:
                outcome += f" (probability {turn.verdict_prob:.3f})"
        else:
            outcome = f"answer: {turn.extracted or 'none'}"
            if turn.correct is not None:
                outcome += " (correct)" if turn.correct else f" (wrong; gold {trace.problem.gold})"
        lines.append(f"=> {outcome}  [{turn.num_tokens} tokens, {turn.finish_reason}]")
    lines += ["", f"Final answer: {trace.final.extracted or 'none'}"]
    return "\n".join(lines)
