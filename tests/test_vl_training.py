"""Qwen2.5-VL through the system: image prompts in ChatModel, image inputs in the trainer's rollouts and
packed updates, and a few SPARK steps of a tiny VL checkpoint on generated pictures, recycling included."""

import dataclasses
import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

import spark.generation.chat
from spark.data.images import load_image
from spark.data.rows import Sample
from spark.generation.chat import ChatModel, image_inputs, load_chat_model
from spark.generation.sampler import Sampling, SamplingParams, generate
from spark.models import Qwen2_5_VL, load_model, save_model
from spark.models.tiny import make_tiny_vl_checkpoint
from spark.rl.packing import pack
from spark.rl.rollout import Experience, Rollouts, task_image_configs
from spark.tasks.prompts import math_prompt
from spark.trainer import Trainer
from tests.test_trainer import torchrun
from tests.trainer_utils import tiny_config

QUESTION = "How many shapes are in the picture?"
# (shapes, height, width): odd sizes and aspect ratios.
PICTURES = [(1, 61, 83), (2, 97, 45), (3, 75, 75), (2, 50, 121), (1, 88, 64), (3, 41, 99)]
JUDGE_MAX_PIXELS = 56 * 56


def draw_shapes(count: int, height: int, width: int, seed: int) -> Image.Image:
    """`count` coloured ellipses and rectangles on a white canvas."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        x, y = rng.randrange(width - 12), rng.randrange(height - 12)
        box = (x, y, x + rng.randint(8, 12), y + rng.randint(8, 12))
        colour = rng.choice(["red", "green", "blue", "orange"])
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def write_rows(folder: Path) -> Path:
    """ViRL-style rows {question, answer, image} (image paths relative to the file), plus one text row."""
    rows = []
    for i, (count, height, width) in enumerate(PICTURES):
        draw_shapes(count, height, width, seed=i).save(folder / f"shapes_{i}.png")
        rows.append({"question": QUESTION, "answer": str(count), "image": f"shapes_{i}.png"})
    rows.append({"question": "What is 1 + 2?", "answer": "3", "image": None})
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def warm_up(chat: ChatModel, rows: list[dict], folder: Path, steps: int = 40) -> None:
    r"""Supervised steps on `\boxed{answer}` with the images, so that sampled answers vary and groups mix."""
    model, tokenizer = chat.model, chat.tokenizer
    prompts = chat.render([math_prompt(row["question"]) for row in rows],
                          [[str(folder / row["image"])] if row["image"] else [] for row in rows])
    answers = [tokenizer(f"\\boxed{{{row['answer']}}}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for row in rows]
    T = max(len(p.ids) + len(a) for p, a in zip(prompts, answers))
    input_ids = torch.full((len(rows), T), tokenizer.pad_token_id)
    targets = torch.full((len(rows), T), -100)
    for b, (prompt, answer) in enumerate(zip(prompts, answers)):
        input_ids[b, :len(prompt.ids) + len(answer)] = torch.tensor(prompt.ids + answer)
        targets[b, len(prompt.ids):len(prompt.ids) + len(answer)] = torch.tensor(answer)
    inputs = image_inputs((p.images for p in prompts), "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        logits = model(input_ids, **inputs)[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def vl_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(random checkpoint, warmed-up checkpoint, data file)."""
    folder = tmp_path_factory.mktemp("vl_training")
    random_init = make_tiny_vl_checkpoint(folder / "random", seed=1)
    data = write_rows(folder)
    chat = load_chat_model(str(random_init))
    torch.manual_seed(0)
    warm_up(chat, [json.loads(line) for line in data.read_text().splitlines()], folder)
    save_model(chat.model, folder / "ckpt")
    return random_init, folder / "ckpt", data


def vl_config(checkpoint: Path, data: Path, out: Path, *overrides: str):
    return tiny_config(checkpoint, data, out, "rollout.n=4", "rollout.max_new_tokens=8",
                       "loss.micro_batch_tokens=400", f"data.judge_max_pixels={JUDGE_MAX_PIXELS}", *overrides)


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """transformers 5's processor insists on a video processor, which needs torchvision; images need none."""

    def check_argument_for_proper_class(self, name, arg):
        return arg if arg is None else super().check_argument_for_proper_class(name, arg)


