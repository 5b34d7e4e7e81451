"""torchrun entry point for the 2-process tests: the real `hskstore` CLI, with a recorder and a crash patched in.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/_torchrun_probe.py \
        PROBE_DIR CRASH_AT hskstore-args...

Every rank appends the rows of each training batch it stages to PROBE_DIR/rows-rank{R}.jsonl; rank 0
writes the training history with its per-step losses to PROBE_DIR/history.json at every checkpoint.
With CRASH_AT > 0, rank 1 dies (os._exit, like a killed process: no cleanup) after its CRASH_AT-th
written chunk (extract) or training step (train).
"""

import json
import os
import sys
import threading
from pathlib import Path


def main():
    probe, crash_at, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    rank = int(os.environ.get("RANK", 0))
    probe.mkdir(parents=True, exist_ok=True)
    counts = {"chunks": 0, "steps": 0}

    from hskstore.store.base import StoreWriter
    from hskstore.stages.train import Trainer

    def die_at(kind):
        counts[kind] += 1
        if crash_at and rank == 1 and counts[kind] >= crash_at:
            os._exit(17)

    write_chunk = StoreWriter.write_chunk
    one_at_a_time = threading.Lock()   # extract writes chunks from several threads: die after exactly CRASH_AT

    def crashing_write_chunk(self, *a, **k):
        with one_at_a_time:
            write_chunk(self, *a, **k)
            die_at("chunks")

    stage_batch, train_step, save_checkpoint = Trainer._stage_batch, Trainer._train_step, Trainer._save_checkpoint

    def recording_stage_batch(self, batch):
        with open(probe / f"rows-rank{rank}.jsonl", "a") as handle:
            handle.write(json.dumps(batch["input_ids"].tolist()) + "\n")
        return stage_batch(self, batch)

    def crashing_train_step(self, *a, **k):
        loss = train_step(self, *a, **k)
        die_at("steps")
        return loss

    def recording_save_checkpoint(self, *a, **k):
        save_checkpoint(self, *a, **k)
        (probe / "history.json").write_text(json.dumps(self.history))

    StoreWriter.write_chunk = crashing_write_chunk
    Trainer._stage_batch = recording_stage_batch
    Trainer._train_step = crashing_train_step
    Trainer._save_checkpoint = recording_save_checkpoint

    from hskstore.cli import cli

    cli(args=args, prog_name="hskstore")


if __name__ == "__main__":
    main()
