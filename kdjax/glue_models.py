"""What `glue.models` names: the rows of the GLUE tables, and which of them the kd stage must distil first.

`glue.models` is a comma list of:
  teacher                      the run's teacher;
  best                         the search's best architecture: `nas-<arch>` (mini-KD winner, W/nas/candidates/<arch>/hf,
                               "without PDT"), `kd-<arch>` (full KD, W/kd/<arch>/hf) and `pdt-<arch>`
                               (W/kd/<arch>-pdt/hf), whichever exist;
  top_k                        the same for every architecture in W/nas/top_k.json;
  nas-<arch>, kd-<arch>, pdt-<arch>  one of those exports by its row name (an error when it does not exist);
  random                       glue.num_random_baselines random architectures of the search space, distilled by the
                               kd stage with the kd.* budget into W/kd/random-<i>-<arch>/;
  <arch id>                    e.g. 6L-768H-12A-3072F-gelu (DistilBERT shape): its full-KD export W/kd/<arch>/hf,
                               distilled by the kd stage with the kd.* budget (also when the search exported a mini-KD
                               version of it: name `best`/`top_k` for those);
  <folder> or <hub id>         any BERT/RoBERTa/ALBERT checkpoint.
The kd stage distils every `random` and arch-id row (`kd_targets`); the glue stage only scores what it finds. Folders
come from kdjax.workdir.Workdir's layout methods.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Callable

import numpy as np

from kdjax.context import RunContext
from kdjax.errors import KdjaxError
from kdjax.nas.topk import read_top_k
from kdjax.search_space import SearchSpace
from kdjax.spec import ArchSpec, is_arch_id

# Rows that are students of this run's teacher (same tokenizer): task-distilled by default.
STUDENT_KINDS = ("nas", "kd", "pdt", "random")


class GlueStageError(KdjaxError, ValueError):
    """A model named in glue.models cannot be found or loaded."""


@dataclasses.dataclass
class ModelRef:
    """One row of the GLUE tables."""

    name: str  # folder under W/glue
    kind: str  # teacher | nas | kd | pdt | random | folder | hub
    source: str  # checkpoint folder or hub id ('teacher' for the run's teacher)
    arch_id: str | None = None
    # Distilled by the kd stage because glue.models names it (random baselines, hand-picked arch ids).
    by_kd: bool = False

    def to_dict(self) -> dict:
        return {"model": self.name, "kind": self.kind, "source": self.source, "arch_id": self.arch_id}

    def same_source(self, old: dict) -> bool:
        """Whether a record written with `to_dict` (`old`) names this model: the same source, or for a model this
        run's stages made (W/<kind>/<arch>) the same kind and architecture, so a workdir copied or moved keeps its
        scores (the weights fingerprint beside it says whether the weights are the same)."""
        if old.get("source") == self.source:
            return True
        return self.kind in STUDENT_KINDS and old.get("kind") == self.kind and old.get("arch_id") == self.arch_id

    def exported(self) -> bool:
        return os.path.isfile(os.path.join(self.source, "config.json"))

    def weights_file(self) -> str | None:
        """The weights file a score of this row is made from: a folder's (a kdjax export's model.safetensors); None
        for the teacher (identified by its source) and hub ids."""
        if self.kind == "teacher" or not os.path.isdir(self.source):
            return None
        return weights_file(self.source)

    def weights(self) -> str | None:
        """A fingerprint of `weights_file()` (None without one): what a GLUE score records, so a model re-made at the
        same folder (e.g. re-distilled with --config.force=true) is scored again and an unchanged one is not."""
        path = self.weights_file()
        return fingerprint(path) if path else None


def distils(ctx: RunContext, kind: str) -> bool:
    """Rows of `kind` are task-distilled: students of this run, with glue.distill.enabled."""
    return kind in STUDENT_KINDS and ctx.settings.glue.distill.enabled


def row_names(ctx: RunContext, ref: ModelRef) -> list[str]:
    """The rows `ref` makes: itself, and for a distilled student its fine-tune-only twin (glue.distill.baseline)."""
    twin = distils(ctx, ref.kind) and ctx.settings.glue.distill.baseline
    return [ref.name] + ([f"{ref.name}-ft"] if twin else [])


def weights_file(folder: str) -> str | None:
    """The weights kdjax loads from `folder` (kdjax.hub.WEIGHT_FILES, in its order of preference), if any."""
    from kdjax.hub import WEIGHT_FILES

    paths = (os.path.join(folder, name) for _, name in WEIGHT_FILES)
    return next((p for p in paths if os.path.isfile(p)), None)


def fingerprint(path: str) -> str:
    """'sha256:<hex>' of a file's bytes, hashed once per version of the file in a process: the cache is keyed by
    path, size, inode and modification and status-change times (the last is set by the kernel on any write, rename or
    `utime`), so a model re-made at the same path, even at the same size and modification time, is hashed again."""
    st = os.stat(path)
    return _sha256(path, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, inode: int, mtime_ns: int, ctime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def variants(ctx: RunContext, arch_id: str) -> list[ModelRef]:
    """The exports of one architecture that exist: mini-KD winner, full KD, and PDT."""
    refs = [_made(ctx, kind, arch_id, f"{kind}-{arch_id}") for kind in ("nas", "kd", "pdt")]
    return [r for r in refs if os.path.isdir(r.source)]


def _made(ctx: RunContext, kind: str, arch_id: str, name: str, by_kd: bool = False) -> ModelRef:
    folder = ctx.workdir.export_dir(kind, arch_id, name)
    assert folder is not None
    return ModelRef(name, kind, folder, arch_id, by_kd)


def random_specs(space: SearchSpace, seed: int, n: int) -> list[ArchSpec]:
    """`n` distinct architectures drawn reproducibly (from `seed`) from the run's search space."""
    pool = space.all_specs()
    pool = sorted(set(pool), key=lambda s: s.arch_id)
    pick = np.random.default_rng([seed, 104729]).permutation(len(pool))[:n]
    return [pool[i] for i in pick]