def test_render_matches_the_transformers_processor(vl_files):
    checkpoint, _, data = vl_files
    chat = load_chat_model(str(checkpoint))
    image_pad = chat.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    processor = ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=chat.image_config.min_pixels,
                                                 max_pixels=chat.image_config.max_pixels),
        tokenizer=chat.tokenizer, chat_template=chat.tokenizer.chat_template)
    for i in range(len(PICTURES)):
        path = data.parent / f"shapes_{i}.png"
        prompt = chat.render([QUESTION], [[str(path)]])[0]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        reference = processor(text=[text], images=[Image.open(path)], return_tensors="pt")
        assert prompt.ids == reference["input_ids"][0].tolist()
        assert prompt.ids.count(image_pad) == int(reference["image_grid_thw"].prod()) // 4 > 1
        assert torch.equal(prompt.images["pixel_values"], reference["pixel_values"])
        assert torch.equal(prompt.images["image_grid_thw"], reference["image_grid_thw"])
    # A text row renders as the text template, and a smaller max_pixels gives fewer image tokens.
    assert chat.render([QUESTION])[0].ids == chat.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=True, return_dict=False)
    small = chat.render([QUESTION], [[str(data.parent / "shapes_0.png")]],
                        image_config=dataclasses.replace(chat.image_config, max_pixels=JUDGE_MAX_PIXELS))[0]
    full = chat.render([QUESTION], [[str(data.parent / "shapes_0.png")]])[0]
    assert small.ids.count(image_pad) < full.ids.count(image_pad)
    # A system message (the paper preset's) comes first, as the processor renders it.
    system = [{"role": "system", "content": "You are a helpful assistant."}]
    text = processor.apply_chat_template(system + messages, add_generation_prompt=True, tokenize=False)
    reference = processor(text=[text], images=[Image.open(path)], return_tensors="pt")
    with_system = chat.render([QUESTION], [[str(path)]], system=system[0]["content"])[0]
    assert with_system.ids == reference["input_ids"][0].tolist()


def test_two_image_prompt_matches_the_transformers_processor_and_model(vl_files):
    """A question with two images, one embedded (PNG bytes) and one a path, placed by `<image>` markers:
    the same ids and pixels as Qwen2_5_VLProcessor, the same logits as Qwen2_5_VLForConditionalGeneration."""
    checkpoint, _, data = vl_files
    chat = load_chat_model(str(checkpoint))
    processor = ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=chat.image_config.min_pixels,
                                                 max_pixels=chat.image_config.max_pixels),
        tokenizer=chat.tokenizer, chat_template=chat.tokenizer.chat_template)
    left, right = data.parent / "shapes_1.png", data.parent / "shapes_3.png"
    prompt = chat.render(["<image>Left.\n<image>Right. Which has more shapes?"],
                         [[left.read_bytes(), str(right)]])[0]
    content = [{"type": "image"}, {"type": "text", "text": "Left.\n"}, {"type": "image"},
               {"type": "text", "text": "Right. Which has more shapes?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    reference = processor(text=[text], images=[Image.open(left), Image.open(right)], return_tensors="pt")
    assert prompt.ids == reference["input_ids"][0].tolist()
    assert torch.equal(prompt.images["pixel_values"], reference["pixel_values"])
    assert torch.equal(prompt.images["image_grid_thw"], reference["image_grid_thw"])
    assert len(prompt.images["image_grid_thw"]) == 2 and "<image>" not in chat.tokenizer.decode(prompt.ids)
    hf_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint).eval()
    input_ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        ours = chat.model(input_ids, **image_inputs([prompt.images], "cpu"))
        theirs = hf_model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                          mm_token_type_ids=reference["mm_token_type_ids"], pixel_values=reference["pixel_values"],
                          image_grid_thw=reference["image_grid_thw"]).logits
    assert (ours - theirs).abs().max() < 1e-4
    # Without markers the images come first, in order; markers must match the images in number.
    first = chat.render(["Which has more shapes?"], [[str(left), str(right)]])[0]
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which has more shapes?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    assert first.ids == processor(text=[text], images=[Image.open(left), Image.open(right)])["input_ids"][0]
    with pytest.raises(ValueError, match="1 <image> placeholders for 2 images"):
        chat.render(["<image> only one mark"], [[str(left), str(right)]])


