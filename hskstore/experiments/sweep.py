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
import os
import random
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..configs.extract import ExtractConfig
from ..configs.train import TrainConfig
from ..method.compression import Compression, parse_width
from ..errors import ConfigError
from ..options import build, each, nested, option

__all__ = ["SweepConfig", "SweepPoint", "configurations_for", "plan", "point_of", "obtain_store", "sweep", "plot_sweep",
           "parse_point", "parse_numbers"]

WIDTH_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # N^W fractions the paper draws from


# What a point may change besides its triple: the store's strategies, and the HSK loss.
POINT_COMPRESSION_OPTIONS = ("length_strategy", "score_layer", "score_kind", "width_strategy", "width_seed", "l_top",
                             "value_bits", "value_format")
POINT_TRAIN_OPTIONS = ("hsk_loss",)


def parse_point(text: str) -> tuple:
    """N^D,N^L,N^W[,option=value...]: 1,9,0.1 or 4,all,all or 1,9,0.1,width_strategy=rand,hsk_loss=kept."""
    usage = f"a point is N^D,N^L,N^W[,option=value...] such as 1,9,0.1 or 1,all,0.1,hsk_loss=kept, got {text!r}"
    parts = text.split(",")
    if len(parts) < 3 or any("=" in p for p in parts[:3]) or any("=" not in p for p in parts[3:]):
        raise ValueError(usage)
    try:
        triple = tuple(None if p.strip() == "all" else convert(p)
                       for p, convert in zip(parts[:3], (int, int, parse_width)))
    except ValueError:
        raise ValueError(usage) from None
    options = {}
    for part in parts[3:]:
        key, raw = (s.strip() for s in part.split("=", 1))
        whole = key in ("l_top", "width_seed", "value_bits") and key in POINT_COMPRESSION_OPTIONS
        try:
            options[key] = int(raw) if whole else raw
        except ValueError:
            raise ValueError(f"point option {key} takes a whole number, got {raw!r}") from None
    return triple + (options,) if options else triple


