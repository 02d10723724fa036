"""Run report: diagnostics plots and one self-contained HTML page, built only from a run folder.

`write_report(run_dir)` reads the files the trainer writes (metrics.jsonl, and optionally
samples.jsonl, eval.json, values.json, config.yaml) and writes plots/diagnostics.png,
plots/values.png (drawn by `rlhf_app.report.plots`) and report.html (PNGs inlined as data URIs,
so the page can be mailed around).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from rlhf_app.report.plots import gold_points, plot_diagnostics, plot_gold, plot_values, reward_panels, series
from rlhf_app.report.stage import is_stage_run, settings_keys, stage_of, stage_parts
from rlhf_app.text_stats import distinct_word_share

KEY_SETTINGS = [
    "recipe", "seed", "model.name_or_path", "model.value_model", "model.dtype", "peft.enabled",
    "data.name", "data.source", "reward.name", "reward.model", "reward.gold", "ppo.learning_rate",
    "ppo.lr_scheduler_type", "ppo.kl_coef", "ppo.kl_estimator", "ppo.adaptive_kl",
    "ppo.total_episodes", "ppo.per_device_train_batch_size", "ppo.gradient_accumulation_steps",
    "ppo.num_mini_batches", "ppo.num_ppo_epochs", "ppo.response_length", "ppo.temperature",
    "ppo.cliprange", "ppo.vf_coef", "ppo.gamma", "ppo.lam",
]
LAST_SAMPLES = 12
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;
vertical-align:top;text-align:left}th{background:#f3f3f3}td.text{white-space:pre-wrap;max-width:30em}
td.num{text-align:right;font-variant-numeric:tabular-nums}.missing{color:#888;font-style:italic}
.warn{background:#fff3cd;padding:.5em 1em;border-left:4px solid #e0a800}img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto}"""


def load_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a partial last line (a run killed mid-write) is dropped."""
    lines, rows = [line for line in Path(path).read_text().splitlines() if line.strip()], []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON; fix or delete that line") from None
    return rows


def load_optional(path: Path) -> Any:
    """JSON, JSON-lines or YAML content of `path`, or None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix == ".yaml":
        return OmegaConf.load(path)
    return load_jsonl(path) if path.suffix == ".jsonl" else json.loads(path.read_text())


def summarize(metrics: list[dict]) -> dict[str, Any]:
    """Headline numbers of a run from its metric rows (None where nothing was logged)."""
    def last(key):
        vals = [v for v in series(metrics, key) if math.isfinite(v)]
        return vals[-1] if vals else None

    rewards = [v for v in series(metrics, "objective/rlhf_reward") if math.isfinite(v)]
    times = [v for v in series(metrics, "time/update_s") if math.isfinite(v)]
    return {"updates": len(metrics), "episodes": last("episode"),
            "wall_time_s": sum(times) if times else None,
            "final_reward": rewards[-1] if rewards else None,
            "mean_reward": sum(rewards) / len(rewards) if rewards else None,
            "final_score": last("objective/scores"), "final_kl": last("objective/kl")}


def eval_rows(evaluation: dict) -> list[tuple[str, Optional[float], Optional[float], Optional[float]]]:
    """(metric, before, after, after − before) for mean_score, ref_nll when scored and every `extra` metric."""
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    top = ["mean_score"] + (["ref_nll"] if "ref_nll" in before or "ref_nll" in after else [])
    names = top + sorted(set(before.get("extra", {})) | set(after.get("extra", {})))

    def get(side, name):
        return side.get(name) if name in top else side.get("extra", {}).get(name)

    pairs = [(name, get(before, name), get(after, name)) for name in names]
    return [(n, b, a, a - b if a is not None and b is not None else None) for n, b, a in pairs]


def pair_samples(before: list[dict], after: list[dict]) -> list[tuple[str, Optional[dict], Optional[dict]]]:
    """(prompt, before sample, after sample) matched by prompt, in the order of `before`."""
    pending: dict[str, list[dict]] = {}
    for s in after:
        pending.setdefault(s["prompt"], []).append(s)
    pairs = [(b["prompt"], b, (pending.get(b["prompt"]) or [None]).pop(0)) for b in before]
    pairs += [(p, None, s) for p, rest in pending.items() for s in rest]  # after-only prompts
    return pairs


