"""Does a teacher-initialised student distill better than a random one? Same data, steps and seed; prints JSON.

Three inits per student: `random` (student and projection random, as the original pipeline), `teacher-randproj` (student
cut from the teacher, projection random: kdjax before the fix) and `teacher` (cut student, projection mapping each
kept dimension back onto its teacher dimension: `kdjax.student_init.initial_projection`). Besides the KD losses it
reports collapse: `token_std` is the student's last hidden state's std across tokens (mean over dimensions) on 8
held-out rows, next to the teacher's (`teacher_token_std`); a collapsed student maps every token to one vector.

python bench/init_comparison.py --corpus $KDJAX_DATA/corpus/nltk_brown.txt.gz --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.config import _minilm_dir
from kdjax.config.settings import DataSettings
from kdjax.data.batches import Batches, MaskingSpec
from kdjax.data.corpus import packed_corpus
from kdjax.losses import LossConfig
from kdjax.models import Encoder
from kdjax.optim import OptimConfig
from kdjax.spec import parse_arch_id
from kdjax.student_init import from_teacher, initial_projection
from kdjax.teacher import load_teacher
from kdjax.train import DistillSettings, Student, distill


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
    data = DataSettings(
        corpus=args.corpus,
        text_column="text",
        max_seq_len=128,
        mlm_probability=0.15,
        max_lines=args.max_lines,
        synthetic_lines=2000,
        glue_dir="",
    )
    rows = packed_corpus(data, teacher.tokenizer, "/tmp/kdjax-bench-cache")
    masking = MaskingSpec.from_tokenizer(teacher.tokenizer)
    opt = OptimConfig(learning_rate=args.lr, total_steps=args.steps, warmup_steps=args.steps // 10)
    out = {"teacher": teacher.source, "corpus": args.corpus, "steps": args.steps, "batch_rows": args.batch_rows}
    out["rows"] = len(rows)
    held_out = np.asarray(rows[-8:])

    def token_std(spec, params) -> float:
        mask = (held_out != teacher.tokenizer.pad_token_id).astype(np.int32)
        hidden = Encoder(spec).apply({"params": params}, jnp.asarray(held_out), jnp.asarray(mask))["hidden_states"]
        last = np.asarray(hidden[-1])[mask.astype(bool)]
        return float(last.std(axis=0).mean())

    out["teacher_token_std"] = token_std(teacher.spec, teacher.params["encoder"])
    for arch in args.students.split(","):
        spec = parse_arch_id(arch, teacher.spec)
        res = {}
        for init in ("random", "teacher-randproj", "teacher"):
            params = from_teacher(teacher.params, teacher.spec, spec) if init != "random" else None
            proj = initial_projection("teacher", teacher.params, teacher.spec, spec) if init == "teacher" else None
            t0 = time.process_time()
            r = distill(
                teacher,
                Student(spec, params, proj),
                Batches(rows, args.batch_rows, masking, seed=0),
                DistillSettings(loss=LossConfig(), opt=opt, num_steps=args.steps, seed=0),
                report_every=10,
                progress=False,
            )
            res[init] = {
                "epoch_losses": r.epoch_losses,
                "final_loss": r.final_loss,
                "token_std": token_std(spec, r.params["student"]),
                "cpu_s": time.process_time() - t0,
            }
        out[spec.arch_id] = res
        print(json.dumps({spec.arch_id: res}), flush=True)
    out["devices"] = str(jax.devices())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
