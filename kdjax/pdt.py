"""Post-distillation training (PDT): continue KD of each search winner from where its mini-KD left off.

The nas stage saves every mini-KD candidate's student AND projection next to its export
(`nas/candidates/<arch>/minikd.npz`); `kd.pdt_steps > 0` makes the kd stage continue each top-k winner from exactly
those weights for `kd.pdt_steps` steps on the full corpus, into `kd/<arch>-pdt/` (checkpoints, metrics, result.json,
hf; resumable like kd). Restarting the projection instead would scramble what the student learned against the old
one (the projection-collapse finding of docs/results.md), so both are continued.
"""

from __future__ import annotations

import logging
import os
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np
from flax import traverse_util

from kdjax.context import RunContext
from kdjax.errors import KdjaxError
from kdjax.workdir import read_json

if TYPE_CHECKING:
    from kdjax.kd_stage import KdInputs

log = logging.getLogger(__name__)

STATE_FILE = "minikd.npz"
_SEP = "."


def save_minikd_state(path: str, params: dict) -> str:
    """Write {'student': ..., 'projection': ...} as one flat .npz, atomically (tmp + rename)."""
    flat = traverse_util.flatten_dict({k: params[k] for k in ("student", "projection")}, sep=_SEP)
    tmp = path + ".tmp.npz"  # np.savez appends .npz to names without it
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in flat.items()}
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_minikd_state(path: str) -> dict:
    """The tree written by `save_minikd_state`; a damaged file is one KdjaxError line."""
    try:
        with np.load(path) as z:
            flat = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise KdjaxError(
            f"cannot read the mini-KD state {path}: {e}; re-run the nas stage with --config.force=true"
        ) from e
    tree = traverse_util.unflatten_dict(flat, sep=_SEP)
    if set(tree) != {"student", "projection"}:
        raise KdjaxError(f"{path} holds {sorted(tree)}, not a mini-KD student and projection")
    return tree


def winners(ctx: RunContext) -> list[str]:
    """Arch ids of nas/top_k.json, best first (empty when the search has not run)."""
    path = ctx.workdir.path("nas", "top_k.json")
    if not os.path.exists(path):
        return []
    return [e["arch_id"] for e in read_json(path).get("top_k", [])]


def ready_winners(ctx: RunContext) -> list[str]:
    """The winners PDT can continue: those whose mini-KD state the search saved."""
    return [a for a in winners(ctx) if os.path.exists(os.path.join(ctx.workdir.candidate_dir(a), STATE_FILE))]


def run(ctx: RunContext, inp: KdInputs, eta: dict[str, tuple[int, int]] | None = None) -> list[dict]:
    """PDT of every top-k winner for kd.pdt_steps steps (nothing when 0) with the kd stage's inputs `inp`; returns
    the result summaries. `eta` places each winner's folder in the kd stage's ETA (kdjax.kd_stage.eta_positions)."""
    from kdjax.kd_stage import distill_arch, record_latency

    steps = inp.kd.pdt_steps
    if steps <= 0:
        return []
    arch_ids = winners(ctx)
    if not arch_ids:
        print("kd: kd.pdt_steps > 0 but nas/top_k.json has no winners (run the nas stage); no PDT")
        return []
    out = []
    for arch_id in arch_ids:
        state_path = os.path.join(ctx.workdir.candidate_dir(arch_id), STATE_FILE)
        if not os.path.exists(state_path):
            print(f"kd: PDT skips {arch_id}: no {STATE_FILE} (searched by an older kdjax; re-run nas with force)")
            continue
        spec = ctx.student_spec(arch_id)
        state = load_minikd_state(state_path)
        print(f"kd: PDT of {arch_id} from its mini-KD student and projection, {steps} steps")
        if ctx.settings.force:  # a forced kd stage re-runs PDT from scratch too (see kd_stage.run)
            ctx.workdir.set_aside("kd", ctx.workdir.pdt_dir(arch_id))
        summary = distill_arch(
            inp,
            spec,
            out_dir=ctx.workdir.pdt_dir(arch_id),
            steps=steps,
            student_params=state["student"],
            projection_params=state["projection"],
            desc="pdt",
            extra={"pdt_from": state_path},
            eta=(eta or {}).get(ctx.workdir.pdt_dir(arch_id)),
        )
        record_latency(ctx, spec, ctx.workdir.pdt_dir(arch_id))
        print(f"kd: PDT {arch_id} final loss {summary['final_loss']:.4f}")
        out.append(summary)
    return out
