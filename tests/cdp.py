"""A headless Chromium driven over the DevTools protocol (a websocket, JSON messages): enough of it for
tests/test_label.py to load a page, wait for what it shows, click and press keys as a person does.

Every wait is on an event: a line the process prints, a protocol event, or a condition checked in the
page at each animation frame (a promise the browser resolves), each with a deadline. The browser is
Debian's `chromium` (the Makefile's `browser` target installs it), or the one CHROMIUM names; it resolves no
name but 127.0.0.1, so a page that needs the network fails here as it would offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import urllib.request

from websockets.sync.client import connect


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def read_lines(proc: subprocess.Popen) -> queue.Queue:
    """Every line `proc` prints, as it prints it (a thread drains the pipe so the process never blocks)."""
    lines: queue.Queue = queue.Queue()

    def drain():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # the process closed its output: it ended

    threading.Thread(target=drain, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue, pattern: str, timeout: float = 120) -> re.Match:
    seen = []
    while True:
        line = lines.get(timeout=timeout)
        if line is None:
            raise RuntimeError(f"the process ended before printing {pattern!r}:\n{''.join(seen)[-3000:]}")
        seen.append(line)
        if match := re.search(pattern, line):
            return match


class Browser:
    """One headless Chromium with one page; `close()` ends it."""

    def __init__(self, user_dir, timeout: float = 60):
        flags = ["--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                 "--disable-extensions", "--remote-debugging-port=0", f"--user-data-dir={user_dir}",
                 "--window-size=1200,900", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
        self.proc = subprocess.Popen([chromium_path(), *flags, "about:blank"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.timeout, self.next_id, self.events = timeout, 0, []
        port = wait_for_line(read_lines(self.proc), r"DevTools listening on ws://[^:]+:(\d+)/", timeout).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, proxy=None))
        self.send("Page.enable")

    def send(self, method: str, **params):
        """Call a protocol method and return its result; events that arrive meanwhile are kept."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=self.timeout))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_event(self, method: str):
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv(timeout=self.timeout)))

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:200]}: {result['exceptionDetails'].get('exception', result)}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float | None = None):
        """The value of the JavaScript expression `condition` once it is truthy, checked at each frame."""
        ms = int(1000 * (timeout or self.timeout))
        return self.evaluate(f"""new Promise((resolve, reject) => {{
            const end = Date.now() + {ms};
            const tick = () => {{
                let value; try {{ value = ({condition}); }} catch (e) {{}}
                if (value) resolve(value);
                else if (Date.now() > end) reject(new Error('timed out waiting for: ' + {json.dumps(condition)}));
                else requestAnimationFrame(tick);
            }};
            tick();
        }})""")

    def click(self, selector: str) -> None:
        """A left click at the middle of the element, as the mouse makes it."""
        box = self.wait_for(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e || e.disabled) "
                            "return null; const r = e.getBoundingClientRect(); "
                            "return r.width ? {x: r.x + r.width / 2, y: r.y + r.height / 2} : null; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    def press(self, key: str) -> None:
        """A key pressed and released (a letter)."""
        code = {"key": key, "code": f"Key{key.upper()}", "windowsVirtualKeyCode": ord(key.upper())}
        self.send("Input.dispatchKeyEvent", type="keyDown", text=key, **code)
        self.send("Input.dispatchKeyEvent", type="keyUp", **code)

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            self.proc.kill()
            self.proc.wait()
