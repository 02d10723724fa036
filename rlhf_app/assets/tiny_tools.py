"""`asset:tiny-tools`: the tiny model (same weights as `asset:tiny`) with a chat template that can call tools,
written in its 35-symbol alphabet (lower-case letters, space, `.,!?'`), and the response template that parses
it (transformers' `response_template`, saved in tokenizer_config.json), so tool episodes run on it in tests.

A conversation renders as

    tools lookup. q say the word. a call lookup key is fruit!<eos> r banana. a banana<eos>

`tools NAMES.` lists the tools, `q ...` is the user, ` a ` opens the assistant's turn (the generation
prompt), `call NAME KEY is VALUE!` a tool call (one word per value), `<eos>` ends the turn, ` r ...` a tool
result. The template preserves prefixes (TRL's `is_chat_template_prefix_preserving`).
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE = (
    "{%- if tools %}tools{% for tool in tools %} {{ tool.function.name if tool.function is defined else tool.name }}"
    "{% endfor %}. {% endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' or message.role == 'system' -%}q {{ message.content }}."
    "{%- elif message.role == 'assistant' -%}{{ ' a ' }}"
    "{%- if message.tool_calls %}{% for call in message.tool_calls %}call {{ call.function.name }}"
    "{% for key, value in call.function.arguments.items() %} {{ key }} is {{ value }}{% endfor %}!{% endfor %}"
    "{%- else %}{{ message.content }}{% endif %}<eos>"
    "{%- elif message.role == 'tool' -%}{{ ' r ' }}{{ message.content }}."
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ ' a ' }}{% endif -%}"
)

RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": " a ",
    "fields": {
        "tool_calls": {
            "open_pattern": r"call (?P<name>[a-z]+)",
            "close_pattern": r"!",
            "repeats": True,
            "content": "xml-inline",
            "content_args": {"tag_pattern": r" (?P<key>[a-z]+) is (?P<value>[a-z']+)"},
            "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}},
        },
        "content": {"close_pattern": r"<eos>\s*", "content": "text"},
    },
}


def add_tool_templates(out: Path) -> None:
    """Give the tokenizer saved in `out` (asset:tiny's) TEMPLATE and RESPONSE_TEMPLATE."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = TEMPLATE
    tokenizer.response_template = RESPONSE_TEMPLATE
    tokenizer.save_pretrained(out)