def chosen_arch(ctx: RunContext) -> tuple[str, str]:
    """(arch id, where it came from) of the kd stage's student: the search's best when nas/top_k.json exists, else
    config.kd.arch."""
    top = read_top_k(ctx.workdir.path("nas"), ctx.settings.nas)
    if top:
        return top[0]["arch_id"], "nas/top_k.json"
    return ctx.settings.kd.arch, "config.kd.arch"


def chosen_spec(ctx: RunContext) -> ArchSpec:
    """The kd stage's student (`chosen_arch`) as a spec of the teacher's family."""
    return ctx.student_spec(chosen_arch(ctx)[0])


def _best(ctx: RunContext) -> list[ModelRef]:
    arch_id = chosen_spec(ctx).arch_id
    refs = variants(ctx, arch_id)
    if not refs:
        print(f"glue: 'best' ({arch_id}) has no export yet (run the nas/kd stages); skipping it")
    return refs


def _top_k(ctx: RunContext) -> list[ModelRef]:
    if not os.path.exists(ctx.workdir.path("nas", "top_k.json")):
        print("glue: 'top_k' needs nas/top_k.json (run the nas stage); skipping it")
        return []
    refs = []
    for entry in read_top_k(ctx.workdir.path("nas"), ctx.settings.nas):
        refs += variants(ctx, entry["arch_id"])
    return refs


def _random(ctx: RunContext) -> list[ModelRef]:
    st = ctx.settings
    specs = random_specs(ctx.search_space(), st.seed, st.glue.num_random_baselines)
    return [_made(ctx, "random", s.arch_id, ctx.workdir.random_name(i, s.arch_id), True) for i, s in enumerate(specs)]


def _teacher(ctx: RunContext) -> list[ModelRef]:
    return [ModelRef("teacher", "teacher", ctx.settings.teacher.name, ctx.teacher.spec.arch_id)]


def teacher_ref(ctx: RunContext) -> ModelRef:
    return _teacher(ctx)[0]


# Explicit registry: keyword of glue.models -> the refs it stands for.
KEYWORDS: dict[str, Callable[[RunContext], list[ModelRef]]] = {
    "teacher": _teacher,
    "best": _best,
    "top_k": _top_k,
    "random": _random,
}


