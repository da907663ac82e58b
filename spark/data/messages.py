"""Training rows as the authors' files hold them: a chat in OpenRLHF's message schema.

The SPARK release trains with OpenRLHF (LMM-R1) on rows `{"message": CHAT, "answer": GOLD}` (their
`--input_key message --label_key answer`), where CHAT is a JSON string of chat messages:

    [{"role": "user", "content": [{"type": "image", "image": "images/1.png"},
                                  {"type": "text", "text": "QUESTION\\nPlease first conduct reasoning, ..."}]}]

Their chat template renders the user message's parts in order. `chat_question` turns such a chat into what
a row of our own schema holds, a question and its images, so that `spark.tasks.prompts.math_prompt` gives the
same policy prompt: the text parts joined, an `<image>` placeholder where an image part follows text (an
image before all text is shown first anyway), and the `\\boxed{}` instruction the authors' text ends with
removed, since math_prompt appends its own.
"""

from __future__ import annotations

import json
from pathlib import Path

from spark.data.images import IMAGE_PLACEHOLDER
from spark.errors import DataError
from spark.tasks.prompts import MATH_SUFFIX

# The instruction a question of the authors' rows may end with: as their recycling code strips it from
# the training prompts (openrlhf/trainer/ppo_utils/new_data_gen.py, the period inside the quotes), and
# as their README and evaluation append it (ours).
AUTHORS_SUFFIXES = (
    "\nPlease first conduct reasoning, and then answer the question. Repeat the final answer using a '\\boxed{}.'",
    "\n" + MATH_SUFFIX,
)
# The file URI scheme qwen_vl_utils accepts for a local image.
FILE_URI = "file://"


def chat_question(chat: object, *, path: str | Path, line: int, key: str) -> tuple[str, list[str]]:
    """A row's chat (its JSON text, or the list of messages itself) -> (question, image paths as written,
    in order). Anything but one user message of text and image parts is a DataError naming the part."""
    content = _user_content(_messages(chat, path, line, key), path, line, key)
    parts: list[str | None] = []  # the content in order: text, or None where an image goes
    images: list[str] = []
    for i, part in enumerate([{"type": "text", "text": content}] if isinstance(content, str) else content, start=1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind == "image" and isinstance(part.get("image"), str) and part["image"].strip():
            parts.append(None)
            images.append(part["image"].removeprefix(FILE_URI))
        else:
            raise DataError(path, line, key, f"user message part {i}: expected {{type: text, text: str}} or "
                                             f"{{type: image, image: path}}, got {_show(part)}")
    last_text = max((i for i, p in enumerate(parts) if p is not None), default=None)
    if last_text is not None:
        parts[last_text] = _without_suffix(parts[last_text])
    text = "".join(p for p in parts if p is not None)
    if not text.strip():
        raise DataError(path, line, key, "the user message has no question text")
    first_text = next(i for i, p in enumerate(parts) if p is not None)
    if IMAGE_PLACEHOLDER in text or None not in parts[first_text:]:
        return text, images  # placed by the question's own placeholders, or all shown before the text
    return "".join(IMAGE_PLACEHOLDER if p is None else p for p in parts), images


def _messages(chat: object, path: str | Path, line: int, key: str) -> list:
    if isinstance(chat, str):
        try:
            chat = json.loads(chat)
        except json.JSONDecodeError as e:
            raise DataError(path, line, key, f"not a JSON chat ({e.msg})") from None
    if not isinstance(chat, list) or not chat:
        raise DataError(path, line, key, f"expected a list of chat messages, got {_show(chat)}")
    return chat


def _user_content(messages: list, path: str | Path, line: int, key: str) -> str | list:
    """The content of the chat's one message, a user message: a system prompt or an earlier turn would
    not reach the policy, whose prompt is a user message under the checkpoint's own system prompt."""
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        roles = [m.get("role") if isinstance(m, dict) else _show(m) for m in messages]
        raise DataError(path, line, key, f"expected one user message, got the roles {roles}")
    content = messages[0].get("content")
    if not isinstance(content, str | list) or not content:
        raise DataError(path, line, key, f"user message content: expected text or a list of parts, got {_show(content)}")
    return content


def _without_suffix(text: str) -> str:
    for suffix in AUTHORS_SUFFIXES:
        if text.endswith(suffix):
            return text[:-len(suffix)]
    return text


def _show(value: object) -> str:
    text = json.dumps(value) if isinstance(value, dict | list | str) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."
