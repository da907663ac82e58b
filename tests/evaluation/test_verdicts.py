"""The verdict's probability: located in the judge's tokens, and equal to a hand computation from the logits."""

from __future__ import annotations

import math

import pytest
import torch

from spark.evaluation.tts import Problem, answer, run_tts
from spark.evaluation.verdicts import verdict_probabilities, verdict_start, verdict_tokens
from spark.generation.chat import Completion, load_chat_model
from spark.generation.sampler import Sampling
from spark.models.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return load_chat_model(str(make_tiny_checkpoint(tmp_path_factory.mktemp("verdicts"), seed=4)))


def test_verdict_start_reads_the_box_the_verdict_was_read_from():
    response = r"First \boxed{No} then \boxed{\text{yes}}."
    assert response[verdict_start(response, "Yes", "last"):].startswith("yes")
    assert response[verdict_start(response, "No", "first"):].startswith("No}")
    assert verdict_start(response, None, "last") is None
    assert verdict_start("no box: Yes", "Yes", "last") is None


def test_verdict_token_and_its_alternative(chat):
    tokenizer = chat.tokenizer
    text = r"Checked 4. \boxed{Yes}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    k, verdict, other = verdict_tokens(tokenizer, text, ids, verdict_start(text, "Yes", "last"))
    assert tokenizer.decode(ids[:k]) == r"Checked 4. \boxed{"
    assert (tokenizer.decode([verdict]), tokenizer.decode([other])) == ("Yes", "No")


def test_verdict_probability_is_the_softmax_of_the_two_logits_after_the_judges_tokens(chat):
    tokenizer = chat.tokenizer
    prompts = ["Is 2 + 2 = 4?", "Is 2 + 2 = 5?"]
    texts = [r"Checked 4. \boxed{Yes}", r"The sum is 4, not 5. \boxed{No}."]
    completions = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        completions.append(Completion(text, ids, "stop"))
    rendered = chat.render(prompts)
    got = verdict_probabilities(chat, rendered, completions, ["Yes", "No"], "last")
    yes, no = tokenizer.convert_tokens_to_ids(["Yes", "No"])
    for prompt, text, completion, verdict, probability in zip(rendered, texts, completions, (yes, no), got):
        before = tokenizer(text[:text.index("{") + 1], add_special_tokens=False)["input_ids"]
        assert completion.token_ids[len(before)] == verdict
        with torch.no_grad():
            logits = chat.model(torch.tensor([prompt.ids + before]))[0, -1].double()
        l_verdict, l_other = logits[verdict].item(), logits[no if verdict == yes else yes].item()
        assert probability == pytest.approx(math.exp(l_verdict) / (math.exp(l_verdict) + math.exp(l_other)), abs=1e-5)
    # an unreadable verdict has none
    assert verdict_probabilities(chat, rendered[:1], completions[:1], [None], "last") == [None]


def test_a_threshold_of_one_keeps_every_first_answer(chat):
    problems = [Problem(f"What is {i} + 1?", str(i + 1)) for i in range(4)]
    sampling = Sampling(max_new_tokens=12, temperature=0.0)
    first = [rows[0].final for rows in answer(chat, problems, sampling=sampling)]
    traces = run_tts(chat, problems, max_rounds=2, sampling=sampling, reject_above=1.0)
    assert [t.final.response for t in traces] == [turn.response for turn in first]
    assert all([turn.role for turn in t.turns] == ["answer", "judge"] for t in traces)


def test_a_vl_verdict_is_scored_with_its_image(tmp_path):
    # the reference: the model's full forward with the image (tests/test_vl_training.py holds it to transformers')
    from PIL import Image

    from spark.generation.chat import image_inputs
    from spark.models.tiny import make_tiny_vl_checkpoint

    chat = load_chat_model(str(make_tiny_vl_checkpoint(tmp_path / "vl", seed=5)))
    image = tmp_path / "square.png"
    Image.new("RGB", (56, 84), (200, 30, 90)).save(image)
    text = r"Checked 4. \boxed{No}"
    ids = chat.tokenizer(text, add_special_tokens=False)["input_ids"]
    (prompt,) = chat.render(["Is the square red? <image>"], [[str(image)]])
    (probability,) = verdict_probabilities(chat, [prompt], [Completion(text, ids, "stop")], ["No"], "last")
    before = chat.tokenizer(text[:text.index("{") + 1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = chat.model(torch.tensor([prompt.ids + before]), **image_inputs([prompt.images], "cpu"))[0, -1]
    yes, no = chat.tokenizer.convert_tokens_to_ids(["Yes", "No"])
    l_no, l_yes = logits[no].double().item(), logits[yes].double().item()
    assert probability == pytest.approx(math.exp(l_no) / (math.exp(l_no) + math.exp(l_yes)), abs=1e-5)
