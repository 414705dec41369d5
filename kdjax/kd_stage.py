"""The `kd` stage: full distillation of the chosen student, with checkpoints, metrics and an HF export; then PDT of
the search winners when kd.pdt_steps > 0 (kdjax/pdt.py); then every other model glue.models names that must be
distilled first (random baselines, hand-picked arch ids: kdjax.glue_models.kd_targets), so the glue stage only
scores. Each model it makes is timed once, beside its result.json (`record_latency`, kdjax.model_latency)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from kdjax import model_latency, pdt, plan
from kdjax.checkpoint import Checkpointer, saved_steps
from kdjax.collapse import CollapseGuard, CollapseHook
from kdjax.config.settings import KdSettings
from kdjax.context import RunContext
from kdjax.data.batches import Batches
from kdjax.export import export_hf
from kdjax.glue_models import chosen_arch, chosen_spec, kd_targets
from kdjax.hooks import LogMetrics, SaveCheckpoints
from kdjax.interrupts import Interrupted
from kdjax.losses import LossConfig
from kdjax.optim import OptimConfig
from kdjax.spec import ArchSpec
from kdjax.student_init import initial_params, initial_projection
from kdjax.teacher import Teacher
from kdjax.train import DistillSettings, Student, distill
from kdjax.workdir import read_json, write_json
from kdjax.writer import MetricWriter

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class KdInputs:
    """What every full-KD run of a stage shares: the teacher, the corpus batches, the KD settings, the run's seed,
    compute dtype and mesh, and the corpus sequence length (recorded in the export)."""

    teacher: Teacher
    batches: Batches
    kd: KdSettings
    seed: int
    dtype: Any
    mesh: Mesh
    seq_len: int


def kd_inputs(ctx: RunContext) -> KdInputs:
    """The KD inputs of this run (packs the corpus on first use)."""
    s = ctx.settings
    batches = Batches(ctx.rows, ctx.global_batch, ctx.masking, s.seed)
    return KdInputs(ctx.teacher, batches, s.kd, s.seed, ctx.dtype, ctx.mesh, s.data.max_seq_len)


_digests: dict[int, str] = {}


def _digest(tree) -> str:
    """A fingerprint of a pytree of arrays: paths, shapes, dtypes and the first 4096 values of each leaf."""
    key = id(tree)
    if key not in _digests:
        h = hashlib.blake2b(digest_size=8)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            arr = np.asarray(jax.device_get(leaf))
            h.update(f"{jax.tree_util.keystr(path)}:{arr.shape}:{arr.dtype}".encode())
            h.update(np.ascontiguousarray(arr.reshape(-1)[:4096]).tobytes())
        _digests[key] = h.hexdigest()
    return _digests[key]


def _rows_digest(rows: np.ndarray) -> str:
    key = id(rows)
    if key not in _digests:
        _digests[key] = hashlib.blake2b(np.ascontiguousarray(rows).tobytes(), digest_size=8).hexdigest()
    return _digests[key]


def _loss_settings(loss: LossConfig) -> dict:
    return {f"kd.loss.{k}": v for k, v in dataclasses.asdict(loss).items()}


# What a KD checkpoint whose settings.json lacks a key was made with: fields added later (kd.loss.sentence_weight,
# kd.dropout_rate) are missing from older records, which were made as before the field existed (weight 0, no dropout).
KD_SETTINGS_DEFAULTS = {**_loss_settings(LossConfig()), "kd.dropout_rate": 0.0}


def kd_settings(inp: KdInputs, spec: ArchSpec, opt: OptimConfig, given_init: bool) -> dict:
    """What a KD checkpoint depends on, under the names a user changes it by: a resume with other values is refused
    (a key an older record lacks compares with `KD_SETTINGS_DEFAULTS`)."""
    return {
        "arch": spec.arch_id,
        "teacher (architecture:weights)": f"{inp.teacher.spec.arch_id}:{_digest(inp.teacher.params)}",
        "kd.init": "weights passed in" if given_init else inp.kd.init,
        "total steps (kd.num_train_steps, or kd.num_epochs x steps per epoch)": opt.total_steps,
        "kd.learning_rate": opt.learning_rate,
        "warmup steps (kd.warmup_fraction x total steps)": opt.warmup_steps,
        "kd.schedule": opt.schedule,
        "kd.weight_decay": opt.weight_decay,
        "kd.grad_clip_norm": opt.grad_clip_norm,
        "kd.dropout_rate": inp.kd.dropout_rate,
        **_loss_settings(inp.kd.loss),
        "global batch (kd.per_device_batch_size x devices)": inp.batches.global_batch,
        "data.mlm_probability": inp.batches.masking.probability,
        "corpus (data.*; fingerprint of the packed rows)": _rows_digest(inp.batches.rows),
        "seed": inp.seed,
    }


def distill_arch(
    inp: KdInputs,
    spec: ArchSpec,
    *,
    out_dir: str,
    steps: int | None = None,
    student_params=None,
    projection_params=None,
    desc="kd",
    extra: dict | None = None,
    eta: tuple[int, int] | None = None,
):
    """Distill `spec` into `out_dir` (checkpoints/, metrics.jsonl, tb/, hf/, result.json); resumes if interrupted.

    Starts from `student_params` / `projection_params` when given (PDT), else from `kd.init`; `extra` is added to
    result.json; `eta` = (steps of the stage before this run, steps of the whole stage) reports progress to the plan.
    A resume must find checkpoints made with the same settings (`kd_settings`); otherwise it stops with one line.
    """
    kd, teacher = inp.kd, inp.teacher
    given_init = student_params is not None
    if student_params is None:
        student_params = initial_params(kd.init, teacher.params, teacher.spec, spec)
    if projection_params is None:
        projection_params = initial_projection(kd.init, teacher.params, teacher.spec, spec)
    steps = steps or kd.num_steps(inp.batches.steps_per_epoch)
    opt = kd.optim(steps)
    every = kd.checkpoint_every_steps
    ckpt = Checkpointer(
        os.path.join(out_dir, "checkpoints"),
        keep=kd.keep_checkpoints,
        interval_steps=every,
        final_step=steps,
        settings=kd_settings(inp, spec, opt, given_init),
        defaults=KD_SETTINGS_DEFAULTS,
    )
    writer = MetricWriter(out_dir)
    hooks = [LogMetrics(writer), SaveCheckpoints(ckpt, every=every)]
    if kd.guard.mode != "off":  # after SaveCheckpoints: a collapsed student's checkpoint is kept
        hooks.append(CollapseHook(CollapseGuard(kd.guard, teacher, spec, out_dir, f"{desc} {spec.arch_id}"), every))
    if eta is not None:
        hooks.append(plan.EtaHook("kd", *eta))
    try:
        result = distill(
            teacher,
            Student(spec, student_params, projection_params),
            inp.batches,
            DistillSettings(
                loss=kd.loss,
                opt=opt,
                num_steps=steps,
                seed=inp.seed,
                dtype=inp.dtype,
                mesh=inp.mesh,
                dropout_rate=kd.dropout_rate,
            ),
            hooks=hooks,
            report_every=kd.log_every_steps,
            desc=f"{desc} {spec.arch_id}",
        )
    except KeyboardInterrupt:
        ckpt.close()  # a save still being written lands first, so the message names the step a resume starts at
        raise Interrupted(f"{desc} {spec.arch_id}", step=ckpt.reached, checkpoint=ckpt.latest_step()) from None
    finally:
        writer.close()
        ckpt.close()
    info = {
        "teacher": teacher.source,
        "kd_steps": steps,
        "global_batch": inp.batches.global_batch,
        "seq_len": inp.seq_len,
        "final_kd_loss": round(result.final_loss, 6),
    }
    export_hf(
        os.path.join(out_dir, "hf"),
        spec,
        result.params["student"],
        teacher.hf_config,
        teacher.tokenizer,
        teacher_source=teacher.source,
        info=info,
    )
    timing = {
        "wall_s": result.wall_s,
        "compile_s": result.compile_s,
        "corpus_tokens": result.tokens,
        "corpus_tokens_per_s": result.tokens_per_s if result.tokens else None,
    }
    result_path = os.path.join(out_dir, "result.json")
    if result.resumed_from == steps and os.path.exists(result_path):
        # Nothing was trained (the final checkpoint was already there): keep the timing of the run that trained it.
        try:
            old = read_json(result_path)
            timing = {k: old.get(k, v) for k, v in timing.items()}
        except ValueError:
            pass
    summary = {
        "arch_id": spec.arch_id,
        "spec": spec.to_dict(),
        "params": spec.num_params,
        "steps": steps,
        "final_loss": result.final_loss,
        "epoch_losses": result.epoch_losses,
        **timing,
        "resumed_from": result.resumed_from,
        **(extra or {}),
    }
    write_json(result_path, summary)
    if not math.isfinite(result.final_loss):
        log.warning("%s finished with a non-finite loss", spec.arch_id)
    return summary


def record_latency(ctx: RunContext, spec: ArchSpec, out_dir: str) -> None:
    """Time a model the stage made, once (kept when recorded under this protocol on this machine); under PyTorch
    beside the teacher's folder, so its speed-up is a paired timing."""
    model_latency.record(
        os.path.join(out_dir, "latency.json"),
        spec,
        ctx.settings.nas.latency,
        os.path.join(out_dir, "hf"),
        teacher_dir=ctx.teacher.folder,
    )


