"""`rlhf-app label INPUT OUTPUT [--port N] [--host ADDR] [--seed S]`: a person labels pairs on a local page
(rlhf_app/label, docs/labelling.md). Input, output and port are checked, one line each, before it serves."""

from __future__ import annotations

import argparse
from pathlib import Path

from rlhf_app.extras import require
from rlhf_app.label import LabelError

USAGE = "rlhf-app label INPUT OUTPUT [--port N] [--host ADDR] [--seed S]"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise LabelError(f"{message}: usage: {USAGE} (rlhf-app label --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rlhf-app label", usage=USAGE, description=(
        "Serve a page that shows a prompt and two completions in a seeded random order; a click or a key "
        "(a, b, t = tie, s = skip) saves the choice at once. Run it again to continue where it stopped."))
    p.add_argument("input", type=Path, help="jsonl of pairs: {prompt, completions: [a, b]} or {prompt, chosen, "
                   "rejected} (prompt optional; text or conversations)")
    p.add_argument("output", type=Path, help="TRL's preference file (prompt/chosen/rejected) for rlhf-app rm; "
                   "every choice, ties and skips too, goes to OUTPUT.choices.jsonl beside it")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 lets others on the network label)")
    p.add_argument("--seed", type=int, default=0, help="seeds which completion is shown as A (default 0)")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise LabelError(f"--port {args.port} is not a port: give 1..65535")
    if args.input.resolve() == args.output.resolve():
        raise LabelError(f"OUTPUT {args.output} is the INPUT: give another file for the preferences")
    from rlhf_app.label.pairs import read_pairs
    from rlhf_app.label.store import Store

    from rlhf_app.label.page import check_port, serve  # Gradio itself is imported only to serve

    store = Store(args.output, read_pairs(args.input), args.seed)
    check_port(args.host, args.port)
    require("gradio", "rlhf-app label")
    serve(store, args.host, args.port)
