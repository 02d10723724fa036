"""Where a bench writes its JSON: only a full run replaces the committed `bench/NAME.json`.

A quick run (`--quick`) writes `bench/work/NAME-quick.json`, a partial one (fewer pairs, updates,
settings or engines than the full run) `bench/work/NAME-partial.json`; bench/work/ is not tracked.
`--out PATH` chooses the file, except that a quick or partial run is refused a committed file.
Plain Python, so every bench (and the peer's environment) can import it.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def kind(quick: bool, partial: bool) -> str | None:
    """None for a full run, else "quick" or "partial" (a quick run is also partial: quick wins)."""
    return "quick" if quick else "partial" if partial else None


def result_path(name: str, run_kind: str | None, out: str | Path | None = None, bench: Path = BENCH) -> Path:
    """The file a run of bench NAME writes. Raises SystemExit (one line) when a quick or partial run
    names a committed result file (a .json directly in `bench`) as --out."""
    if out is not None:
        path = Path(out)
        if run_kind is not None and path.suffix == ".json" and path.resolve().parent == bench.resolve():
            raise SystemExit(f"error: --out {out}: a {run_kind} run never replaces the committed results in "
                             f"{bench.name}/; leave --out out (it writes {bench.name}/work/{name}-{run_kind}.json) "
                             f"or name a file elsewhere")
        return path
    return bench / f"{name}.json" if run_kind is None else bench / "work" / f"{name}-{run_kind}.json"


def write_result(result: dict, path: Path) -> Path:
    """`result` as indented JSON at `path` (folders made), written to a temporary name and renamed,
    so an interrupted bench never leaves half a file. -> path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return path


# What a bench writes and what only documents it: changes there say nothing about the code that measured.
NOT_CODE = ("bench/*.json", "bench/learning/**", "*.md")


def code_state(root: Path = BENCH.parent) -> tuple[str, bool]:
    """(HEAD's commit, whether a tracked file other than results and docs (NOT_CODE) differs from it): a
    bench's own earlier results, merged and not yet committed, leave the next run clean. ("", False) outside
    a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  *(f":(exclude){pattern}" for pattern in NOT_CODE))
    return git("rev-parse", "HEAD"), bool(changed)


# CPU flags that give bfloat16 matrix arithmetic in hardware; without them torch emulates bf16 (13-27x slower here).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _unnamed() -> str:
    """The CPU's name where /proc/cpuinfo gives none (platform.processor() may run `uname -p`: only then)."""
    return platform.processor() or platform.machine()


def host(cpuinfo: str | None = None) -> dict:
    """The CPU a figure was measured on: {"cpu": model name, "family", "model", "bf16": the BF16_FLAGS it has}
    from /proc/cpuinfo's first processor (`cpuinfo` its text, for tests); {"cpu": platform.processor()} where
    there is no /proc/cpuinfo. Times measured on different hosts never compare: this says which they were."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {"cpu": _unnamed()}
    fields: dict[str, str] = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    out: dict = {"cpu": fields["model name"] if "model name" in fields else _unnamed()}
    for key, name in (("cpu family", "family"), ("model", "model")):
        if fields.get(key, "").isdigit():
            out[name] = int(fields[key])
    out["bf16"] = [f for f in BF16_FLAGS if f in flags]
    return out
