"""Assistant-turn markers in a model's own chat template, for assistant-only loss.

TRL's `assistant_only_loss=True` asks the tokenizer which characters the template
produced inside `{% generation %} ... {% endgeneration %}` blocks and trains on those
tokens only. Most chat templates (SmolLM2's, Qwen's) have no such blocks. Rather than
replacing the model's template with another one, we rewrite its assistant turn so the
block covers the assistant's content and its end-of-turn token — the model must learn
to stop — and check that the rewritten template renders exactly the same text as the
original on probe conversations. `{% generation %}` renders nothing, so inference with
the marked template is unchanged.

Supported: the ChatML family (`<|im_start|>role\\n...<|im_end|>\\n`), which covers
SmolLM, Qwen2 and the project's tiny model. Other templates get a clear error that
names the template, so a user can add theirs to MARKABLE_TURNS.
"""

from __future__ import annotations

import re

GENERATION_BLOCK = re.compile(r"{%-?\s*generation\s*-?%}")

# Known spellings of "one turn" in ChatML templates, and the same turn with the
# assistant's content and end-of-turn token inside a generation block.
_CHATML_MARKED = (
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
)
_NEWLINE = r"'(?:\\n|\n)'"  # an escaped or a literal newline (GGUF files store the latter)
MARKABLE_TURNS = [
    (re.compile(r"{{-?\s*'<\|im_start\|>'\s*\+\s*message\['role'\]\s*\+\s*" + _NEWLINE
                + r"\s*\+\s*message\['content'\]\s*\+\s*'<\|im_end\|>'\s*\+\s*" + _NEWLINE + r"\s*-?}}"),
     _CHATML_MARKED),
]

PROBE_CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5\n#### 5"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"},
    ],
]


class TemplateError(ValueError):
    pass


def has_generation_markers(template: str | None) -> bool:
    return bool(template and GENERATION_BLOCK.search(template))


def _render(template: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=add_generation_prompt
    )
    return rendered[0]


def mark_assistant_turns(template: str) -> str:
    """The template with assistant turns in generation blocks; renders the same text."""
    if has_generation_markers(template):
        return template
    for pattern, marked_turn in MARKABLE_TURNS:
        if pattern.search(template):
            marked = pattern.sub(lambda _: marked_turn, template, count=1)
            break
    else:
        raise TemplateError(
            "the chat template has no {% generation %} markers and is not of a family "
            "posttrain knows how to mark (ChatML); add its turn pattern to "
            f"posttrain/chat_template.py MARKABLE_TURNS. Template starts: {template[:120]!r}"
        )
    for messages in PROBE_CONVERSATIONS:
        for add_prompt in (False, True):
            if _render(marked, messages, add_prompt) != _render(template, messages, add_prompt):
                raise TemplateError("marking the chat template changed what it renders; not using it")
    return marked
