"""Accuracy against the amount of HSK on the user's own data: the paper's Figure 8, resumable.

A sweep is a list of compression points (N^D, N^L, N^W), given directly or spread over target A^HSK
levels as the paper's Table 5 does, plus two baselines: prediction-only KD and full HSK. Each point's
store comes from `obtain_store` (one function: it extracts today, and can derive the store from a
larger one once stores can be sliced), and every point is trained over several seeds from the same
initial student. Fair baseline: prediction-only KD trains for the same total epochs as HSK +
prediction, at the learning rate that scored best on dev among a small grid (picked with the first
seed, then run for every seed). Every finished run leaves its metrics.json, so a rerun skips it.
Writes results.json, results.csv and, with matplotlib, sweep.png into the sweep directory.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import Compression
from .errors import ConfigError

__all__ = ["SweepConfig", "SweepPoint", "configurations_for", "plan", "obtain_store", "sweep", "plot_sweep"]

WIDTH_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # N^W fractions the paper draws from


@dataclass(frozen=True)
class SweepPoint:
    key: str                          # directory name and table row: hsk-1-9-0.1, full, pred
    kind: str                         # hsk | full | pred
    compression: Compression | None   # None for prediction-only KD


@dataclass(frozen=True)
class SweepConfig:
    teacher: str                                  # fine-tuned teacher directory
    task: str                                     # GLUE name, "tweets", or a file
    output: str                                   # sweep directory: stores/, runs/, results.*, sweep.png
    student: str = "rosita"                       # a student directory, or "rosita": cut from the teacher once
    points: tuple[tuple, ...] = ()                # (N^D, N^L, N^W) triples
    levels: tuple[float, ...] = ()                # target A^HSK levels, each spread over `per_level` triples
    per_level: int = 1                            # triples drawn per level (the paper sampled 13-112 per level)
    seeds: tuple[int, ...] = (0, 1, 2)
    student_layers: int = 3                       # L' of the student (the layer mapping and N^D range)
    full_baseline: bool = True                    # full HSK: every mapped layer, token and activation
    pred_baseline: bool = True                    # prediction-only KD, same total epochs
    pred_lr_grid: tuple[float, ...] = (2e-5, 5e-5, 1e-4, 5e-4)
    hsk_epochs: int | None = None                 # None: the task's schedule (schedules.py)
    pred_epochs: int | None = None
    hsk_lr: float | None = None
    pred_lr: float | None = None
    hsk_batch_size: int | None = None
    pred_batch_size: int | None = None
    limit: int | None = None                      # examples per split, as `extract --limit`
    max_length: int | None = None
    data_seed: int | None = None                  # None: the teacher's
    importance_examples: int | None = 2000        # ROSITA: examples scored when cutting the student
    level_seed: int = 0                           # which triples a level draws
    device: str = "auto"
    extract_options: dict = field(default_factory=dict)  # more ExtractConfig fields (chunk_rows, value_bits...)

    def __post_init__(self):
        problems = []
        if not (self.points or self.levels):
            problems.append("give at least one point (--point 1,9,0.1) or target level (--level 1)")
        if not self.seeds:
            problems.append("seeds must name at least one seed")
        if self.per_level < 1:
            problems.append(f"per_level must be >= 1, got {self.per_level}")
        if any(level <= 0 for level in self.levels):
            problems.append(f"levels must be positive amounts of HSK, got {list(self.levels)}")
        if self.pred_baseline and not self.pred_lr_grid:
            problems.append("pred_lr_grid must hold at least one learning rate for the prediction-only baseline")
        for triple in self.points:
            if len(triple) != 3:
                problems.append(f"a point is (N^D, N^L, N^W), got {triple!r}")
        if problems:
            raise ConfigError(problems)

    def epochs(self, task_name: str) -> tuple[int, int]:
        from .schedules import default_schedules

        schedules = default_schedules(task_name)
        return (self.hsk_epochs or schedules["hsk"].epochs, self.pred_epochs or schedules["pred"].epochs)


def configurations_for(level: float, student_layers: int, max_length: int, tolerance: float = 0.1,
                       widths=WIDTH_GRID) -> list[tuple[int, int, float]]:
    """Every (N^D, N^L, N^W) with N^D * N^L * N^W within `tolerance` of the level (the paper's +-10%)."""
    found = []
    for depth, length, width in itertools.product(range(1, student_layers + 2), range(1, max_length + 1), widths):
        if abs(depth * length * width - level) <= tolerance * level:
            found.append((depth, length, width))
    return found


def _key(triple) -> str:
    return "hsk-" + "-".join(f"{v:g}" for v in triple)


def plan(config: SweepConfig, max_length: int) -> list[SweepPoint]:
    """The sweep's points in run order: the given triples, then each level's draws, then the baselines."""
    triples = [tuple(t) for t in config.points]
    rng = random.Random(config.level_seed)
    for level in config.levels:
        options = [t for t in configurations_for(level, config.student_layers, max_length) if t not in triples]
        if not options:
            raise ConfigError(f"no (N^D, N^L, N^W) reaches A^HSK = {level} +-10% with L'={config.student_layers} and "
                              f"max length {max_length}: choose another level")
        triples += rng.sample(options, min(config.per_level, len(options)))
    points = [SweepPoint(_key(t), "hsk", Compression(depth=int(t[0]), length=int(t[1]), width=t[2],
                                                      student_layers=config.student_layers)) for t in triples]
    if config.full_baseline:
        points.append(SweepPoint("full", "full", Compression.full(student_layers=config.student_layers)))
    if config.pred_baseline:
        points.append(SweepPoint("pred", "pred", None))
    return points


def obtain_store(config: SweepConfig, compression: Compression, path: Path, max_length: int, data_seed: int) -> str:
    """The store of one point: reused when complete, else extracted (or resumed) from the teacher.

    The one place a sweep gets its stores, so deriving them from the largest store instead of
    re-running the teacher changes this function only.
    """
    from .extract import ExtractConfig, extract
    from .store import read_attrs

    if path.exists() and read_attrs(path).get("complete"):
        return str(path)
    extract(ExtractConfig(teacher=config.teacher, task=config.task, output=str(path), compression=compression,
                          max_length=max_length, limit=config.limit, data_seed=data_seed, device=config.device,
                          **config.extract_options), progress=False)
    return str(path)


def _train(config: SweepConfig, store: str, student: str, output: Path, seed: int, stages, **overrides) -> dict:
    """One training run, or its saved metrics when it already finished (resumable sweeps)."""
    from .train import TrainConfig, train

    metrics = output / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text()) | {"reused": True}
    schedule = dict(hsk_epochs=config.hsk_epochs, pred_epochs=config.pred_epochs, hsk_lr=config.hsk_lr,
                    pred_lr=config.pred_lr, hsk_batch_size=config.hsk_batch_size,
                    pred_batch_size=config.pred_batch_size) | overrides
    started = time.perf_counter()
    result = train(TrainConfig(store=store, student=student, output=str(output), stages=tuple(stages), seed=seed,
                               device=config.device, **schedule), progress=False)
    result["seconds"] = time.perf_counter() - started
    metrics.write_text(json.dumps(result, indent=2))
    shutil.rmtree(output / "checkpoint", ignore_errors=True)  # only a resume needs it; the best student stays
    return result | {"reused": False}


