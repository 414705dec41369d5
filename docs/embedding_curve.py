"""STS-B zero-shot (kdjax/embedding_probe.py) along one KD run: the teacher, the teacher-cut start, every kept
checkpoint and the export, so one sees how much of the teacher's sentence embedding distillation keeps, and when.

    python docs/embedding_curve.py WORKDIR ARCH GLUE_DIR [--max-seq-len 128]

WORKDIR is a kdjax workdir whose kd stage distilled ARCH (W/kd/ARCH/checkpoints/<step>/, kd.keep_checkpoints says
how many are kept); GLUE_DIR holds STS-B/dev.tsv. Prints one JSON line per point. No fine-tuning, no seed: two runs
print the same numbers. Used for docs/results.md, "What the >= 3x students' STS-B depends on".
"""

from __future__ import annotations

import argparse
import json
import os

import orbax.checkpoint as ocp

from kdjax import glue_data
from kdjax.checkpoint import saved_steps
from kdjax.embedding_probe import zero_shot_sts
from kdjax.spec import parse_arch_id
from kdjax.student_init import from_teacher
from kdjax.teacher import load_teacher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir")
    ap.add_argument("arch")
    ap.add_argument("glue_dir")
    ap.add_argument("--max-seq-len", type=int, default=128)
    args = ap.parse_args()
    with open(os.path.join(args.workdir, "config.json")) as f:
        teacher = load_teacher(json.load(f)["teacher"]["name"])
    dev = glue_data.load_task("stsb", args.glue_dir).dev["dev"]
    tok, n = teacher.tokenizer, args.max_seq_len

    def show(point: str, spec, params) -> None:
        print(
            json.dumps({"point": point, "arch": spec.arch_id, **zero_shot_sts(spec, params, tok, dev, n)}), flush=True
        )

    show("teacher", teacher.spec, teacher.params)
    spec = parse_arch_id(args.arch, teacher.spec)
    show("step 0 (teacher-cut)", spec, from_teacher(teacher.params, teacher.spec, spec))
    kd_dir = os.path.join(args.workdir, "kd", args.arch)
    for step in saved_steps(os.path.join(kd_dir, "checkpoints")):
        state = ocp.StandardCheckpointer().restore(os.path.join(kd_dir, "checkpoints", str(step), "state"))
        show(f"step {step}", spec, state["params"]["student"])
    if os.path.isfile(os.path.join(kd_dir, "hf", "config.json")):
        export = load_teacher(os.path.join(kd_dir, "hf"))
        show("export", export.spec, export.params)


if __name__ == "__main__":
    main()
