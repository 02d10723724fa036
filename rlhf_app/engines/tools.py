"""Multi-turn episodes with tools, for both engines: TRL GRPOTrainer's tool loop (`_tool_call_loop`).

Each episode's prompt is rendered with its tools (and its environment's reset text appended to the last user
message); then, batched over the episodes still running, the engine generates one turn each (`turn`); a turn
that calls tools (parsed with trl's `parse_response` and the tokenizer's response template) gets the results
appended as tool messages through the chat template, and the episode goes on, until it answers without a
call, `rollout.max_tool_calling_iterations` rounds are done, or the next tool turn would not fit in
`ppo.response_length` (R: the whole episode after the prompt, policy and tool tokens, as TRL's budget).

The rollout's response is the episode in order; `tool_mask` (B, R) is 1 on the policy's tokens, 0 on the
tool turns (the chat template's tool messages and the next assistant header). Its columns add, per episode,
`conversation` (the messages after the prompt: TRL's `completions`), `tool_calls`, `tool_failures`,
`tool_seconds`, and with environments `environment_rewards` and (in-process) `environments`.
"""

from __future__ import annotations

import copy
import sys
import time

import regex
import torch
from trl.chat_template_utils import (add_response_schema, get_training_chat_template,
                                     is_chat_template_prefix_preserving, parse_response, qwen3_template)

from rlhf_app.data.columns import CONVERSATION_COLUMN, EPISODE_COLUMN
from rlhf_app.engines.generation import left_pad, stop_token_id
from rlhf_app.engines.tool_calls import _error, make_host
from rlhf_app.engines.tool_specs import ToolSpecError, resolve_tools
from rlhf_app.rl.rollout import Rollout

_LOOPS: dict = {}


def tool_loop(cfg, tokenizer) -> ToolLoop | None:
    """The run's tool loop for `tokenizer` (one per run: the engines and the evaluation share its tools and
    subprocess), or None when the run has no tools or environment."""
    found = resolve_tools(cfg.rollout)
    if found is None:
        return None
    key = (id(tokenizer), repr(cfg.rollout), repr(cfg.ppo), repr(cfg.data.chat_template_kwargs))
    if key not in _LOOPS:
        _LOOPS[key] = ToolLoop(cfg, tokenizer, found)
    return _LOOPS[key]


def ensure_parser(tokenizer) -> None:
    """A response parser for tool calls: the tokenizer's own, TRL's for the templates it knows, or TRL's
    Hermes / ChatML one (`<tool_call>{json}</tool_call>` after `<|im_start|>assistant`); else one line."""
    if getattr(tokenizer, "response_template", None) or getattr(tokenizer, "response_schema", None):
        return
    try:
        add_response_schema(tokenizer)
        return
    except ValueError:
        pass
    call = [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "u"},
                                          {"role": "assistant", "content": "", "tool_calls": call}], tokenize=False)
    if "<tool_call>" in text and qwen3_template["start_anchor"] in text:
        tokenizer.response_template = qwen3_template
        return
    raise ToolSpecError("no parser for this chat template's tool calls: save a response_template in the "
                        "tokenizer (transformers' response parsing), or use a template trl's add_response_schema "
                        "knows, or a ChatML one with Hermes <tool_call> blocks")


def _opener(tokenizer):
    """The regex that opens a tool call in the response template, to tell a malformed call from plain text."""
    spec = ((getattr(tokenizer, "response_template", None) or {}).get("fields") or {}).get("tool_calls") or {}
    if "open" in spec:
        return regex.compile(regex.escape(spec["open"]) if isinstance(spec["open"], str) else
                             "|".join(regex.escape(s) for s in spec["open"]))
    return regex.compile(spec["open_pattern"]) if "open_pattern" in spec else None


