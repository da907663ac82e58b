r"""Verifiable reward: does a response's final answer equal the gold answer?

The reward is the only ground truth the method has, so the verifier aims to grade like a careful
human and to stay bounded in time whatever the input.

- `extract_answer` (spark.verify.extraction) finds the final answer in one of three modes (ANSWER_MODES):
  "strict" reads only the last `\boxed{}` / `\fbox{}`, the format every prompt asks for; "first" only the
  first one, as the authors' evaluation scripts read answers and verdicts; "lenient" reads it as a human
  grader would: several boxes that together are the answer, "Answer: X", "The final answer is $X$",
  `<answer>` tags, `#### X`, a final bold value, other languages, and a boxed answer withdrawn and
  corrected. Precision first: no clear final answer, or a hedge between values, is wrong.
- `score_batch` / `is_correct` (spark.verify.scoring; lenient by default) normalise both sides (spacing,
  `\text{}`, units, degrees, `\$`, `\%`, number words: spark.verify.normalise), then compare structure
  (tuples and intervals in order, sets and lists of roots in any order, matrices, unions, set-builder
  sets, equations, inequalities: spark.verify.structure) and finally each leaf (spark.verify.equivalence):
  exact string, exact rational number, multiple-choice letter (or, lenient, the value of an option the
  response lists), word (spark.verify.literals), and only then sympy (spark.verify.sympy_check).
- The sympy part runs in a reusable pool of worker processes (spark.verify.pool). A check that exceeds its
  timeout has its worker killed and replaced; it scores 0 and is counted in `verifier_stats()`, never
  raised. A worker that dies mid-check (killed from outside) is replaced and its check sent again, once.
  Answers too long or too deeply nested are rejected unparsed (spark.verify.limits).
- `parse_judgment` (spark.verify.judgments) reads a judge's verdict: `Yes`/`No` (pointwise) or `A`/`B`
  (pairwise).

The submodules import one another directly, never this package, so that none of them imports it half-built.
"""

from spark.verify.extraction import ANSWER_MODES, AnswerMode, extract_answer
from spark.verify.judgments import parse_judgment
from spark.verify.pool import verifier_stats
from spark.verify.scoring import is_correct, score_batch

__all__ = [
    "ANSWER_MODES",
    "AnswerMode",
    "extract_answer",
    "is_correct",
    "parse_judgment",
    "score_batch",
    "verifier_stats",
]