_VARIANT_RE = re.compile(r"^(nas|kd|pdt)-\d+L-\d+H-\d+A-\d+F(-[a-z_]+)?$")


def is_variant_name(item: str) -> bool:
    """Whether `item` names one export of an architecture by its row name (nas-<arch>, kd-<arch>, pdt-<arch>)."""
    return _VARIANT_RE.match(item) is not None


def _named_variant(ctx: RunContext, kind: str, arch_id: str) -> list[ModelRef]:
    found = [r for r in variants(ctx, arch_id) if r.kind == kind]
    if not found:
        made_by = {"nas": "the nas stage", "kd": "the kd stage", "pdt": "the kd stage with kd.pdt_steps > 0"}[kind]
        raise GlueStageError(f"glue.models: {kind}-{arch_id} has no export yet (made by {made_by})")
    return found


def _arch(ctx: RunContext, item: str) -> ModelRef:
    # Its full-KD export, even when the search left a mini-KD one (that is what `best`/`top_k` add).
    arch_id = ctx.student_spec(item).arch_id
    return _made(ctx, "kd", arch_id, f"kd-{arch_id}", True)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text.strip("/")) or "model"


def _unique(refs: list[ModelRef]) -> list[ModelRef]:
    unique: dict[str, ModelRef] = {}
    for r in refs:
        unique.setdefault(r.name, r)
    return list(unique.values())


def resolve_models(ctx: RunContext, models: list[str]) -> list[ModelRef]:
    """Expand glue.models into distinct refs, in order."""
    refs: list[ModelRef] = []
    for item in models:
        if item in KEYWORDS:
            refs += KEYWORDS[item](ctx)
        elif is_variant_name(item):
            # One export of an architecture by its row name: nas-<arch> (mini-KD), kd-<arch>, pdt-<arch> (PDT).
            kind, arch_id = item.split("-", 1)
            refs += _named_variant(ctx, kind, ctx.student_spec(arch_id).arch_id)
        elif is_arch_id(item):
            refs.append(_arch(ctx, item))
        elif os.path.isdir(os.path.expanduser(item)):
            folder = os.path.abspath(os.path.expanduser(item))
            base = os.path.basename(folder)
            if base == "hf":
                base = os.path.basename(os.path.dirname(folder))
            refs.append(ModelRef(safe_name(base), "folder", folder))
        elif item.startswith((".", "/", "~")):
            raise GlueStageError(f"glue.models: folder {item} does not exist")
        else:
            refs.append(ModelRef(safe_name(item), "hub", item))
    return _unique(refs)


def kd_targets(ctx: RunContext) -> list[ModelRef]:
    """The rows of glue.models the kd stage distils (random baselines, hand-picked arch ids), in order."""
    refs: list[ModelRef] = []
    for item in ctx.settings.glue.models:
        if item == "random":
            refs += _random(ctx)
        elif is_arch_id(item) and not is_variant_name(item):
            refs.append(_arch(ctx, item))
    return _unique(refs)


def check_distilled(refs: list[ModelRef]) -> None:
    """One error line naming the rows the kd stage should have distilled and has not (yet)."""
    missing = [r.name for r in refs if r.by_kd and not r.exported()]
    if missing:
        raise GlueStageError(
            f"glue.models: {', '.join(missing)} not distilled yet (the kd stage distils the random baselines and "
            "arch ids glue.models names); run the kd stage first: the same command with --config.stages=kd"
        )


def load_model(ctx: RunContext, ref: ModelRef):
    """(spec, params, tokenizer) of a ref; failures end in one GlueStageError line."""
    if ref.kind == "teacher":
        t = ctx.teacher
        return t.spec, t.params, t.tokenizer
    from kdjax.teacher import load_teacher

    try:
        m = load_teacher(ref.source, allow_pickle=ctx.settings.teacher.allow_pickle)
    except KdjaxError as e:
        raise GlueStageError(f"glue.models: cannot load {ref.name} ({ref.source}): {e}") from e
    return m.spec, m.params, m.tokenizer
