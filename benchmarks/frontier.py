"""The accuracy-per-byte frontier: how few bytes an example's stored HSK can take and still distil as well.

    python benchmarks/frontier.py --teacher runs/default/teacher --output runs/frontier \
        [--limit 2000] [--hsk-epochs 1] [--pred-epochs 1] [--batch-size 16] [--lr-grid 2e-4,5e-4,1e-3] \
        [--seeds 0,1,2] [--plots docs]

One `hskstore sweep` (resumable), every arm at (1, 9, 0.1) and tuned by the same rule as the fair comparison
of docs/results.md: each lr of --lr-grid (both stages at that lr) with the first seed, the best on dev with
the others. The arms:
  mag      the value formats: float16, float16 rounded to 7 mantissa bits, int8, int4, int4-log (per-vector masks)
  static   uniform and rand width (one mask for the whole store, no mask bytes) with int8 and int4
plus prediction-only KD and full HSK, tuned the same way, as reference lines. Each arm's bytes per example
are the store's own, as `hskstore info` counts them (every component: values, scales, masks, positions,
tokens, labels, logits). Prints a markdown table with the frontier marked and writes frontier.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402  (sets the offline environment first)

from hskstore.experiments.sweep import SweepConfig, sweep  # noqa: E402

BASE = (1, 9, 0.1)
ARMS = {   # label -> the point's options
    "mag float16": {},
    "mag 7-bit": {"value_bits": 7},
    "mag int8": {"value_format": "int8"},
    "mag int4": {"value_format": "int4"},
    "mag int4-log": {"value_format": "int4-log"},
    "uniform int8": {"width_strategy": "uniform", "value_format": "int8"},
    "uniform int4": {"width_strategy": "uniform", "value_format": "int4"},
    "rand int8": {"width_strategy": "rand", "value_format": "int8"},
    "rand int4": {"width_strategy": "rand", "value_format": "int4"},
}


def point(options: dict) -> tuple:
    return BASE + (options,) if options else BASE


def _key(options: dict) -> str:
    from hskstore.experiments.sweep import _key as sweep_key

    return sweep_key(BASE, options or None)


def bytes_per_example(store: Path) -> dict:
    from hskstore.store.report import store_info

    return store_info(str(store))["bytes_per_example"]


def frontier(rows: list[dict]) -> set[str]:
    """Arms no other arm beats on both bytes (fewer or equal) and accuracy (higher or equal, one strictly)."""
    best = set()
    for row in rows:
        dominated = any(o is not row and o["bytes"] <= row["bytes"] and o["dev_mean"] >= row["dev_mean"]
                        and (o["bytes"] < row["bytes"] or o["dev_mean"] > row["dev_mean"]) for o in rows)
        if not dominated:
            best.add(row["label"])
    return best


def table(rows: list[dict], references: dict) -> str:
    on_frontier = frontier(rows)
    lines = ["| arm (1, 9, 0.1) | bytes per example (values + scales + masks / total) | picked lr (grid, seed 0) "
             "| dev accuracy, mean ± sd | on the frontier |", "|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: r["bytes"]):
        b = row["components"]
        hsk = b.get("values", 0) + b.get("value_scales", 0) + b.get("masks", 0)
        grid = ", ".join(f"{lr}: {dev:.3f}" for lr, dev in (row.get("grid") or {}).items())
        lines.append(f"| {row['label']} | {hsk:.0f} / **{row['bytes']:.0f}** | {row['lr']:g} ({grid}) | "
                     f"{row['dev_mean']:.3f} ± {row['dev_std']:.3f} | {'yes' if row['label'] in on_frontier else ''} |")
    for name, row in references.items():
        lines.append(f"| {name} | {row.get('bytes', 0):.0f} | {row['lr']:g} | {row['dev_mean']:.3f} ± "
                     f"{row['dev_std']:.3f} | reference |")
    return "\n".join(lines)


def plot(rows: list[dict], references: dict, teacher_dev: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=120)
    on_frontier = frontier(rows)
    for i, row in enumerate(sorted(rows, key=lambda r: r["bytes"])):
        marker = "s" if row["label"].startswith(("uniform", "rand")) else "o"
        ax.errorbar([row["bytes"]], [row["dev_mean"]], yerr=[row["dev_std"]], fmt=marker, capsize=3, color=f"C{i}",
                    label=row["label"], markerfacecolor=f"C{i}" if row["label"] in on_frontier else "white")
    front = sorted((r for r in rows if r["label"] in on_frontier), key=lambda r: r["bytes"])
    ax.plot([r["bytes"] for r in front], [r["dev_mean"] for r in front], "-", color="black", linewidth=0.8,
            label="frontier (filled markers)")
    pred, full = references["prediction-only KD"], references["full HSK"]
    ax.axhline(pred["dev_mean"], linestyle=":", color="C2", label=f"prediction-only KD ({pred['dev_mean']:.3f})")
    ax.axhspan(pred["dev_mean"] - pred["dev_std"], pred["dev_mean"] + pred["dev_std"], color="C2", alpha=0.10)
    ax.axhline(full["dev_mean"], linestyle="--", color="C1", label=f"full HSK ({full['dev_mean']:.3f})")
    ax.axhline(teacher_dev, color="grey", linewidth=0.8, label=f"teacher ({teacher_dev:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes per example (every component, on disk)")
    ax.set_ylabel("dev accuracy (mean ± sd, 3 seeds)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    parser = common.study_parser(__doc__, "Directory for frontier.png [default: --output].")
    parser.add_argument("--arms", default=",".join(ARMS), help="Comma-separated subset of the arms (by label).")
    args = parser.parse_args()

    labels = [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in labels if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {list(ARMS)}")
    grid = common.lr_grid(args)
    out = Path(args.output)
    result = sweep(SweepConfig.of(output=str(out), points=tuple(point(ARMS[a]) for a in labels), pred_lr_grid=grid,
                                  point_lr_grid=grid, **common.study_settings(args)),
                   echo=lambda line: print(line, flush=True))
    summary = {row["point"]: row for row in result["summary"]}
    rows = []
    for label in labels:
        row = summary[_key(ARMS[label])]
        components = bytes_per_example(out / "stores" / f"{row['point']}.zarr")
        rows.append(row | {"label": label, "components": components, "bytes": components["total"]})
    references = {"prediction-only KD": summary["pred"], "full HSK": summary["full"]}
    full_store = out / "stores" / f"{summary['full']['point']}.zarr"
    if full_store.exists():
        references["full HSK"] = references["full HSK"] | {"bytes": bytes_per_example(full_store)["total"]}
    print("\n" + table(rows, references))
    from hskstore.store.report import store_info

    task = store_info(str(out / "stores" / f"{rows[0]['point']}.zarr"))["task"]
    plots = Path(args.plots or args.output)
    plots.mkdir(parents=True, exist_ok=True)
    try:
        path = plot(rows, references, summary["pred"]["teacher_dev"], plots / "frontier.png",
                    f"{task}, MiniLM teacher, (1, 9, 0.1): dev accuracy against stored bytes")
        print(f"\nplot: {path}")
    except ImportError:
        print("plot skipped: matplotlib is not installed")
    (out / "frontier.json").write_text(json.dumps({"rows": rows, "references": references}, indent=2, default=str))


if __name__ == "__main__":
    main()
