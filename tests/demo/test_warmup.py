"""The supervised warm-up (spark.demo.warmup): the packed loss and that a few steps lower it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from spark.demo import arithmetic, warmup
from spark.demo import pipeline as demo
from spark.models import load_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return demo.build_demo_checkpoint(tmp_path_factory.mktemp("warmup") / "init",
                                      demo.DemoModel(hidden_size=32, num_layers=1))


def test_packed_response_nll_is_the_token_weighted_mean_of_each_sequence(checkpoint):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = load_model(checkpoint)
    examples = arithmetic.warmup_examples(arithmetic.make_problems(2, seed=0), seed=0)
    batch = [warmup.encode_example(tokenizer, p, r) for p, r in examples]
    weights = [len(ids) - num_prompt for ids, num_prompt in batch]  # response tokens (+ end of turn)
    with torch.no_grad():
        alone = [warmup.response_nll(model, [example]).item() for example in batch]
        packed = warmup.response_nll(model, batch).item()
    assert packed == pytest.approx(sum(w * x for w, x in zip(weights, alone)) / sum(weights), rel=1e-5)


def test_warmup_lowers_the_loss(checkpoint):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = load_model(checkpoint)
    examples = arithmetic.warmup_examples(arithmetic.make_problems(64, seed=0), seed=0)
    batch = [warmup.encode_example(tokenizer, p, r) for p, r in examples[:16]]
    with torch.no_grad():
        before = warmup.response_nll(model, batch).item()
    losses = warmup.warm_up(model, tokenizer, examples, steps=8, batch_size=16, lr=1e-2)
    with torch.no_grad():
        after = warmup.response_nll(model, batch).item()
    assert len(losses) == 8 and after < before - 0.5


def test_warmup_stops_when_asked_and_only_at_checks(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = load_model(checkpoint)
    examples = arithmetic.warmup_examples(arithmetic.make_problems(16, seed=0), seed=0)
    asked = []

    def stop(step: int) -> bool:
        assert not model.training
        asked.append(step)
        return step >= 4

    losses = warmup.warm_up(model, tokenizer, examples, steps=10, batch_size=4, stop=stop, check_every=2)
    assert asked == [2, 4] and len(losses) == 4 and not model.training
