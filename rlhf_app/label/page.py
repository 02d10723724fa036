"""The labelling page (Gradio, the `label` extra): a prompt, completions A and B in a seeded random
order, four buttons and their keys (a, b, t, s), and progress. A choice names the pair it was made
on (a hidden field), so a second tab or a double click never labels the wrong pair; the page shows
the next pair only once the choice is on disk (store.py).
"""

from __future__ import annotations

import os
import socket

from rlhf_app.label import LabelError
from rlhf_app.label.pairs import as_text, left_of
from rlhf_app.label.store import Store

BUTTONS = {"A": "A is better  [a]", "B": "B is better  [b]", "tie": "Tie  [t]", "skip": "Skip  [s]"}
# Keys press the buttons (the same path as a click), unless a modifier is held or a field has focus.
KEYS_JS = """<script>
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  if (['INPUT', 'TEXTAREA'].includes(e.target.tagName) && !e.target.readOnly) return;
  const id = {a: 'label-A', b: 'label-B', t: 'label-tie', s: 'label-skip'}[e.key.toLowerCase()];
  const button = id && document.getElementById(id);
  if (button && !button.disabled) { e.preventDefault(); button.click(); }
});
</script>"""


def check_port(host: str, port: int) -> None:
    """The port is free on `host` (bound as uvicorn binds it, SO_REUSEADDR), else one line."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise LabelError(f"cannot listen on {host}:{port} ({err.strerror}): another program holds it; "
                             "give another with --port N") from None


def view(store: Store):
    """What the page shows now: progress, prompt, A, B, the pair's key, and the buttons' state."""
    import gradio as gr

    done, total = len(store.made), len(store.pairs)
    pair = store.next_pair()
    if pair is None:
        kept = len(store.preferences())
        progress = (f"**All {total} pairs labelled** · {kept} preference pairs in `{store.output}` "
                    f"(ties and skips in `{store.path.name}`)")
        return [progress, "", "", "", "", *[gr.update(interactive=False) for _ in BUTTONS]]
    left = left_of(store.seed, pair)
    progress = f"**{done} of {total}** labelled · pair {pair.index + 1}"
    return [progress, as_text(pair.prompt), as_text(pair.completions[left]), as_text(pair.completions[1 - left]),
            pair.key, *[gr.update(interactive=True) for _ in BUTTONS]]


def build(store: Store):
    import gradio as gr

    with gr.Blocks(title="rlhf-app label", analytics_enabled=False) as demo:
        progress = gr.Markdown(elem_id="label-progress")
        prompt = gr.Textbox(label="Prompt", interactive=False, elem_id="label-prompt", lines=2)
        with gr.Row():
            a = gr.Textbox(label="A", interactive=False, elem_id="label-left", lines=6)
            b = gr.Textbox(label="B", interactive=False, elem_id="label-right", lines=6)
        key = gr.Textbox(visible=False, elem_id="label-key")
        with gr.Row():
            buttons = {c: gr.Button(text, elem_id=f"label-{c}", variant="primary" if c in "AB" else "secondary")
                       for c, text in BUTTONS.items()}
        outputs = [progress, prompt, a, b, key, *buttons.values()]
        demo.load(lambda: view(store), outputs=outputs)
        for choice, button in buttons.items():
            def choose(shown: str, choice=choice):
                if shown:  # empty once every pair is labelled
                    store.record(shown, choice)
                return view(store)
            button.click(choose, inputs=[key], outputs=outputs, concurrency_limit=1)
    return demo


def serve(store: Store, host: str, port: int) -> None:
    """Serve the page until Ctrl-C; prints its address once it answers."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    store.start()
    demo = build(store)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, inbrowser=False,
                ssr_mode=False, footer_links=[], head=KEYS_JS)
    shown = f"[{host}]" if ":" in host else host
    print(f"labelling page: http://{shown}:{port}  ({len(store.made)} of {len(store.pairs)} labelled; "
          f"choices in {store.path}, preferences in {store.output}; Ctrl-C stops)", flush=True)
    demo.block_thread()