def finished(out_dir: str) -> bool:
    """Whether a distillation into `out_dir` ran to its end (result.json is written after the export)."""
    return os.path.isfile(os.path.join(out_dir, "result.json")) and os.path.isfile(
        os.path.join(out_dir, "hf", "config.json")
    )


def pending(ctx: RunContext) -> list[str]:
    """Models of glue.models the kd stage has not distilled yet: a finished kd stage runs again for them."""
    return [r.name for r in kd_targets(ctx) if not r.exported()]


def chosen_pending(ctx: RunContext) -> list[str]:
    """The chosen student when it has no finished distillation: config.kd.arch or the search's best changed since the
    stage finished. A finished kd stage runs again for it (and keeps what it made before)."""
    arch, source = chosen_arch(ctx)
    arch_id = ctx.student_spec(arch).arch_id
    return [] if finished(ctx.workdir.kd_dir(arch_id)) else [f"kd-{arch_id} from {source}"]


def _kept(ctx: RunContext, out_dir: str) -> bool:
    """A stage that finished before and runs again only for models glue.models added since (pipeline: `pending`)
    keeps what it made: no finished distillation is resumed or repeated (nor, after a kept full KD, its PDT)."""
    return ctx.workdir.is_done("kd") and not ctx.settings.force and finished(out_dir)