def parse_numbers(text: str) -> tuple[float, ...]:
    """Comma-separated numbers: 2e-5,5e-5,1e-4."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


@dataclass(frozen=True)
class SweepPoint:
    key: str                          # directory name and table row: hsk-1-9-0.1, hsk-1-9-0.1+width_strategy=rand
    kind: str                         # hsk | full | pred
    compression: Compression | None   # None for prediction-only KD
    train_options: tuple = ()         # (name, value) pairs for TrainConfig, such as (("hsk_loss", "kept"),)
    variant: str = ""                 # the options that differ from the defaults, as in the key
    store_key: str = ""               # the key without training options: points differing only there share a store


@dataclass(frozen=True)
class SweepConfig:
    """A sweep's points and seeds, with an extract config for its stores and a train config for its runs.

    The two templates hold what every store and every run share; the sweep sets per store the output, the
    compression, the max length (the teacher's when None) and the data seed, and per run the store, the
    student, the output, the stages, the seed and the point's options. `SweepConfig.of(...)` takes all of
    it as flat keywords, as the command line does.
    """

    output: str = option(help="Sweep directory: stores/, runs/, results.json/.csv, sweep.png.")
    extract: ExtractConfig = nested(ExtractConfig, only=("teacher", "task", "task_options", "limit", "max_length",
                                                         "device", "allow_task_mismatch"),
                                    defaults={"task": None, "output": ""})  # the teacher, task (None: the teacher's), limit...
    train: TrainConfig = nested(TrainConfig, only=("hsk_epochs", "pred_epochs", "hsk_lr", "pred_lr", "hsk_batch_size",
                                                   "pred_batch_size", "device"),
                                defaults={"store": "", "student": "", "output": ""},  # set per run
                                factory=lambda: TrainConfig(store="", student="", output=""))
    student: str = option("rosita", "Initial student directory, or 'rosita' to cut one from the teacher once.")
    points: tuple[tuple, ...] = option(           # (N^D, N^L, N^W) or (N^D, N^L, N^W, {option: value}); None = all
        (), "N^D,N^L,N^W[,option=value...]: 1,9,0.1; 4,all,all; 1,9,0.1,width_strategy=rand (repeat).",
        flag="--point", multiple=True, parse=each(parse_point))
    levels: tuple[float, ...] = option((), "Target A^HSK, spread over triples (repeat).", flag="--level",
                                       multiple=True, type=float)
    per_level: int = option(1, "Triples drawn per --level.")  # the paper sampled 13-112 per level
    seeds: tuple[int, ...] = option((0, 1, 2), "Training seeds of every point.",
                                    parse=lambda text: tuple(int(s) for s in parse_numbers(text)))
    student_layers: int = option(3, "L' of the student.")  # the layer mapping and N^D range
    full_baseline: bool = option(True, "Skip the full-HSK baseline.", flag="--no-full", negate=True)
    pred_baseline: bool = option(True, "Skip the prediction-only KD baseline.", flag="--no-pred",
                                 negate=True)  # same total epochs
    pred_lr_grid: tuple[float, ...] = option((2e-5, 5e-5, 1e-4, 5e-4), "Prediction-only KD learning rates; the "
                                             "best on dev is run for every seed.", parse=parse_numbers)
    point_lr_grid: tuple[float, ...] = option(    # fair against the baseline when equal to pred_lr_grid
        (), "HSK + prediction points: both stages' lr picked on dev the same way (give the baseline's grid for a "
        "fair comparison).", parse=parse_numbers, default_text="fixed --hsk-lr/--pred-lr")
    data_seed: int | None = None                  # None: the teacher's
    importance_examples: int | None = 2000        # ROSITA: examples scored when cutting the student
    level_seed: int = 0                           # which triples a level draws

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
        for point in self.points:
            if len(point) not in (3, 4) or (len(point) == 4 and not isinstance(point[3], dict)):
                problems.append(f"a point is (N^D, N^L, N^W) or (N^D, N^L, N^W, options), got {point!r}")
            elif len(point) == 4:
                unknown = set(point[3]) - set(POINT_COMPRESSION_OPTIONS) - set(POINT_TRAIN_OPTIONS)
                if unknown:
                    problems.append(f"unknown point options {sorted(unknown)}; known: "
                                    f"{list(POINT_COMPRESSION_OPTIONS + POINT_TRAIN_OPTIONS)}")
        if any(not lr > 0 for lr in self.point_lr_grid):
            problems.append(f"point_lr_grid must hold positive learning rates, got {list(self.point_lr_grid)}")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def of(cls, **settings) -> "SweepConfig":
        """From flat keywords, as the command line gives them: teacher, task, limit and max_length go to the
        extract template, the stages' epochs, lrs and batch sizes to the train template, device to both."""
        return build(cls, settings, strict="sweep")

    def epochs(self, task_name: str) -> tuple[int, int]:
        from ..runtime.schedules import default_schedules

        schedules = default_schedules(task_name)
        return (self.train.hsk_epochs or schedules["hsk"].epochs, self.train.pred_epochs or schedules["pred"].epochs)


def configurations_for(level: float, student_layers: int, max_length: int, tolerance: float = 0.1,
                       widths=WIDTH_GRID) -> list[tuple[int, int, float]]:
    """Every (N^D, N^L, N^W) with N^D * N^L * N^W within `tolerance` of the level (the paper's +-10%)."""
    found = []
    for depth, length, width in itertools.product(range(1, student_layers + 2), range(1, max_length + 1), widths):
        if abs(depth * length * width - level) <= tolerance * level:
            found.append((depth, length, width))
    return found


def _key(triple, options: dict | None = None) -> str:
    key = "hsk-" + "-".join("all" if v is None else f"{v:g}" for v in triple)
    return key + "".join(f"+{k}={v}" for k, v in sorted((options or {}).items()))


def point_of(entry, student_layers: int) -> SweepPoint:
    """A SweepPoint from (N^D, N^L, N^W[, options]); N^L None keeps every token, N^W None every activation."""
    depth, length, width = entry[:3]
    options = dict(entry[3]) if len(entry) == 4 else {}
    compression_options = {k: v for k, v in options.items() if k in POINT_COMPRESSION_OPTIONS}
    if length is None:
        compression_options.setdefault("length_strategy", "all")
    compression = Compression(depth=None if depth is None else int(depth), length=None if length is None else int(length),
                              width=width, student_layers=student_layers, **compression_options)
    train_options = tuple(sorted((k, v) for k, v in options.items() if k in POINT_TRAIN_OPTIONS))
    variant = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    store_options = {k: v for k, v in options.items() if k in POINT_COMPRESSION_OPTIONS}
    return SweepPoint(_key((depth, length, width), options), "hsk", compression, train_options, variant,
                      _key((depth, length, width), store_options))


def plan(config: SweepConfig, max_length: int) -> list[SweepPoint]:
    """The sweep's points in run order: the given points, then each level's draws, then the baselines."""
    entries = [tuple(t) for t in config.points]
    rng = random.Random(config.level_seed)
    for level in config.levels:
        options = [t for t in configurations_for(level, config.student_layers, max_length) if t not in entries]
        if not options:
            raise ConfigError(f"no (N^D, N^L, N^W) reaches A^HSK = {level} +-10% with L'={config.student_layers} and "
                              f"max length {max_length}: choose another level")
        entries += rng.sample(options, min(config.per_level, len(options)))
    points = [point_of(e, config.student_layers) for e in entries]
    keys = [p.key for p in points]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"points repeat: {repeated}; give each point once")
    if config.full_baseline:
        points.append(SweepPoint("full", "full", Compression.full(student_layers=config.student_layers),
                                 store_key="full"))
    if config.pred_baseline:
        points.append(SweepPoint("pred", "pred", None))
    return points