def test_rollouts_of_a_prompt_encode_its_images_once(vl_files):
    """ChatModel.complete samples the n copies of a prompt with its images passed once (image_index)."""
    checkpoint, _, data = vl_files
    chat = load_chat_model(str(checkpoint))
    prompts = chat.render([QUESTION, "What is 1 + 2?", QUESTION],
                          [[str(data.parent / "shapes_1.png")], [], [str(data.parent / f"shapes_{i}.png") for i in (2, 3)]])
    rows = [p for p in prompts for _ in range(4)]
    inputs = image_inputs((row.images for row in rows), "cpu")
    assert inputs["image_index"].tolist() == [0] * 4 + [1, 2] * 4
    assert len(inputs["image_grid_thw"]) == 12
    assert len(inputs["pixel_values"]) == sum(len(p.images["pixel_values"]) for p in prompts if p.images)
    encoded = []
    hook = chat.model.visual.register_forward_hook(lambda module, args, out: encoded.append(args[0].shape[0]))
    try:
        chat.complete(prompts, Sampling(max_new_tokens=2), n=4)
    finally:
        hook.remove()
    assert encoded == [len(inputs["pixel_values"])]


def test_recycled_prompts_share_their_questions_image_decode(vl_files, monkeypatch):
    """A question's policy prompt and its recycled judge prompts (other text, the same image) decode the image
    once per task resolution, and each prompt gets the pixels it would get alone."""
    checkpoint, _, data = vl_files
    chat = load_chat_model(str(checkpoint))
    rollouts = Rollouts(chat, task_image_configs(chat.image_config, judge_max_pixels=JUDGE_MAX_PIXELS), 4096)
    image = [str(data.parent / "shapes_2.png")]
    samples = [Sample(QUESTION, "3", "policy", image), Sample("Is 3 correct?", "Yes", "pointwise", image),
               Sample("Which is correct?", "A", "pairwise", image), Sample(QUESTION, "2", "policy", image)]
    alone = [rollouts.render([sample])[0] for sample in samples]
    decoded = []
    monkeypatch.setattr(spark.generation.chat, "load_image", lambda source: decoded.append(source) or load_image(source))
    together = rollouts.render(samples)
    assert decoded == image * 2  # the policy resolution, then the judges' smaller one
    for one, shared in zip(alone, together):
        assert one.ids == shared.ids
        assert torch.equal(one.images["pixel_values"], shared.images["pixel_values"])
    assert len(together[1].images["pixel_values"]) < len(together[0].images["pixel_values"])


