"""The paper's findings on one teacher, over seeds: a fairly tuned baseline, single-dimension curves,
and the method's open choices.

    python benchmarks/findings.py --teacher runs/default/teacher --output runs/findings \
        [--limit 2000] [--hsk-epochs 1] [--pred-epochs 1] [--batch-size 16] [--lr-grid 2e-4,5e-4,1e-3] \
        [--seeds 0,1,2] [--plots docs]

Two `hskstore sweep`s, each resumable:
  fair     prediction-only KD, the base point (1, 9, 0.1) and full HSK, every arm tuned the same way:
           each lr of --lr-grid (both stages at that lr) with the first seed, the best on dev with the
           others. Prediction-only KD trains for HSK + prediction's total epochs.
  studies  every other arm at the lr the base point picked, HSK then prediction stage, same seeds:
    depth   (N^D, all, all) for N^D = 1, 2, and full HSK (N^D = 4)   (the paper's Figure 3)
    length  (4, N^L, all) for N^L = 1, 9, 27, and full HSK           (Figure 4), tokens by att-nosep
    width   (4, all, N^W) for N^W = 0.01, 0.1, and full HSK          (Figure 5), activations by mag
    at the base point: length strategy att-nosep | att | left; width strategy mag | uniform | rand;
    L_top 5 (default, round(10 L / 12)) | 6 (the top layer); HSK loss masked-zero | kept; token scores
    pre-softmax (the default since 2026-12-02) | post-softmax. docs/results.md was made when the
    default was post-softmax, so its base arms score tokens post-softmax.
    amount  one triple per target A^HSK in 0.3, 1, 3, 10, 30 (drawn as `hskstore sweep --level` draws),
            against the fair baselines: the paper's Figure 8.
The teacher runs once per cover store; shared arms train once. Prints one markdown table per study and
writes findings-<study>.png into --plots. Sized for about an hour on a 2-core CPU with the defaults.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402  (sets the offline environment first)

from hskstore.experiments.sweep import SweepConfig, sweep  # noqa: E402

BASE = (1, 9, 0.1)
STUDIES = {
    "fair": [BASE],
    "depth": [(d, None, None) for d in (1, 2)],
    "length": [(4, n, None) for n in (1, 9, 27)],
    "width": [(4, None, w) for w in (0.01, 0.1)],
    "length strategy": [BASE, BASE + ({"length_strategy": "att"},), BASE + ({"length_strategy": "left"},)],
    "width strategy": [BASE, BASE + ({"width_strategy": "uniform"},), BASE + ({"width_strategy": "rand"},)],
    "L_top": [BASE, BASE + ({"l_top": 6},)],
    "HSK loss": [BASE, BASE + ({"hsk_loss": "kept"},)],
    "token scores": [BASE, BASE + ({"score_kind": "softmax"},)],
    "amount": [],   # filled in main: the triples `hskstore sweep --level` draws for LEVELS (the paper's Figure 8)
}
LEVELS = (0.3, 1, 3, 10, 30)   # the "amount" study: one triple per target A^HSK, drawn as `hskstore sweep --level`
CURVES = {"depth": "depth", "length": "length", "width": "width"}   # study -> the dimension on the x axis


def _key(entry) -> str:
    from hskstore.experiments.sweep import _key as sweep_key

    return sweep_key(entry[:3], entry[3] if len(entry) == 4 else None)


def _label(entry) -> str:
    if len(entry) == 4:
        return ", ".join(f"{k}={v}" for k, v in entry[3].items())
    return "default (att-nosep, mag, L_top 5, masked-zero, pre-softmax)" if tuple(entry) == BASE else \
        "(" + ", ".join("all" if v is None else f"{v:g}" for v in entry) + ")"


def table(study: str, summary: dict) -> str:
    metric = summary["pred"].get("metric", "accuracy")
    lines = [f"**{study}**", "", f"| arm | (N^D, N^L, N^W) | A^HSK | lr | dev {metric}, mean ± sd | seeds |",
             "|---|---|---|---|---|---|"]
    arms = [(e, summary[_key(e)]) for e in STUDIES[study]]
    if study in CURVES or study in ("fair", "amount"):
        arms.append(("full HSK", summary["full"]))
    arms.append(("prediction-only KD", summary["pred"]))
    for entry, row in arms:
        label = entry if isinstance(entry, str) else _label(entry)
        triple = "—" if row["kind"] == "pred" else "(all, all, all)" if row["kind"] == "full" else \
            "(" + ", ".join("all" if v is None else f"{v:g}" for v in entry[:3]) + ")"
        grid = ", ".join(f"{lr}: {dev:.3f}" for lr, dev in (row.get("grid") or {}).items())
        lr = f"{row['lr']:g}" + (f" (grid {grid})" if grid else "") if row.get("lr") else "fixed"
        lines.append(f"| {label} | {triple} | {row['amount_hsk']:.3g} | {lr} | {row['dev_mean']:.3f} ± "
                     f"{row['dev_std']:.3f} | {row['seeds']} |")
    return "\n".join(lines)


def subject(teacher: str, task: str | None, task_options: dict) -> str:
    """"<task>, <base model> teacher" for the plot titles: the task given, else the one the teacher recorded."""
    from hskstore.data.tasks import task_name_of
    from hskstore.models.teacher import teacher_task

    recorded = teacher_task(teacher) or {}
    name = task_name_of(task, task_options) if task else recorded.get("name") or recorded.get("task") or "task"
    meta = Path(teacher) / "hskstore_teacher.json"
    base = json.loads(meta.read_text()).get("base_model") if meta.is_file() else None
    return f"{name}, {Path(str(base or teacher).rstrip('/')).name} teacher"


def plot(study: str, summary: dict, path: Path, title: str = "tweets, MiniLM teacher") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if study == "amount":
        from hskstore.experiments.sweep import plot_sweep

        rows = [summary[_key(e)] for e in STUDIES[study]] + [summary["full"], summary["pred"]]
        return plot_sweep(rows, path, title=f"{title}: dev {summary['pred'].get('metric', 'accuracy')} against A^HSK")
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    pred, full = summary["pred"], summary["full"]
    if study in CURVES:
        rows = [summary[_key(e)] for e in STUDIES[study]] + [full]
        dim = CURVES[study]
        full_value = {"depth": 4, "length": 64, "width": 1.0}[dim]
        xs = [full_value if r["kind"] == "full" or r[dim] is None else r[dim] for r in rows]
        ax.errorbar(xs, [r["dev_mean"] for r in rows], yerr=[r["dev_std"] for r in rows], fmt="o-", capsize=3,
                    label=f"HSK + prediction, {dim} compressed")
        ax.set_xscale("log" if dim != "depth" else "linear")
        ax.set_xlabel({"depth": "N^D (student layers distilled; 4 = all)", "length": "N^L (tokens; 64 = all)",
                       "width": "N^W (fraction of activations; 1 = all)"}[dim])
    else:
        rows = [summary[_key(e)] for e in STUDIES[study]]
        labels = [_label(e).split(" (")[0] for e in STUDIES[study]]
        ax.errorbar(range(len(rows)), [r["dev_mean"] for r in rows], yerr=[r["dev_std"] for r in rows], fmt="o",
                    capsize=4, color="C0", label="HSK + prediction")
        ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=15)
        ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.axhline(pred["dev_mean"], linestyle=":", color="C2", label="prediction-only KD")
    ax.axhspan(pred["dev_mean"] - pred["dev_std"], pred["dev_mean"] + pred["dev_std"], color="C2", alpha=0.12)
    ax.axhline(pred["teacher_dev"], color="grey", linewidth=0.8, label="teacher")
    ax.set_ylabel(f"dev {pred.get('metric', 'accuracy')} (mean ± sd)")
    ax.set_title(f"{title}: {study}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    parser = common.study_parser(__doc__, "Directory for findings-<study>.png [default: --output].")
    parser.add_argument("--studies", default=",".join(STUDIES), help="Comma-separated subset of the studies.")
    args = parser.parse_args()

    studies = [s.strip() for s in args.studies.split(",")]
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        parser.error(f"unknown studies {unknown}; known: {list(STUDIES)}")
    grid = common.lr_grid(args)
    from hskstore.models.teacher import teacher_max_length
    from hskstore.experiments.sweep import plan

    drawn = plan(SweepConfig.of(teacher=args.teacher, task=args.task, output=args.output, levels=LEVELS,
                                full_baseline=False, pred_baseline=False), teacher_max_length(args.teacher))
    STUDIES["amount"] = [(p.compression.depth, p.compression.length, p.compression.width) for p in drawn]
    shared = common.study_settings(args)
    echo = lambda line: print(line, flush=True)  # noqa: E731
    out = Path(args.output)
    # One initial student for both sweeps: cut once, by the fair sweep, from the base point's store.
    fair = sweep(SweepConfig.of(output=str(out / "fair"), points=(BASE,), pred_lr_grid=grid, point_lr_grid=grid,
                                **shared), echo=echo)
    summary = {row["point"]: row for row in fair["summary"]}
    lr = summary[_key(BASE)]["lr"]
    print(f"\nthe base point picked lr {lr:g}: every study arm trains at it", flush=True)
    others = list({_key(e): e for s in studies for e in STUDIES[s] if _key(e) not in summary}.values())
    if others:
        result = sweep(SweepConfig.of(output=str(out / "studies"), points=tuple(others),
                                      student=str(out / "fair" / "student"), full_baseline=False,
                                      pred_baseline=False, hsk_lr=lr, pred_lr=lr, **shared),
                       echo=echo)
        summary |= {row["point"]: row | {"lr": lr} for row in result["summary"]}
    plots = Path(args.plots or args.output)
    plots.mkdir(parents=True, exist_ok=True)
    for study in studies:
        print("\n" + table(study, summary))
        if study == "fair":
            continue
        try:
            png = plots / ('findings-' + study.replace(' ', '-').lower() + '.png')
            print(f"\nplot: {plot(study, summary, png, subject(args.teacher, args.task, shared['task_options']))}")
        except ImportError:
            print("plot skipped: matplotlib is not installed")
    (out / "findings.json").write_text(json.dumps(
        {"studies": {s: [_key(e) for e in STUDIES[s]] for s in studies}, "lr": lr, "summary": list(summary.values())},
        indent=2))


if __name__ == "__main__":
    main()