def _strategies(c: Compression) -> dict:
    """What a cover store shares with the points sliced from it: all but the triple and the value format (a cover
    is float16; `slice_store` quantizes a point's values as extraction would)."""
    return {**c.to_dict(), "depth": 0, "length": 0, "width": 0, "value_format": "float16"}


def cover_compressions(points, teacher: str, max_length: int) -> list[Compression]:
    """The smallest stores the sliceable points derive from, one per group of points that share their
    strategies: the largest N^D, N^L and N^W of the group, with float16 values (quantized points are
    requantized from it). Groups of one, and width strategies that do not nest (the strategy says) unless
    every member keeps the same width (static masks: points that differ in their value format only), are
    extracted on their own."""
    from ..models.teacher import check_bert_family

    sliceable = [p.compression for p in points if p.kind == "hsk" and p.compression.length is not None
                 and (p.compression.width_rule.nests or not p.compression.width_rule.per_vector)]
    groups: dict[str, list[Compression]] = {}
    for c in sliceable:
        groups.setdefault(json.dumps(_strategies(c), sort_keys=True), []).append(c)
    groups = {k: list(dict.fromkeys(g)) for k, g in groups.items()}
    if not any(len(g) > 1 for g in groups.values()):
        return []
    config = check_bert_family(teacher)
    covers = []
    for group in (g for g in groups.values() if len(g) > 1):
        resolved = [c.resolve(config["num_hidden_layers"], config["hidden_size"], max_length) for c in group]
        if not group[0].width_rule.nests and len({r.width for r in resolved}) > 1:
            continue   # static masks of different widths need not nest (`uniform`): each is extracted
        # Each dimension as the largest member spells it, so "every activation" stays None and nests.
        largest = {name: getattr(max(zip(group, resolved), key=lambda cr: getattr(cr[1], name))[0], name)
                   for name in ("depth", "length", "width")}
        covers.append(Compression.from_dict(group[0].to_dict() | largest | {"value_format": "float16"}))
    return covers