class _Progress:
    """Runs done, seconds per run (fresh runs only) and the ETA, one line per run."""

    def __init__(self, total: int, echo):
        self.total, self.done, self.seconds, self.echo = total, 0, [], echo

    def update(self, label: str, value: float, seconds: float | None):
        self.done += 1
        if seconds is not None:
            self.seconds.append(seconds)
        mean = statistics.mean(self.seconds) if self.seconds else 0.0
        eta = mean * (self.total - self.done)
        took = "reused" if seconds is None else f"{seconds:.0f} s"
        if self.echo:
            self.echo(f"[{self.done}/{self.total}] {label}: dev {value:.4f} ({took}; "
                      f"{mean:.0f} s per run, ETA {eta / 60:.1f} min)")


def _row(point: SweepPoint, seed: int, result: dict, metric: str, lr: float | None = None,
         amount: float | None = None) -> dict:
    from .metrics import primary_metric

    key = primary_metric(metric)
    compression = point.compression
    return {"point": point.key, "kind": point.kind, "seed": seed,
            "depth": compression.depth if compression else 0, "length": compression.length if compression else 0,
            "width": compression.width if compression else 0,
            "amount_hsk": (result["amount_hsk"] if amount is None else amount) if compression else 0.0,
            "pred_lr": lr, "metric": key, "dev": result["student_dev"][key],
            "teacher_dev": result["teacher_dev"][key], "seconds": result.get("seconds")}


