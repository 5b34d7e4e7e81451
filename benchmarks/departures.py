"""How much each departure from the released code changes what is distilled, measured on MiniLM and tweets.

    python benchmarks/departures.py [--teacher DIR] [--examples 256] [--batch-size 32]

For (1, 9, 0.1) at L' = 3 on tweets at max length 64 (default teacher: the packaged MiniLM-L6 with a
seeded head, real pre-trained activations):
- per-batch magnitude threshold (released) vs per-vector top-k (hskstore): kept entries per vector,
  over all vectors and for [CLS];
- k = int(w * d) (released) vs round(w * d) (hskstore) over the width grid, at d = 384 and 768;
- random mask: Bernoulli(w) per dimension (released) vs exactly k dimensions (hskstore): count spread;
- filler slots: share of slots the released code fills with [SEP]/[PAD] vectors under att-nosep,
  left and full HSK (hskstore leaves them empty and out of the loss);
- teacher dropout: relative change of the stored teacher layer when the teacher runs in train mode
  (released distillation loop) instead of eval mode (hskstore, online and offline).
Writes benchmarks/results/departures-<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402  (sets the offline environment first)

import torch  # noqa: E402

from hskstore.method.compression import Compression  # noqa: E402
from hskstore.data.tasks import load_task, tokenize  # noqa: E402
from hskstore.method.select import Selector, gather_tokens, rank_tokens, eligible_tokens  # noqa: E402
from hskstore.models.teacher import load_teacher, load_tokenizer  # noqa: E402

WIDTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def quantiles(values: list[float]) -> dict:
    values = sorted(values)
    return {"min": values[0], "median": statistics.median(values), "max": values[-1],
            "p05": values[int(0.05 * (len(values) - 1))], "p95": values[int(0.95 * (len(values) - 1))]}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = args.teacher or common.minilm_teacher(Path(tempfile.mkdtemp(prefix="hskstore-dep-")) / "minilm")
    model, identity = load_teacher(teacher)
    tokenizer = load_tokenizer(teacher)
    task = load_task("tweets", limit=args.examples)
    encoded = tokenize(tokenizer, task.split("train"), task.spec, 64)
    compression = Compression(depth=1, length=9, width=0.1, student_layers=3)
    resolved = compression.resolve(identity.num_layers, identity.hidden_size, 64)
    selector = Selector(compression, resolved, tokenizer.sep_token_id, model.bert.encoder.layer, identity.num_heads)
    k, d = resolved.width, resolved.hidden_size
    layer = resolved.teacher_layer_ids[0]
    per_vector, cls_counts, dropout_change, fill = [], [], [], {"att-nosep": [0, 0], "left": [0, 0], "all": [0, 0]}
    n = len(encoded["lengths"])
    for start in range(0, n - args.batch_size + 1, args.batch_size):
        rows = slice(start, start + args.batch_size)
        width = int(encoded["lengths"][rows].max())
        batch = {name: torch.from_numpy(encoded[name][rows, :width]).long()
                 for name in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            model.eval()
            out, selection = selector.run(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            positions = selection.positions[:, 0]                                   # (B, n)
            vectors = gather_tokens(out.hidden_states[layer], positions)            # (B, n, d)
            filled = positions >= 0
            # Released: one threshold per batch, the (k x vectors)-th largest |h| over all kept vectors.
            magnitudes = vectors[filled].abs()                                      # (V, d)
            threshold = magnitudes.flatten().kthvalue(magnitudes.numel() - k * len(magnitudes) + 1).values
            counts = (magnitudes >= threshold).sum(-1)
            per_vector += counts.tolist()
            is_cls = (positions == 0)[filled]
            cls_counts += counts[is_cls].tolist()
            # Fillers: slots beyond the eligible tokens (att-nosep, left) or beyond the real tokens (full).
            ids, mask = batch["input_ids"], batch["attention_mask"]
            for strategy, slots in (("att-nosep", 9), ("left", 9), ("all", 64)):
                ranked = rank_tokens(torch.rand(ids.shape), eligible_tokens(ids, mask, tokenizer.sep_token_id,
                                                                            strategy), slots, strategy)
                fill[strategy][0] += int((ranked < 0).sum())
                fill[strategy][1] += ranked.numel()
            # Teacher dropout on (released loop) vs off (hskstore): the stored layer at the chosen tokens.
            model.train()
            noisy = gather_tokens(model(**batch, output_hidden_states=True).hidden_states[layer], positions)
            model.eval()
            diff = (noisy - vectors)[filled].norm(dim=-1) / vectors[filled].norm(dim=-1)
            dropout_change += diff.tolist()
    rounding = {str(dim): {f"{w:g}": {"int": int(w * dim), "round": max(1, round(w * dim))} for w in WIDTHS}
                for dim in (384, 768)}
    differing = {dim: [w for w, v in table.items() if v["int"] != v["round"]] for dim, table in rounding.items()}
    bernoulli = {str(dim): {"k": round(0.1 * dim), "std": (dim * 0.1 * 0.9) ** 0.5} for dim in (384, 768)}
    generator = torch.Generator().manual_seed(0)
    for dim in (384, 768):
        draws = (torch.rand(2000, dim, generator=generator) < 0.1).sum(-1).float()
        bernoulli[str(dim)]["p05_p95"] = [float(draws.quantile(0.05)), float(draws.quantile(0.95))]
        bernoulli[str(dim)]["min_max"] = [float(draws.min()), float(draws.max())]
    result = {
        "teacher": args.teacher or "packaged MiniLM-L6, seeded head", "examples": n, "batch_size": args.batch_size,
        "k": k, "d": d, "teacher_layer": layer,
        "batch_threshold_kept_per_vector": quantiles(per_vector),
        "batch_threshold_kept_per_cls_vector": quantiles(cls_counts) if cls_counts else None,
        "k_int_vs_round": rounding, "widths_where_int_differs": differing,
        "rand_bernoulli_count": bernoulli,
        "filler_slot_share": {s: a / b for s, (a, b) in fill.items()},
        "teacher_dropout_relative_change": quantiles(dropout_change),
    }
    q = result["batch_threshold_kept_per_vector"]
    c = result["batch_threshold_kept_per_cls_vector"]
    print(f"per-batch threshold keeps {q['min']}..{q['max']} (median {q['median']}) of k={k} per vector; "
          f"[CLS] vectors keep median {c['median'] if c else '-'} (min {c['min'] if c else '-'}, max {c['max'] if c else '-'})")
    print(f"int(w*d) != round(w*d) for w in {differing['384']} at d=384 and {differing['768']} at d=768")
    for dim, b in bernoulli.items():
        print(f"Bernoulli(0.1) mask at d={dim}: k={b['k']}, count std {b['std']:.1f}, 5-95% {b['p05_p95']}, "
              f"min-max {b['min_max']} of 2000 draws")
    print("filler slots (released code distils them; hskstore leaves them empty): "
          + ", ".join(f"{s} {100 * v:.1f}%" for s, v in result["filler_slot_share"].items()))
    t = result["teacher_dropout_relative_change"]
    print(f"teacher in train mode moves the stored vectors by a median {100 * t['median']:.1f}% "
          f"(5-95%: {100 * t['p05']:.1f}-{100 * t['p95']:.1f}%) of their norm")
    print(f"saved {common.save('departures', result)}")


if __name__ == "__main__":
    main()
