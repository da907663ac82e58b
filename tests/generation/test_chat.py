from __future__ import annotations

import pytest

from spark.errors import UserError
from spark.generation.chat import Completion, load_chat_model
from spark.generation.sampler import SamplingParams, generate
from spark.models.tiny import make_tiny_checkpoint

PROMPTS = ["What is 1 + 2?", "Please answer Yes or No."]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return load_chat_model(str(make_tiny_checkpoint(tmp_path_factory.mktemp("chat"), seed=2)))


def test_render_applies_the_chat_template(chat):
    ids = [prompt.ids for prompt in chat.render(PROMPTS)]
    for prompt, row in zip(PROMPTS, ids):
        expected = chat.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=True, return_dict=False)
        assert row == expected
        assert chat.tokenizer.decode(row).endswith("<|im_start|>assistant\n")


def test_a_system_message_comes_first(chat):
    system = "You are a helpful assistant."
    (prompt,) = chat.render(PROMPTS[:1], system=system)
    assert chat.tokenizer.decode(prompt.ids) == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
                                                 f"{PROMPTS[0]}<|im_end|>\n<|im_start|>assistant\n")
    rollouts = generate(chat.model, [prompt.ids], SamplingParams(max_new_tokens=6, temperature=0.0,
                                                                stop_token_ids=chat.stop_token_ids))
    assert chat.generate(PROMPTS[:1], max_new_tokens=6, system=system)[0][0].token_ids == rollouts.tokens[0]


def test_stop_tokens_include_qwen_end_of_turn_and_text(chat):
    vocab = chat.tokenizer.get_vocab()
    assert {vocab["<|im_end|>"], vocab["<|endoftext|>"], chat.tokenizer.eos_token_id} == set(chat.stop_token_ids)


def test_generate_returns_n_decoded_completions_per_prompt(chat):
    out = chat.generate(PROMPTS, max_new_tokens=6, temperature=1.0, n=3, seed=1)
    assert [len(group) for group in out] == [3, 3]
    for group in out:
        for completion in group:
            assert isinstance(completion, Completion) and isinstance(completion.text, str)
            assert 1 <= completion.num_tokens <= 6
            assert completion.finish_reason == ("length" if completion.num_tokens == 6 else "stop")
    assert len({c.text for group in out for c in group}) > 1, "sampled completions should differ"


def test_greedy_text_is_the_decoded_sampler_output(chat):
    out = chat.generate(PROMPTS, max_new_tokens=8, n=2)
    rollouts = generate(chat.model, [prompt.ids for prompt in chat.render(PROMPTS)],
                        SamplingParams(max_new_tokens=8, temperature=0.0, stop_token_ids=chat.stop_token_ids))
    for group, tokens, reason in zip(out, rollouts.tokens, rollouts.finish_reasons):
        expected = Completion(chat.tokenizer.decode(tokens, skip_special_tokens=True), tokens, reason)
        assert group == [expected, expected]


def test_small_batches_give_the_same_greedy_completions(chat, monkeypatch):
    whole = chat.generate(PROMPTS, max_new_tokens=5, n=2)
    monkeypatch.setattr(chat, "max_batch_rows", 3)
    assert chat.generate(PROMPTS, max_new_tokens=5, n=2) == whole


def test_images_need_the_vl_model(chat):
    with pytest.raises(UserError, match=r"^a.png: images need a Qwen2.5-VL checkpoint$"):
        chat.generate(PROMPTS, images=[["a.png"], []])
    with pytest.raises(ValueError, match="image lists for 1 prompts, but 2 prompts"):
        chat.generate(PROMPTS, images=[[]])