def sweep(config: SweepConfig, echo=None, dry_run: bool = False) -> dict:
    """Run (or resume) the sweep; returns {"points": [...], "rows": [...], "summary": [...], "files": {...}}."""
    from .extract import teacher_data_seed, teacher_max_length
    from .pipeline import build_student
    from .report import store_info

    out = Path(config.output)
    max_length = config.max_length or teacher_max_length(config.teacher)
    data_seed = teacher_data_seed(config.teacher) if config.data_seed is None else config.data_seed
    points = plan(config, max_length)
    hsk_points = [p for p in points if p.kind != "pred"]
    grid = list(config.pred_lr_grid) if config.pred_baseline else []
    total = len(hsk_points) * len(config.seeds) + (len(grid) + len(config.seeds) - 1 if grid else 0)
    if dry_run:
        return {"points": [{"key": p.key, "kind": p.kind} for p in points], "runs": total}
    _check_recipe(out, config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"config": asdict(config), "max_length": max_length}, indent=2,
                                               default=str))
    progress = _Progress(total, echo)
    stores = {p.key: obtain_store(config, p.compression, out / "stores" / f"{p.key}.zarr", max_length, data_seed)
              for p in hsk_points[:1]}
    student = config.student
    if student == "rosita":  # one initial student for every point and seed: only the HSK differs
        student = str(out / "student")
        if not (Path(student) / "config.json").is_file():
            build_student("rosita", student, teacher=config.teacher, store=stores[hsk_points[0].key],
                          importance_examples=config.importance_examples, device="cpu", progress=False)
    rows, amounts = [], {}
    for point in hsk_points:
        if point.key not in stores:
            stores[point.key] = obtain_store(config, point.compression, out / "stores" / f"{point.key}.zarr",
                                             max_length, data_seed)
        # As `hskstore info` counts it: full HSK keeps real tokens only, not the padded slots.
        amounts[point.key] = store_info(stores[point.key])["amount_hsk"]
        for seed in config.seeds:
            result = _train(config, stores[point.key], student, out / "runs" / point.key / f"seed{seed}", seed,
                            ("hsk", "pred"))
            rows.append(_row(point, seed, result, result["metric"], amount=amounts[point.key]))
            progress.update(f"{point.key} seed {seed}", rows[-1]["dev"], None if result["reused"] else result["seconds"])
    if grid:
        rows += _prediction_only(config, [p for p in points if p.kind == "pred"][0], stores[hsk_points[0].key],
                                 student, out, grid, progress)
    summary = _summarise(rows)
    files = _write_results(out, rows, summary)
    try:
        files["plot"] = str(plot_sweep(summary, out / "sweep.png", title=f"{config.task}: dev {rows[0]['metric']}"))
    except ImportError:
        files["plot"] = None
        if echo:
            echo("plot skipped: matplotlib is not installed (pip install 'hskstore[plot]')")
    return {"points": [p.key for p in points], "rows": rows, "summary": summary, "files": files}


# What finished runs depend on: a rerun may add points, levels or seeds, but not change these.
_RECIPE = ("teacher", "task", "student", "student_layers", "pred_lr_grid", "hsk_epochs", "pred_epochs", "hsk_lr",
           "pred_lr", "hsk_batch_size", "pred_batch_size", "limit", "max_length", "data_seed", "importance_examples",
           "extract_options")


def _check_recipe(out: Path, config: SweepConfig) -> None:
    """Refuse to reuse finished runs made with another recipe (they would be silently mixed in)."""
    saved = out / "sweep.json"
    if not saved.is_file():
        return
    old = json.loads(saved.read_text()).get("config", {})
    new = json.loads(json.dumps(asdict(config), default=str))
    diffs = [f"{k}: {old.get(k)!r} then, {new[k]!r} now" for k in _RECIPE if old.get(k) != new[k]]
    if diffs:
        raise ConfigError(f"{out} holds a sweep with another recipe ({'; '.join(diffs[:3])}): use another --output, "
                          "or the same options to resume it")