def _fmt(x: Any) -> str:
    return "—" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[Any]], text_cols: tuple = ()) -> str:
    """An HTML table; every cell is escaped, numbers right-aligned, `text_cols` keep line breaks."""
    def cell(j, v):
        cls = "text" if j in text_cols else "num" if type(v) in (int, float) or v is None else ""
        return f'<td class="{cls}">{html.escape(_fmt(v))}</td>'

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(j, v) for j, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _missing(what: str) -> str:
    return f'<p class="missing">{html.escape(what)}</p>'


def _img_or_missing(drawn: bool, path: Path, alt: str, missing: str) -> str:
    if not drawn:
        return _missing(missing)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


# The rise of the reference's NLL a token (eval.json's ref_nll) above which the report warns of word salad: on
# imdb-offline, runs whose completions read as salad by hand rose 2.0-4.2 nats, runs without it 0.9-1.4
# (docs/recipes.md, imdb-offline).
SALAD_NLL_RISE = 2.0


def _evaluation_html(evaluation: Optional[dict], summary: dict) -> str:
    if not evaluation:
        return _missing("No evaluation recorded (eval.json is missing: eval_before_after=false?).")
    out = [_table(["metric", "before", "after", "Δ after − before"],
                  [list(r) for r in eval_rows(evaluation)])]
    before = (evaluation.get("before") or {}).get("samples", [])
    after = (evaluation.get("after") or {}).get("samples", [])
    share_b = distinct_word_share([s["completion"] for s in before])
    share_a = distinct_word_share([s["completion"] for s in after])
    out.append("<h3>Reward hacking check</h3><p>Distinct words / words over the held-out completions: "
               "a collapse to one repeated word drives it towards 0 while the KL grows.</p>")
    out.append(_table(["distinct-word share before", "distinct-word share after", "final KL"],
                      [[share_b, share_a, summary["final_kl"]]]))
    nll_b, nll_a = ((evaluation.get(w) or {}).get("ref_nll") for w in ("before", "after"))
    if nll_b is not None and nll_a is not None:
        out.append("<p>ref_nll (the table above): the reference model's negative log-likelihood of the same "
                   "completions, in nats a token: word salad raises it while the distinct-word share counts it as "
                   "vocabulary.</p>")
        if nll_a - nll_b >= SALAD_NLL_RISE:
            out.append(f'<p class="warn">The completions read {nll_a - nll_b:.2f} nats a token less likely to the '
                       "reference than before training: they may be drifting into word salad. Read them below; a "
                       "larger ppo.kl_coef keeps the policy closer to the reference.</p>")
    if share_a is not None and share_b and share_a < 0.5 * share_b:
        out.append('<p class="warn">After training the completions use far fewer distinct words: '
                   "the policy may have collapsed onto a few words its reward likes (reward hacking). "
                   "Read the completions below; a larger ppo.kl_coef keeps it closer to the reference.</p>")
    if before or after:
        rows = [[p, (b or {}).get("completion", "—"), (b or {}).get("score"),
                 (a or {}).get("completion", "—"), (a or {}).get("score")]
                for p, b, a in pair_samples(before, after)]
        out.append("<h3>Held-out completions before and after training</h3>")
        out.append(_table(["prompt", "before", "score", "after", "score"], rows, text_cols=(0, 1, 3)))
    return "".join(out)


def _first_last(metrics: list[dict], key: str) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in series(metrics, key) if math.isfinite(v)]
    return (values[0], values[-1]) if values else (None, None)