@dataclasses.dataclass(frozen=True)
class Distillation:
    """One distillation of the kd stage, and how far an earlier run of the stage took it."""

    kind: str  # 'kd' (the chosen student), 'pdt' (a search winner) or 'target' (a model glue.models names)
    spec: ArchSpec
    out_dir: str
    steps: int
    done: int  # steps this run will not train: all when kept or finished, a checkpoint's when interrupted


def distillations(ctx: RunContext, steps: int) -> list[Distillation]:
    """What the stage trains, in its order, with `steps` steps of full KD: the chosen student, PDT of each search
    winner it can continue (kdjax.pdt.ready_winners), then the models glue.models names (`kd_targets`). A forced
    stage starts every one again; otherwise what is kept or `finished` is done, and an interrupted one resumes from
    its latest checkpoint (kdjax.plan counts the rest, and the stage's ETA too)."""
    s = ctx.settings
    spec = chosen_spec(ctx)
    main = ctx.workdir.kd_dir(spec.arch_id)
    kept = _kept(ctx, main)

    def piece(kind: str, spec: ArchSpec, out_dir: str, steps: int, skipped: bool) -> Distillation:
        if s.force:
            done = 0
        elif skipped or finished(out_dir):
            done = steps
        else:
            done = min(steps, max(saved_steps(os.path.join(out_dir, "checkpoints")), default=0))
        return Distillation(kind, spec, out_dir, steps, done)

    out = [piece("kd", spec, main, steps, kept)]
    if s.kd.pdt_steps > 0:
        for arch_id in pdt.ready_winners(ctx):
            out.append(piece("pdt", ctx.student_spec(arch_id), ctx.workdir.pdt_dir(arch_id), s.kd.pdt_steps, kept))
    for ref in kd_targets(ctx):
        folder = ctx.workdir.model_dir(ref.kind, ref.arch_id, ref.name)
        assert ref.arch_id is not None and folder is not None
        if folder != main:  # the chosen student named again: distilled once
            out.append(piece("target", ctx.student_spec(ref.arch_id), folder, steps, _kept(ctx, folder)))
    return out