def obtain_store(config: SweepConfig, compression: Compression, path: Path, max_length: int, data_seed: int,
                 cover: str | list[str] | None = None) -> str:
    """The store of one point: reused when complete, sliced from a source store it nests in (a cover
    store, or full HSK for points that keep every token; no teacher run), else extracted (or resumed)."""
    from ..errors import StoreError
    from ..stages.extract import extract
    from ..store import store_state

    if store_state(str(path))[0] == "complete":
        return str(path)
    sources = [cover] if isinstance(cover, str) else list(cover or [])
    for source_path in sources:
        from ..store import open_store
        from ..store.slicing import plan_slice, slice_store

        with open_store(source_path) as source:
            try:
                new_c, _ = plan_slice(source, compression.depth, compression.length, compression.width,
                                      compression.value_format)
            except StoreError:
                new_c = None
        if new_c is not None and new_c == compression:
            slice_store(source_path, str(path), depth=compression.depth, length=compression.length,
                        width=compression.width, value_format=compression.value_format, overwrite=True)
            return str(path)
    extract(replace(config.extract, output=str(path), compression=compression, max_length=max_length,
                    data_seed=data_seed), progress=False)
    return str(path)


def _train(config: SweepConfig, store: str, student: str, output: Path, seed: int, stages, **overrides) -> dict:
    """One training run, or its saved metrics when it already finished (resumable sweeps)."""
    from ..stages.train import train

    metrics = output / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text()) | {"reused": True}
    started = time.perf_counter()
    result = train(replace(config.train, store=store, student=student, output=str(output), stages=tuple(stages),
                           seed=seed, **overrides), progress=False)
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
    from ..data.metrics import primary_metric

    key = primary_metric(metric)
    compression = point.compression
    return {"point": point.key, "kind": point.kind, "seed": seed,
            "depth": compression.depth if compression else 0, "length": compression.length if compression else 0,
            "width": compression.width if compression else 0,
            "amount_hsk": (result["amount_hsk"] if amount is None else amount) if compression else 0.0,
            "variant": point.variant, "pred_lr": lr if point.kind == "pred" else None, "lr": lr,
            "metric": key, "dev": result["student_dev"][key],
            "teacher_dev": result["teacher_dev"][key], "seconds": result.get("seconds")}


def resolve_data(config: SweepConfig, data_seed: int) -> dict:
    """The task the sweep's stores hold, loaded as extract will load it: {"task", "source", "examples"}.

    Raises:
        DataError: the teacher records no task and none is given, the given one is not the teacher's, or the
            data cannot be loaded (a missing file, GLUE files not found in --data-dir).
    """
    from ..data.tasks import load_task, resolve_task
    from ..models.teacher import teacher_task

    extract = config.extract
    task, options = resolve_task(teacher_task(extract.teacher), extract.task, extract.task_options,
                                 allow_mismatch=extract.allow_task_mismatch, owner=f"teacher {extract.teacher}")
    data = load_task(task, limit=extract.limit, seed=data_seed, **options)
    return {"task": data.spec.name, "source": str(task),
            "examples": {s: data.num_examples(s) for s in extract.splits}}