def test_vl_generate_never_samples_vision_tokens(vl_files, monkeypatch):
    checkpoint, _, data = vl_files
    chat = load_chat_model(str(checkpoint))
    vision = {chat.tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")}
    assert set(chat.banned_token_ids) == vision
    # A head that favours the vision tokens by +100: unbanned, they are all that is sampled.
    head = chat.model.lm_head
    chat.model.lm_head = nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        chat.model.lm_head.weight.copy_(head.weight)
        chat.model.lm_head.bias.zero_()[sorted(vision)] = 100.0
    prompts = chat.render([QUESTION, "What is 1 + 2?"], [[str(data.parent / "shapes_1.png")], []])
    ids, inputs = [p.ids for p in prompts], image_inputs((p.images for p in prompts), "cpu")
    free = generate(chat.model, ids, SamplingParams(max_new_tokens=5), seed=0, **inputs)
    assert all(set(row) <= vision for row in free.tokens)
    banned = generate(chat.model, ids, SamplingParams(max_new_tokens=5, banned_token_ids=chat.banned_token_ids),
                      seed=0, **inputs)
    assert not vision & {t for row in banned.tokens for t in row}
    # ChatModel.generate bans them itself.
    seen = []
    monkeypatch.setattr(spark.generation.chat, "generate", lambda *args, **kwargs: seen.append(args[2]) or generate(*args, **kwargs))
    chat.generate([QUESTION], [[str(data.parent / "shapes_1.png")]], max_new_tokens=3, temperature=1.0)
    assert seen[0].banned_token_ids == chat.banned_token_ids


def trainer_pack(trainer: Trainer, experiences: list[Experience]):
    return pack(experiences, no_loss=trainer.no_loss_sequence, task_weights=trainer.config.spark.task_weights, drop_truncated=False)


def test_trainer_gives_recycled_prompts_their_pixels_and_packs_images(vl_files, tmp_path):
    _, checkpoint, data = vl_files
    trainer = Trainer(vl_config(checkpoint, data, tmp_path / "run"))
    policy = trainer.questions[0]
    recycled = Sample("Is this right?", "No", task="pointwise", images=policy.images)
    text = trainer.questions[-1]
    assert len(policy.images) == 1 and text.images == []
    prompts = trainer.rollouts.render([policy, recycled, text])
    assert prompts[1].images["image_grid_thw"].prod() * 14 * 14 <= JUDGE_MAX_PIXELS
    assert prompts[0].images["image_grid_thw"].prod() > prompts[1].images["image_grid_thw"].prod()
    assert prompts[2].images == {}
    experiences = [Experience(sample, prompt.ids, [5, 6], "r", 1.0, False, images=prompt.images)
                   for sample, prompt in zip([policy, recycled, text], prompts)]
    batch = trainer_pack(trainer, experiences)
    grids = torch.cat([prompts[0].images["image_grid_thw"], prompts[1].images["image_grid_thw"]])
    assert torch.equal(batch.images["image_grid_thw"], grids)
    assert torch.equal(batch.images["pixel_values"],
                       torch.cat([prompts[0].images["pixel_values"], prompts[1].images["pixel_values"]]))
    # The model checks every packed sequence's <|image_pad|> count against its own image.
    logp, _ = trainer.response_logprobs(trainer.policy, batch)
    assert logp.shape == (3, 2) and torch.isfinite(logp).all()
    # Without images (a text-only or an empty micro-batch) a filler image keeps the vision tower running.
    for batch in (trainer_pack(trainer, experiences[2:]), trainer_pack(trainer, [])):
        assert batch.images["image_grid_thw"].tolist() == [[1, 2, 2]]
        assert torch.isfinite(trainer.response_logprobs(trainer.policy, batch)[0]).all()


def test_bf16_reference_is_resharded_and_vision_blocks_rotate_in_fp32(vl_files, tmp_path):
    """Under mixed precision the frozen reference is held in bf16 and sharded again after its pass (FSDP would
    keep its root gathered), and a sharded vision block gets the rotary tables in fp32, as the sampler does."""
    _, checkpoint, data = vl_files
    trainer = Trainer(vl_config(checkpoint, data, tmp_path / "run", "model.mixed_precision=true"))
    assert {p.dtype for p in trainer.reference.parameters()} == {torch.bfloat16}
    rotary_dtypes = []
    for model in (trainer.policy, trainer.rollouts.chat.model):
        model.visual.blocks[0].register_forward_pre_hook(lambda block, args: rotary_dtypes.append(args[1].dtype))
    sample = trainer.questions[0]
    prompt = trainer.rollouts.render([sample])[0]
    experiences = [Experience(sample, prompt.ids, [5, 6], "r", reward, False, advantage=reward - 0.5,
                              images=prompt.images) for reward in (0.0, 1.0)]
    trainer.update(experiences)
    assert isinstance(trainer.reference.lm_head.weight, DTensor)
    trainer.rollouts.chat.complete(trainer.rollouts.render([sample]), Sampling(max_new_tokens=1))
    assert rotary_dtypes == [torch.float32, torch.float32]


def test_spark_steps_on_pictures_with_recycling(vl_files, tmp_path):
    _, checkpoint, data = vl_files
    out = tmp_path / "run"
    Trainer(vl_config(checkpoint, data, out)).train()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["loss"]) and math.isfinite(m["recycled/loss"]) and math.isfinite(m["kl"])
        assert m["recycle/pointwise"] + m["recycle/reflection"] > 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    recycled = [s for s in samples if s["task"] != "policy"]
    assert recycled and all(Path(i).parent == data.parent for s in recycled for i in s["images"])
    assert any(s["images"] for s in recycled), "recycled prompts carry their group's image"
    # The export is a Qwen2.5-VL checkpoint whose language model and vision tower both moved.
    before, after = load_model(checkpoint), load_model(out / "export")
    assert isinstance(after, Qwen2_5_VL) and (out / "export" / "preprocessor_config.json").exists()
    changed = {name.split(".")[0] for (name, a), b in zip(after.named_parameters(), before.parameters())
               if (a - b).abs().max() > 0}
    assert changed == {"model", "visual", "lm_head"}