def eta_positions(work: list[Distillation]) -> dict[str, tuple[int, int]]:
    """out_dir -> (steps before it, steps of the stage) for `distill_arch`'s `eta`, counted in what was left when this
    run started (what the plan counts): a distillation resumed at step k reports step k as 0 steps into this run."""
    total = sum(d.steps - d.done for d in work)
    positions, before = {}, 0
    for d in work:
        positions[d.out_dir] = (before - d.done, total)
        before += d.steps - d.done
    return positions


def _distil_targets(ctx: RunContext, inp: KdInputs, skip: set[str], eta: dict[str, tuple[int, int]]) -> list[str]:
    """Distil the random baselines and arch ids of glue.models (not `skip`, the folders already made)."""
    done = []
    for ref in kd_targets(ctx):
        out = ctx.workdir.model_dir(ref.kind, ref.arch_id, ref.name)
        assert ref.arch_id is not None and out is not None
        if out in skip:
            continue
        if ctx.settings.force:
            ctx.workdir.set_aside("kd", out)
        elif _kept(ctx, out):
            continue
        print(f"kd: distilling {ref.name} for glue.models with the kd.* budget into {out}")
        spec = ctx.student_spec(ref.arch_id)
        summary = distill_arch(inp, spec, out_dir=out, desc=ref.name, eta=eta.get(out))
        record_latency(ctx, spec, out)
        print(f"kd: {ref.name} final loss {summary['final_loss']:.4f}")
        done.append(ref.name)
    return done


def run(ctx: RunContext) -> dict:
    again = ctx.workdir.is_done("kd") and not ctx.settings.force
    arch_id, origin = chosen_arch(ctx)
    spec = ctx.student_spec(arch_id)
    out = ctx.workdir.kd_dir(spec.arch_id)
    inp = kd_inputs(ctx)
    steps = inp.kd.num_steps(inp.batches.steps_per_epoch)
    eta = eta_positions(distillations(ctx, steps))
    pdt_done: list[dict] = []
    if not _kept(ctx, out):
        log.info("kd: distilling %s (%s, %.1fM params)", arch_id, origin, spec.num_params / 1e6)
        if ctx.settings.force:
            # A forced re-run trains from scratch; the earlier outputs stay in W/.previous/kd until it finishes.
            ctx.workdir.set_aside("kd", out)
        os.makedirs(out, exist_ok=True)
        summary = distill_arch(inp, spec, out_dir=out, steps=steps, eta=eta[out])
        record_latency(ctx, spec, out)
        print(f"kd: {spec.arch_id} final loss {summary['final_loss']:.4f}, export in {os.path.join(out, 'hf')}")
        pdt_done = pdt.run(ctx, inp, eta)
    targets = _distil_targets(ctx, inp, {out, *(ctx.workdir.pdt_dir(s["arch_id"]) for s in pdt_done)}, eta)
    if again:  # the marker keeps what the first run recorded
        info = ctx.workdir.stage_info("kd")
        return {**info, "glue_models": [*info.get("glue_models", []), *targets]}
    return {"arch_id": spec.arch_id, "origin": origin, "pdt": [s["arch_id"] for s in pdt_done], "glue_models": targets}
