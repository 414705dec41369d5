"""Does a teacher-initialised student distill better than a random one? Same data, steps and seed; prints JSON.

python bench/init_comparison.py --corpus ../shared/data/corpus/nltk_brown.txt.gz --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import ml_collections

from kdjax.config import _minilm_dir
from kdjax.data.batches import Batches, MaskingSpec
from kdjax.data.corpus import packed_corpus
from kdjax.losses import LossConfig
from kdjax.spec import parse_arch_id
from kdjax.student_init import from_teacher
from kdjax.teacher import load_teacher
from kdjax.train import OptimConfig, distill


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--teacher", default=_minilm_dir())
    p.add_argument("--corpus", default="synthetic")
    p.add_argument("--students", default="3L-384H-12A-1536F-gelu,4L-256H-8A-1024F-gelu")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-rows", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-lines", type=int, default=20000)
    args = p.parse_args()

    teacher = load_teacher(args.teacher)
    data = ml_collections.ConfigDict(
        dict(corpus=args.corpus, text_column="text", max_seq_len=128, max_lines=args.max_lines, synthetic_lines=2000)
    )
    rows = packed_corpus(data, teacher.tokenizer, "/tmp/kdjax-bench-cache")
    masking = MaskingSpec.from_tokenizer(teacher.tokenizer)
    opt = OptimConfig(learning_rate=args.lr, total_steps=args.steps, warmup_steps=args.steps // 10)
    out = {"teacher": teacher.source, "corpus": args.corpus, "steps": args.steps, "batch_rows": args.batch_rows}
    out["rows"] = len(rows)
    for arch in args.students.split(","):
        spec = parse_arch_id(arch, teacher.spec)
        res = {}
        for init in ("random", "teacher"):
            params = from_teacher(teacher.params, teacher.spec, spec) if init == "teacher" else None
            t0 = time.process_time()
            r = distill(
                teacher_spec=teacher.spec,
                teacher_params=teacher.params,
                student=spec,
                batches=Batches(rows, args.batch_rows, masking, seed=0),
                loss_cfg=LossConfig(),
                opt=opt,
                num_steps=args.steps,
                seed=0,
                student_params=params,
                progress=False,
                log_every=10,
            )
            res[init] = {
                "epoch_losses": r.epoch_losses,
                "final_loss": r.final_loss,
                "cpu_s": time.process_time() - t0,
            }
        out[spec.arch_id] = res
        print(json.dumps({spec.arch_id: res}), flush=True)
    out["devices"] = str(jax.devices())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