class ToolLoop:
    def __init__(self, cfg, tokenizer, found):
        r = cfg.rollout
        self.tokenizer, self.found, self.R = tokenizer, found, cfg.ppo.response_length
        self.stop_id, self.pad_id = stop_token_id(cfg.ppo, tokenizer), tokenizer.pad_token_id
        self.max_rounds = sys.maxsize if r.max_tool_calling_iterations is None else r.max_tool_calling_iterations
        self.kwargs = dict(cfg.data.chat_template_kwargs)
        ensure_parser(tokenizer)
        self.opener = _opener(tokenizer)
        # TRL swaps in a prefix-preserving training template where the model's is not one.
        self.template = None if is_chat_template_prefix_preserving(tokenizer) else get_training_chat_template(tokenizer)
        self.host = make_host(found, r.tool_isolation, r.tool_timeout)

    def close(self) -> None:
        self.host.close()
        for key in [k for k, v in _LOOPS.items() if v is self]:
            del _LOOPS[key]

    def _render(self, messages, tools, generation_prompt=True, tokenize=False):
        return self.tokenizer.apply_chat_template(messages, tools=tools or None, chat_template=self.template,
                                                  add_generation_prompt=generation_prompt, tokenize=tokenize,
                                                  return_dict=False, **self.kwargs)

    def _suffix(self, tool_messages: list[dict]) -> list[int]:
        """The tokens of tool messages and the next assistant header (TRL: a dummy conversation rendered with
        and without them, the shorter cut after its last EOS)."""
        call = [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]
        dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": call}]
        prefix = list(self._render(dummy, None, generation_prompt=False, tokenize=True))
        full = list(self._render(dummy + tool_messages, None, tokenize=True))
        eos = [i for i, t in enumerate(prefix) if t == self.tokenizer.eos_token_id]
        prefix = prefix[:eos[-1] + 1] if eos else prefix
        if full[:len(prefix)] != prefix:
            raise ToolSpecError("the chat template renders an assistant turn differently once tool messages follow: "
                                "use a prefix-preserving template (model.chat_template)")
        return full[len(prefix):]

    def _prompts(self, rows):
        """(environment names, prompt texts, prompt ids) of the rows, each environment reset first."""
        names = [r.get("environment") if self.found.multi else None for r in rows]
        if self.found.factories:
            unknown = sorted({str(n) for n in names if n not in self.found.factories})
            if unknown:
                raise ToolSpecError(f"rows name environment {', '.join(unknown)}, not one of rollout."
                                    f"environment_factory's: {', '.join(map(str, self.found.factories))}")
        self.host.start(names)
        texts, ids = [], []
        for i, row in enumerate(rows):
            convo = copy.deepcopy(row.get(CONVERSATION_COLUMN)) or [{"role": "user", "content": row["prompt"]}]
            if self.found.factories:
                given = {k: v for k, v in row.items() if k not in ("input_ids", CONVERSATION_COLUMN)
                         and not (self.found.multi and k == "environment")}
                given["prompt"] = row.get(CONVERSATION_COLUMN) or row["prompt"]
                seen = self.host.reset(i, given)
                if seen is not None:
                    convo[-1] = {**convo[-1], "content": convo[-1]["content"] + seen}
            text = self._render(convo, self.found.schemas(names[i]))
            texts.append(text)
            ids.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return names, texts, ids

    def _calls(self, i: int, parsed: dict, text: str, stats: dict) -> list[dict] | None:
        """The tool messages answering episode i's turn, or None when it called nothing."""
        calls = parsed.get("tool_calls")
        if not calls:
            if self.opener is None or not self.opener.search(text):
                return None
            stats["calls"][i] += 1
            stats["failures"][i] += 1
            return [{"role": "tool", "name": "unknown", "content": _error("Malformed tool call: it could not be "
                                                                          "parsed; write it as the tools show.")}]
        out = []
        for call in calls:
            stats["calls"][i] += 1
            function = call.get("function") or {}
            name = function.get("name", call.get("name", "unknown"))
            if call.get("type", "function") != "function":
                result, failed = _error(f"Unsupported tool call type: {call.get('type')}"), True
            else:
                start = time.perf_counter()
                result, failed = self.host.call(i, name, function.get("arguments") or {})
                stats["seconds"][i] += time.perf_counter() - start
            stats["failures"][i] += int(failed)
            out.append({"role": "tool", "name": name, "content": result})
        return out

    def run(self, rows: list[dict], turn, device) -> Rollout:
        """Episodes for `rows`. `turn(contexts, budgets, round) -> (token lists, log-prob lists or None)`
        generates one turn per context (each at most its budget, cut after the stop token)."""
        names, texts, prompt_ids = self._prompts(rows)
        n = len(rows)
        tokens, policy, logps = [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)]
        convos = [[] for _ in range(n)]
        stats = {"calls": [0] * n, "failures": [0] * n, "seconds": [0.0] * n}
        active, rounds, with_logps = list(range(n)), 0, False
        while active:
            contexts = [prompt_ids[i] + tokens[i] for i in active]
            new, new_logps = turn(contexts, [self.R - len(tokens[i]) for i in active], rounds)
            going = []
            for k, i in enumerate(active):
                tokens[i] += new[k]
                policy[i] += [1.0] * len(new[k])
                with_logps = new_logps is not None
                logps[i] += new_logps[k] if with_logps else [0.0] * len(new[k])
                parsed = parse_response(self.tokenizer, new[k], prefix=contexts[k],
                                        tools=self.found.schemas(names[i])) if new[k] else {}
                if parsed:
                    convos[i].append(parsed)
                ended = bool(new[k]) and (self.stop_id is None or new[k][-1] == self.stop_id)
                if not ended or rounds >= self.max_rounds:
                    continue
                replies = self._calls(i, parsed, self.tokenizer.decode(new[k]), stats)
                if not replies:
                    continue
                suffix = self._suffix(replies)
                if len(tokens[i]) + len(suffix) >= self.R:  # no room to answer: the episode ends here (TRL)
                    continue
                tokens[i] += suffix
                policy[i] += [0.0] * len(suffix)
                logps[i] += [0.0] * len(suffix)
                convos[i] += replies
                going.append(i)
            active, rounds = going, rounds + 1
        columns = {EPISODE_COLUMN: convos, "tool_calls": stats["calls"], "tool_failures": stats["failures"],
                   "tool_seconds": stats["seconds"]}
        if self.found.rewarded:
            columns["environment_rewards"] = [self.host.reward(i) for i in range(n)]
        if self.found.factories and not self.host.isolated:
            columns["environments"] = self.host.environments()
        return self._rollout(rows, texts, prompt_ids, tokens, policy, logps if with_logps else None, columns, device)

    def _rollout(self, rows, texts, prompt_ids, tokens, policy, logps, extra, device) -> Rollout:
        query, query_mask = left_pad(prompt_ids, self.pad_id)
        n, R = len(rows), self.R
        response = torch.full((n, R), self.pad_id, dtype=torch.long)
        mask, tool_mask, logprobs = torch.zeros(n, R), torch.zeros(n, R), torch.zeros(n, R)
        for i, ids in enumerate(tokens):
            response[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, :len(ids)] = 1.0
            tool_mask[i, :len(ids)] = torch.tensor(policy[i])
            if logps is not None:
                logprobs[i, :len(ids)] = torch.tensor(logps[i])
        stop = torch.tensor([bool(t) and t[-1] == self.stop_id for t in tokens], device=device)
        completions = self.tokenizer.batch_decode([t for t in tokens], skip_special_tokens=True)
        columns = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "input_ids")}
        columns.update(extra)
        return Rollout(query.to(device), query_mask.to(device), response.to(device), mask.to(device), stop, texts,
                       completions, columns, logprobs.to(device) if logps is not None else None,
                       tool_mask=tool_mask.to(device))
