"""A quick or partial bench run writes its own file and never replaces the committed bench/*.json
(bench/outputs.py, used by bench/run.py, grpo.py and engines.py)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
import outputs  # noqa: E402


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_kind_of_run_has_its_own_file(tmp_path):
    assert outputs.kind(quick=False, partial=False) is None
    assert outputs.kind(quick=True, partial=True) == "quick"
    assert outputs.kind(quick=False, partial=True) == "partial"
    assert outputs.result_path("results", None, bench=tmp_path) == tmp_path / "results.json"
    assert outputs.result_path("results", "quick", bench=tmp_path) == tmp_path / "work" / "results-quick.json"
    assert outputs.result_path("engines", "partial", bench=tmp_path) == tmp_path / "work" / "engines-partial.json"
    elsewhere = tmp_path / "mine" / "x.json"
    assert outputs.result_path("results", "quick", elsewhere, bench=tmp_path) == elsewhere  # --out elsewhere: kept
    assert outputs.result_path("results", None, tmp_path / "results.json", bench=tmp_path) == tmp_path / "results.json"


def test_a_quick_run_is_refused_a_committed_file_in_one_line(tmp_path):
    committed = tmp_path / "results.json"
    committed.write_text('{"settings": "the committed figures"}')
    with pytest.raises(SystemExit) as err:
        outputs.result_path("results", "quick", committed, bench=tmp_path)
    message = str(err.value)
    assert message.startswith("error: --out ") and "never replaces the committed results" in message
    assert "work/results-quick.json" in message and "\n" not in message
    assert committed.read_text() == '{"settings": "the committed figures"}'


def test_the_writer_writes_a_quick_result_beside_and_not_over_the_committed_one(tmp_path):
    committed = tmp_path / "grpo_results.json"
    committed.write_text('{"summary": 1}')
    path = outputs.write_result({"kind": "quick", "runs": [1, 2]}, outputs.result_path("grpo_results", "quick",
                                                                                      bench=tmp_path))
    assert path == tmp_path / "work" / "grpo_results-quick.json"
    assert json.loads(path.read_text()) == {"kind": "quick", "runs": [1, 2]}
    assert committed.read_text() == '{"summary": 1}'
    assert sorted(p.name for p in path.parent.iterdir()) == ["grpo_results-quick.json"]  # no temporary left


@pytest.mark.parametrize("script, committed", [("run.py", "results.json"), ("grpo.py", "grpo_results.json"),
                                               ("engines.py", "engines.json")])
def test_each_bench_refuses_to_write_a_quick_run_over_its_committed_file(script, committed):
    before = _digest(BENCH / committed)
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(BENCH / committed)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "never replaces the committed results" in lines[0], proc.stderr
    assert _digest(BENCH / committed) == before


@pytest.mark.slow
@pytest.mark.bench
def test_a_quick_grpo_bench_writes_its_own_file():
    committed = BENCH / "grpo_results.json"
    before = _digest(committed)
    proc = subprocess.run([sys.executable, str(BENCH / "grpo.py"), "--quick", "--steps", "2"], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((BENCH / "work" / "grpo_results-quick.json").read_text())
    assert result["kind"] == "quick" and len(result["runs"]) == 2  # one pair: ours and TRL
    assert {r["side"] for r in result["runs"]} == {"ours", "trl"}
    assert _digest(committed) == before


def test_fewer_pairs_or_steps_is_partial_more_is_a_full_run():
    import grpo

    committed = json.loads((BENCH / "grpo_results.json").read_text())["command"].split()[1:]
    assert grpo.parse_args(committed).kind is None  # the committed file came from a fuller run: it may replace it
    assert grpo.parse_args([]).kind is None
    assert grpo.parse_args(["--pairs", "1"]).kind == "partial"
    assert grpo.parse_args(["--steps", "5"]).kind == "partial"
    # SmolLM2's setting is a full run of its own, into its own committed file
    assert grpo.parse_args(["--model", "smollm2"]).kind is None and grpo.RESULTS["smollm2"] == "grpo_results_smollm2"
    assert grpo.parse_args(["--model", "smollm2", "--steps", "3"]).kind == "partial"
    assert grpo.parse_args(["--quick", "--pairs", "9"]).kind == "quick"


def test_a_run_is_dirty_for_code_changes_not_for_results_or_docs(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    files = {"bench/race.json": "{}", "bench/learning/x-report.html": "<p>", "README.md": "# r",
             "docs/results.md": "# d", "bench/race.py": "A = 1\n", "rlhf_app/loop.py": "B = 1\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert outputs.code_state(tmp_path) == (head, False)
    for name in ("bench/race.json", "bench/learning/x-report.html", "README.md", "docs/results.md"):
        (tmp_path / name).write_text("changed by a merge or a note")
    (tmp_path / "untracked.py").write_text("C = 1\n")
    assert outputs.code_state(tmp_path) == (head, False)  # a bench's own earlier output, docs: still clean
    for name in ("bench/race.py", "rlhf_app/loop.py"):
        (tmp_path / name).write_text("changed = True\n")
        assert outputs.code_state(tmp_path) == (head, True), name
        git("checkout", "--", name)


_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC 9R45
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: another core, never read
"""


def test_the_host_names_the_cpu_and_whether_it_does_bfloat16_in_hardware():
    assert outputs.host(_CPUINFO) == {"cpu": "AMD EPYC 9R45", "family": 26, "model": 2, "bf16": ["avx512_bf16"]}
    avx2 = _CPUINFO.replace(" avx512f avx512_bf16 avx512_vnni", "")
    assert outputs.host(avx2)["bf16"] == []  # bfloat16 emulated: its times never compare with the one above
    intel = _CPUINFO.replace("avx512_vnni", "amx_bf16 amx_tile").replace("AMD EPYC 9R45", "Intel Xeon")
    assert outputs.host(intel)["bf16"] == ["avx512_bf16", "amx_bf16"]
    here = outputs.host()
    assert here["cpu"] and isinstance(here.get("bf16", []), list)