def sweep(config: SweepConfig, echo=None, dry_run: bool = False) -> dict:
    """Run (or resume) the sweep; returns {"points": [...], "rows": [...], "summary": [...], "files": {...}}."""
    from ..models.teacher import teacher_data_seed, teacher_max_length
    from .demo import build_student
    from ..store.report import store_info

    out = Path(config.output)
    teacher = config.extract.teacher
    max_length = config.extract.max_length or teacher_max_length(teacher)
    data_seed = teacher_data_seed(teacher) if config.data_seed is None else config.data_seed
    points = plan(config, max_length)
    hsk_points = [p for p in points if p.kind != "pred"]
    grid = list(config.pred_lr_grid) if config.pred_baseline else []
    per_point = len(config.point_lr_grid) + len(config.seeds) - 1 if config.point_lr_grid else len(config.seeds)
    total = len(hsk_points) * per_point + (len(grid) + len(config.seeds) - 1 if grid else 0)
    if dry_run:
        return {"points": [{"key": p.key, "kind": p.kind} for p in points], "runs": total,
                **resolve_data(config, data_seed)}
    _check_recipe(out, config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"config": asdict(config), "max_length": max_length}, indent=2,
                                               default=str))
    progress = _Progress(total, echo)
    # The teacher runs once per cover store; every point that nests in one is sliced from it, and points
    # that keep every token are sliced from the full-HSK store.
    sources = []
    for i, covering in enumerate(cover_compressions(hsk_points, teacher, max_length)):
        name = "cover.zarr" if i == 0 else f"cover-{i + 1}.zarr"
        sources.append(obtain_store(config, covering, out / "stores" / name, max_length, data_seed))
    full = [p for p in hsk_points if p.kind == "full"]
    if full and any(p.kind == "hsk" and p.compression.length is None for p in hsk_points):
        sources.append(obtain_store(config, full[0].compression, out / "stores" / "full.zarr", max_length, data_seed))
    stores: dict[str, str] = {}

    def store_of(point: SweepPoint) -> str:
        if point.store_key not in stores:
            stores[point.store_key] = obtain_store(config, point.compression,
                                                   out / "stores" / f"{point.store_key}.zarr", max_length,
                                                   data_seed, sources)
        return stores[point.store_key]

    first_store = store_of(hsk_points[0])
    student = config.student
    if student == "rosita":  # one initial student for every point and seed: only the HSK differs
        student = str(out / "student")
        if not any((Path(student) / name).is_file() for name in ("student.json", "config.json")):  # a rerun reuses it
            build_student("rosita", student, teacher=teacher, store=first_store,
                          importance_examples=config.importance_examples, device="cpu", progress=False)
    rows = []
    hsk_bytes: dict[str, float] = {}
    point_grid = list(config.point_lr_grid)
    for point in hsk_points:
        store = store_of(point)
        # As `hskstore info` counts it: full HSK keeps real tokens only, not the padded slots.
        info = store_info(store)
        amount = info["amount_hsk"]
        hsk_bytes[point.key] = info["bytes_per_example"]["hsk"]   # values (+ scales), masks, positions
        options = dict(point.train_options)
        if not point_grid:
            for seed in config.seeds:
                result = _train(config, store, student, out / "runs" / point.key / f"seed{seed}", seed,
                                ("hsk", "pred"), **options)
                rows.append(_row(point, seed, result, result["metric"], amount=amount))
                progress.update(f"{point.key} seed {seed}", rows[-1]["dev"],
                                None if result["reused"] else result["seconds"])
            continue
        rows += _tuned(config, point, store, student, out, point_grid, progress, ("hsk", "pred"),
                       lambda lr: options | {"hsk_lr": lr, "pred_lr": lr}, amount)
    if grid:
        rows += _prediction_only(config, [p for p in points if p.kind == "pred"][0], first_store,
                                 student, out, grid, progress)
    for row in rows:   # accuracy per byte: the stored HSK of the point's store (0 for prediction-only KD)
        row["hsk_bytes_per_example"] = round(hsk_bytes.get(row["point"], 0.0), 1)
    summary = _summarise(rows)
    files = _write_results(out, rows, summary)
    try:
        title = f"{config.extract.task or Path(teacher).name}: dev {rows[0]['metric']}"
        files["plot"] = str(plot_sweep(summary, out / "sweep.png", title=title))
    except ImportError:
        files["plot"] = None
        if echo:
            echo("plot skipped: matplotlib is not installed (pip install 'hskstore[plot]')")
    return {"points": [p.key for p in points], "rows": rows, "summary": summary, "files": files}


# What finished runs depend on: a rerun may add points, levels or seeds, but not change these: the sweep's own
# fields below, and the templates' but for what the sweep sets per store or run (or that changes no result).
_RECIPE = ("student", "student_layers", "pred_lr_grid", "point_lr_grid", "data_seed", "importance_examples")
_PER_STORE = ("output", "compression", "data_seed", "device", "overwrite", "storage_options")
_PER_RUN = ("store", "student", "output", "stages", "seed", "device", "overwrite", "resume", "storage_options")


def _recipe(config: dict) -> dict:
    """A sweep.json config as one flat dict, the form sweep.json had before the templates (still read)."""
    if "extract" not in config:
        return config
    flat = {k: v for k, v in config["extract"].items() if k not in _PER_STORE}
    flat |= {f"train.{k}" if k in flat else k: v for k, v in config["train"].items() if k not in _PER_RUN}
    return flat | {k: config[k] for k in _RECIPE if k in config}


