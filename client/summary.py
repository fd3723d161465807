"""``retia report PATH``: a PNG (final metric per trial, best so far, learning curves), a Markdown summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retia.errors import RetiaError
from retia.protocol import TrialState
from retia.reporting import default_value

from .results import ExperimentRecord, TrialResult, scored

__all__ = ["write_report", "add_report_arguments", "run_report"]


def write_report(path: str | Path, *, top_k: int = 10) -> tuple[Path, Path]:
    """Write ``report.png`` and ``summary.md`` into the experiment directory; return their paths."""
    record = ExperimentRecord(Path(path))
    settings = record.settings()
    loaded = record.load()
    results = [loaded[k] for k in sorted(loaded)]
    maximize = settings.direction == "maximize"
    png = record.path / "report.png"
    md = record.path / "summary.md"
    _plot(results, maximize, png, settings.experiment_id)
    md.write_text(_summary(results, maximize, settings.experiment_id, top_k))
    return png, md


def _plot(results: list[TrialResult], maximize: bool, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_final, ax_curves) = plt.subplots(1, 2, figsize=(12, 4.5))
    done = scored(results)
    keys = [r.key for _, r in done]
    scores = [score for score, _ in done]
    ax_final.scatter(keys, scores, s=18, label="final metric", color="tab:blue")
    pick = max if maximize else min
    best: list[float] = []
    for score in scores:
        best.append(pick(best[-1], score) if best else score)
    ax_final.step(keys, best, where="post", color="tab:orange", label="best so far")
    failed = [r.key for r in results if r.state in (TrialState.FAILED.value, TrialState.CANCELLED.value)]
    if failed and scores:
        ax_final.scatter(
            failed, [min(scores)] * len(failed), marker="x", color="tab:red", label="failed / stopped"
        )
    ax_final.set_xlabel("trial number")
    ax_final.set_ylabel(
        "final metric ('default')" + (" — higher is better" if maximize else " — lower is better")
    )
    ax_final.set_title("Final metric per trial")
    ax_final.legend(loc="best")
    for r in results:
        if r.intermediates:
            values = [default_value(v) for v in r.intermediates]
            ax_curves.plot(range(1, len(values) + 1), values, "o-", alpha=0.5, linewidth=1, markersize=3)
    ax_curves.set_xlabel("report step (e.g. epoch)")
    ax_curves.set_ylabel("intermediate metric ('default')")
    ax_curves.set_title("Intermediate results")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _summary(results: list[TrialResult], maximize: bool, title: str, top_k: int) -> str:
    done = scored(results)
    done.sort(key=lambda pair: pair[0], reverse=maximize)
    counts = {s.value: sum(r.state == s.value for r in results) for s in TrialState}
    lines = [
        f"# {title}",
        "",
        f"{len(results)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n),
        f"(metric: 'default', {'higher' if maximize else 'lower'} is better)",
        "",
        "| rank | trial | metric | epochs | seed | architecture |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for rank, (score, r) in enumerate(done[:top_k], 1):
        seed = "" if r.seed is None else r.seed
        lines.append(
            f"| {rank} | {r.key} | {score:.4f} | {len(r.intermediates)} | {seed} | `{json.dumps(r.arch)}` |"
        )
    failed = [r for r in results if r.state == TrialState.FAILED.value]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- trial {r.key}: {r.reason}" for r in failed]
    return "\n".join(lines) + "\n"


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, help="experiment directory (holds experiment.json and trials.jsonl)"
    )
    parser.add_argument("--top", type=int, default=10, help="rows in the summary table (default %(default)s)")


def run_report(args: argparse.Namespace) -> int:
    try:
        png, md = write_report(args.path, top_k=args.top)
    except RetiaError as exc:
        print(f"retia report: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {png}\nwrote {md}")
    return 0