def write_report(run_dir) -> Path:
    """Write plots/ and report.html into `run_dir` from the files in it; return the HTML path."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found: run_dir must be a training output_dir "
                                "(run scripts/train.py first, or fix the path)")
    metrics = load_jsonl(metrics_path)
    samples, evaluation, values, config = (load_optional(run_dir / name) for name in (
        "samples.jsonl", "eval.json", "values.json", "config.yaml"))
    summary, plots = summarize(metrics), run_dir / "plots"
    if is_stage_run(metrics):  # an SFT / reward-model stage: its own sections (report/stage.py)
        rm_eval = load_optional(run_dir / "rm_eval.json")
        keys = settings_keys(stage_of(metrics, rm_eval), config)
        return _page(run_dir, _recipe(config, keys) + stage_parts(run_dir, metrics, rm_eval, _table, _img_or_missing))

    parts = _recipe(config)
    parts.append("<h2>Summary</h2>")
    parts.append(_table(["updates", "episodes", "wall time (s)", "final reward", "mean reward",
                         "final score", "final KL"],
                        [[summary[k] for k in ("updates", "episodes", "wall_time_s", "final_reward",
                                               "mean_reward", "final_score", "final_kl")]]))
    parts.append("<h2>Evaluation on held-out prompts</h2>" + _evaluation_html(evaluation, summary))
    parts += _gold_html(run_dir, metrics, plots)
    reward_rows = [[k, *(_first_last(metrics, k))] for _, keys, _ in reward_panels(metrics) for k, _ in keys]
    if reward_rows:
        parts.append("<h2>Rewards per function and held-out scores</h2>" + _table(
            ["metric", "first logged", "last logged"], reward_rows))
    parts.append("<h2>Training diagnostics</h2>" + _img_or_missing(
        plot_diagnostics(metrics, plots / "diagnostics.png"), plots / "diagnostics.png",
        "training diagnostics over updates", "No metric rows recorded yet."))
    parts.append("<h2>Critic values along a high- and a low-reward completion</h2>" + _img_or_missing(
        bool(values) and plot_values(values, plots / "values.png"), plots / "values.png",
        "critic value estimates per token", "No critic values recorded (values.json is missing)."))
    parts.append("<h2>Last training samples</h2>")
    if samples:
        rows = [[s.get("step"), s.get("prompt", ""), s.get("completion", ""), s.get("score")]
                for s in samples[-LAST_SAMPLES:]]
        parts.append(_table(["update", "prompt", "completion", "score"], rows, text_cols=(1, 2)))
    else:
        parts.append(_missing("No training samples recorded (samples.jsonl is missing or empty)."))

    return _page(run_dir, parts)


def _gold_html(run_dir: Path, metrics: list[dict], plots: Path) -> list[str]:
    """Proxy against gold (reward.gold): the figure, the update where gold peaked and the folder that keeps it."""
    points = gold_points(metrics)
    if not points:
        return []
    record = load_optional(run_dir / "gold.json") or {}
    best = record.get("best") or {}
    best = best if best.get("step") in [p[0] for p in points] else {}
    if not best:  # no gold.json: the best logged evaluation
        step, _, proxy, gold = max(points, key=lambda p: p[3])
        best = {"step": step, "proxy": proxy, "gold": gold}
    kl = next(p[1] for p in points if p[0] == best["step"])
    extra = best.get("gold_extra") or {}  # the gold's own figures there (a classifier's positive_share)
    kept = (run_dir / "gold-best").is_dir()
    where = f"{run_dir.name}/gold-best/ (rlhf-app eval run_dir={run_dir} checkpoint=gold-best)" if kept else \
        "not kept (no gold-best/ in the run folder)"
    out = ["<h2>Proxy against gold</h2><p>The trained reward (proxy) and the gold reward (reward.gold) on the "
           "held-out prompts at each evaluation, against the KL to the reference: a gold that peaks and falls "
           "while the proxy rises is the proxy being over-optimised.</p>",
           _table(["gold peaked at update", "gold", *(f"gold {k}" for k in extra), "proxy", "KL", "that policy"],
                  [[best["step"], best["gold"], *extra.values(), best["proxy"], kl, where]])]
    if record.get("warned_at") is not None:
        out.append(f'<p class="warn">From update {record["warned_at"]} the gold reward fell '
                   f'{record.get("patience")} evaluations in a row while the proxy rose: keep the gold-best policy, '
                   "or train with a larger ppo.kl_coef or fewer updates.</p>")
    out.append(_img_or_missing(plot_gold(metrics, best["step"], plots / "gold.png"), plots / "gold.png",
                               "proxy and gold against the KL", "No gold evaluations."))
    return out


def _recipe(config, keys: list[str] = KEY_SETTINGS) -> list[str]:
    parts = ["<h2>Recipe</h2>"]
    if config:
        parts.append(_table(["setting", "value"], [[k, OmegaConf.select(config, k)] for k in keys]))
        parts.append("<details><summary>Full resolved config</summary><pre>"
                     f"{html.escape(OmegaConf.to_yaml(config))}</pre></details>")
    else:
        parts.append(_missing("No config recorded (config.yaml is missing)."))
    return parts


def _page(run_dir: Path, parts: list[str]) -> Path:
    name = html.escape(run_dir.resolve().name)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>Run report: {name}</title><style>{CSS}</style>"
            f"</head><body><h1>Run report: {name}</h1>{''.join(parts)}</body></html>")
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