def _prediction_only(config, point, store, student, out: Path, grid, progress) -> list[dict]:
    """Prediction-only KD for HSK + prediction's total epochs; lr picked on dev with the first seed."""
    from .store import open_store

    hsk_epochs, pred_epochs = config.epochs(open_store(store).task["name"])
    epochs = hsk_epochs + pred_epochs
    first, scores = config.seeds[0], {}
    for lr in grid:
        result = _train(config, store, student, out / "runs" / "pred" / f"lr{lr:g}-seed{first}", first, ("pred",),
                        pred_epochs=epochs, pred_lr=lr)
        scores[lr] = (result, _row(point, first, result, result["metric"], lr))
        progress.update(f"pred lr {lr:g} seed {first}", scores[lr][1]["dev"],
                        None if result["reused"] else result["seconds"])
    best = max(grid, key=lambda lr: scores[lr][1]["dev"])
    rows = [dict(scores[best][1], grid={f"{lr:g}": scores[lr][1]["dev"] for lr in grid})]
    for seed in config.seeds[1:]:
        result = _train(config, store, student, out / "runs" / "pred" / f"lr{best:g}-seed{seed}", seed, ("pred",),
                        pred_epochs=epochs, pred_lr=best)
        rows.append(_row(point, seed, result, result["metric"], best))
        progress.update(f"pred lr {best:g} seed {seed}", rows[-1]["dev"], None if result["reused"] else result["seconds"])
    return rows


def _summarise(rows: list[dict]) -> list[dict]:
    """Per point: mean and sample standard deviation of the dev metric over seeds."""
    summary = []
    for key in dict.fromkeys(r["point"] for r in rows):
        group = [r for r in rows if r["point"] == key]
        devs = [r["dev"] for r in group]
        summary.append({"point": key, "kind": group[0]["kind"], "amount_hsk": group[0]["amount_hsk"],
                        "depth": group[0]["depth"], "length": group[0]["length"], "width": group[0]["width"],
                        "pred_lr": group[0]["pred_lr"], "seeds": len(devs), "dev_mean": statistics.mean(devs),
                        "dev_std": statistics.stdev(devs) if len(devs) > 1 else 0.0,
                        "teacher_dev": group[0]["teacher_dev"], "metric": group[0]["metric"]})
    return summary


def _write_results(out: Path, rows: list[dict], summary: list[dict]) -> dict:
    (out / "results.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    columns = ["point", "kind", "depth", "length", "width", "amount_hsk", "pred_lr", "seeds", "dev_mean", "dev_std",
               "teacher_dev", "metric"]
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summary)
    return {"json": str(out / "results.json"), "csv": str(out / "results.csv")}


def plot_sweep(summary: list[dict], path: Path, title: str = "") -> Path:
    """Dev metric against A^HSK (log axis), error bars over seeds; prediction-only KD and full HSK as lines.

    Raises:
        ImportError: matplotlib is not installed (the optional extra `plot`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    hsk = sorted((s for s in summary if s["kind"] == "hsk"), key=lambda s: s["amount_hsk"])
    if hsk:
        ax.errorbar([s["amount_hsk"] for s in hsk], [s["dev_mean"] for s in hsk], yerr=[s["dev_std"] for s in hsk],
                    fmt="o-", capsize=3, label="compressed HSK + prediction")
    for kind, style, label in (("full", "--", "full HSK + prediction"), ("pred", ":", "prediction-only KD")):
        for s in (s for s in summary if s["kind"] == kind):
            ax.axhline(s["dev_mean"], linestyle=style, color="C1" if kind == "full" else "C2", label=label)
            ax.axhspan(s["dev_mean"] - s["dev_std"], s["dev_mean"] + s["dev_std"], alpha=0.12,
                       color="C1" if kind == "full" else "C2")
            if kind == "full":
                ax.errorbar([s["amount_hsk"]], [s["dev_mean"]], yerr=[s["dev_std"]], fmt="s", color="C1", capsize=3)
    if summary:
        ax.axhline(summary[0]["teacher_dev"], color="grey", linewidth=0.8, label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("A^HSK (token vectors per example, log scale)")
    ax.set_ylabel(f"dev {summary[0]['metric'] if summary else ''} (mean ± sd over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