def write_virl39k(folder: Path) -> Path:
    """The pictures as ViRL39K's hub Parquet ships rows (answer, category, qid, images: a list of embedded
    images, problem with one `<image>` per image, id): one-picture and two-picture rows."""
    images = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    schema = pa.schema([("answer", pa.string()), ("category", pa.string()), ("qid", pa.string()),
                        ("images", images), ("problem", pa.string()), ("id", pa.int64())])
    pictures = [(folder / f"shapes_{i}.png").read_bytes() for i in range(len(PICTURES))]
    rows = [{"answer": str(PICTURES[i][0]), "images": [{"bytes": pictures[i], "path": f"{i}.png"}],
             "problem": f"<image>{QUESTION}"} for i in range(3)]
    rows += [{"answer": str(PICTURES[i][0] + PICTURES[i + 1][0]),
              "images": [{"bytes": pictures[i], "path": None}, {"bytes": pictures[i + 1], "path": None}],
              "problem": "<image>\n<image>\nHow many shapes are in the two pictures?"} for i in (3, 4)]
    rows = [row | {"category": "(GradeSchool) Spatial", "qid": str(k), "id": k} for k, row in enumerate(rows)]
    (folder / "ViRL39K").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "ViRL39K" / "train-00000-of-00001.parquet")
    return folder / "ViRL39K"


def test_spark_steps_on_virl39k_parquet_with_multi_image_rows(vl_files, tmp_path):
    _, checkpoint, data = vl_files
    virl = write_virl39k(data.parent)
    out = tmp_path / "run"
    config = vl_config(checkpoint, data, out, f"data.train_files=[{json.dumps(str(virl / '*.parquet'))}]",
                       'data.question_field="problem"', 'data.image_field="images"', "data.prompts_per_step=5", "rollout.n=2",
                       "run.max_steps=1")
    trainer = Trainer(config)
    assert [len(q.images) for q in trainer.questions] == [1, 1, 1, 2, 2]
    two = trainer.rollouts.render([trainer.questions[3]])[0]
    assert len(two.images["image_grid_thw"]) == 2
    trainer.train()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    assert math.isfinite(metrics[0]["loss"]) and math.isfinite(metrics[0]["recycled/loss"])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    recycled = [s for s in samples if s["task"] != "policy"]
    assert recycled and all(image.startswith("<embedded image") for s in samples for image in s["images"])


@pytest.mark.slow
def test_two_rank_fsdp_run_with_an_image_row_and_a_text_row(vl_files, tmp_path):
    """Each step one rank trains on the picture and the other on the text question: the text rank's filler
    image keeps the vision blocks' FSDP collectives in step."""
    _, checkpoint, data = vl_files
    rows = data.read_text().splitlines()
    two_rows = data.parent / "two_rows.jsonl"
    two_rows.write_text(rows[0] + "\n" + rows[-1] + "\n")
    config = tmp_path / "vl.toml"
    config.write_text(f'[model]\npath = "{checkpoint}"\n[data]\ntrain_files = ["{two_rows}"]\n')
    out = tmp_path / "run"
    overrides = ["data.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=8", "run.max_steps=2",
                 f"run.out_dir={json.dumps(str(out))}", "optim.lr=1e-3", "loss.micro_batch_tokens=60",
                 "spark.recycle.balance_labels=false", "spark.recycle.content=cot"]
    torchrun(2, "train.py", str(config), *overrides)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert isinstance(load_model(out / "export"), Qwen2_5_VL)