def _same(key: str, old, new) -> bool:
    """Recipe values agree; a local teacher directory given once relative and once absolute is the same one."""
    if old == new:
        return True
    if key.endswith("teacher") and isinstance(old, str) and isinstance(new, str):
        try:
            return os.path.samefile(old, new)
        except OSError:   # a hub id, or a path that is gone
            return False
    return False


def _check_recipe(out: Path, config: SweepConfig) -> None:
    """Refuse to reuse finished runs made with another recipe (they would be silently mixed in)."""
    saved = out / "sweep.json"
    if not saved.is_file():
        return
    old = _recipe(json.loads(saved.read_text()).get("config", {}))
    new = _recipe(json.loads(json.dumps(asdict(config), default=str)))
    diffs = [f"{k}: {old[k]!r} then, {v!r} now" for k, v in new.items() if k in old and not _same(k, old[k], v)]
    if diffs:
        raise ConfigError(f"{out} holds a sweep with another recipe ({'; '.join(diffs[:3])}): use another --output, "
                          "or the same options to resume it")


def _prediction_only(config, point, store, student, out: Path, grid, progress) -> list[dict]:
    """Prediction-only KD for HSK + prediction's total epochs; lr picked on dev with the first seed."""
    from ..store import open_store

    hsk_epochs, pred_epochs = config.epochs(open_store(store).task["name"])
    return _tuned(config, point, store, student, out, grid, progress, ("pred",),
                  lambda lr: {"pred_epochs": hsk_epochs + pred_epochs, "pred_lr": lr})


def _tuned(config, point, store, student, out: Path, grid, progress, stages, overrides, amount=None) -> list[dict]:
    """Every lr of the grid with the first seed, then the best on dev with the other seeds: one tuning
    rule for every arm, so no arm wins by having had more tries."""
    first, scores = config.seeds[0], {}
    for lr in grid:
        result = _train(config, store, student, out / "runs" / point.key / f"lr{lr:g}-seed{first}", first, stages,
                        **overrides(lr))
        scores[lr] = _row(point, first, result, result["metric"], lr, amount)
        progress.update(f"{point.key} lr {lr:g} seed {first}", scores[lr]["dev"],
                        None if result["reused"] else result["seconds"])
    best = max(grid, key=lambda lr: scores[lr]["dev"])
    rows = [dict(scores[best], grid={f"{lr:g}": scores[lr]["dev"] for lr in grid})]
    for seed in config.seeds[1:]:
        result = _train(config, store, student, out / "runs" / point.key / f"lr{best:g}-seed{seed}", seed, stages,
                        **overrides(best))
        rows.append(_row(point, seed, result, result["metric"], best, amount))
        progress.update(f"{point.key} lr {best:g} seed {seed}", rows[-1]["dev"],
                        None if result["reused"] else result["seconds"])
    return rows


def _summarise(rows: list[dict]) -> list[dict]:
    """Per point: mean and sample standard deviation of the dev metric over seeds."""
    summary = []
    for key in dict.fromkeys(r["point"] for r in rows):
        group = [r for r in rows if r["point"] == key]
        devs = [r["dev"] for r in group]
        summary.append({"point": key, "kind": group[0]["kind"], "amount_hsk": group[0]["amount_hsk"],
                        "depth": group[0]["depth"], "length": group[0]["length"], "width": group[0]["width"],
                        "variant": group[0].get("variant", ""), "pred_lr": group[0]["pred_lr"],
                        "hsk_bytes_per_example": group[0].get("hsk_bytes_per_example"),
                        "lr": group[0].get("lr"), "grid": group[0].get("grid"), "seeds": len(devs), "dev_mean": statistics.mean(devs),
                        "dev_std": statistics.stdev(devs) if len(devs) > 1 else 0.0,
                        "teacher_dev": group[0]["teacher_dev"], "metric": group[0]["metric"]})
    return summary


def _write_results(out: Path, rows: list[dict], summary: list[dict]) -> dict:
    (out / "results.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    columns = ["point", "kind", "variant", "depth", "length", "width", "amount_hsk", "hsk_bytes_per_example", "lr", "seeds", "dev_mean", "dev_std",
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
