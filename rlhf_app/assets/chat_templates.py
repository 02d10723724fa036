"""Chat templates shipped in the package (rlhf_app/assets/templates/), given as a .jinja file or as the text
itself, chosen by `model.chat_template` and set on the tokenizer before any model loads.

`asset:chatml-tools`: SmolLM2's ChatML with TRL's tool calling (`trl.chat_template_utils.supports_tool_calling`
accepts it): tools listed in the system turn, `<tool_call>{json}</tool_call>` in assistant turns, `tool` turns
holding `<tool_response>`, assistant turns inside `{% generation %}` markers (SFT's assistant-only loss). Its
`.response.json` is transformers' `response_template`, with which `trl.chat_template_utils.parse_response`
reads a generated turn back into `{"content", "tool_calls"}`; tokenizer.save_pretrained keeps both.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_app.config.checks import ConfigError

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATES = {"chatml-tools": "chatml_tools"}  # asset:NAME -> templates/STEM.jinja (+ STEM.response.json)
PREFIX = "asset:"


def template_file(value: str) -> Path:
    """The .jinja file `value` names (asset:NAME or a path); ConfigError if there is none."""
    if value.startswith(PREFIX):
        name = value[len(PREFIX):]
        if name not in TEMPLATES:
            raise ConfigError(f"model.chat_template={value}: no such template; available are "
                              f"{', '.join(PREFIX + n for n in TEMPLATES)}, or give a .jinja file")
        return TEMPLATES_DIR / f"{TEMPLATES[name]}.jinja"
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.chat_template={value}: no such file; give a .jinja file or "
                          f"{', '.join(PREFIX + n for n in TEMPLATES)}")
    return path


def read(value: str) -> tuple[str, dict | None]:
    """(the template's text, its response_template or None) for `model.chat_template=value`: a shipped or file
    template's response_template is the `.response.json` beside it."""
    if "{{" in value or "{%" in value:
        return value, None  # the template's text itself
    path = template_file(value)
    response = path.with_name(path.name.rsplit(".", 1)[0] + ".response.json")
    try:
        parse = json.loads(response.read_text(encoding="utf-8")) if response.is_file() else None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{response}: not JSON ({err.msg}, line {err.lineno}): fix it or remove it") from None
    return path.read_text(encoding="utf-8"), parse


def apply(tokenizer, value: str | None):
    """Set the template `value` names (and its response_template, or none: the old one may not fit) on
    `tokenizer`; None leaves both as they are."""
    if value is not None:
        tokenizer.chat_template, tokenizer.response_template = read(value)  # an old response_template may not fit
    return tokenizer
