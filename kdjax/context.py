"""Everything a stage needs, built lazily once per run: typed settings, workdir, teacher, packed corpus.

A stage's `run(ctx)` reads the context and hands the pieces further down as explicit arguments (settings sections,
the teacher, batches, optimiser and loss settings, caches): the code that trains, searches and fine-tunes
(`distill_arch`, `CandidateEvaluator`, `finetune`) never sees the context.
"""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from kdjax.config import check_positions
from kdjax.config.settings import Settings
from kdjax.data.batches import MaskingSpec
from kdjax.data.corpus import packed_corpus
from kdjax.sharding import compute_dtype, make_mesh
from kdjax.spec import ArchSpec
from kdjax.teacher import Teacher, load_teacher
from kdjax.workdir import Workdir

log = logging.getLogger(__name__)


class RunContext:
    """The settings `validate` returned and the workdir; the teacher is loaded on first use unless one is given
    (a test reusing a teacher it loaded once)."""

    def __init__(self, settings: Settings, workdir: Workdir, teacher: Teacher | None = None):
        self.settings = settings
        self.workdir = workdir
        self.stages = settings.stages
        if teacher is not None:
            check_positions(settings, teacher.spec)
            self.teacher = teacher

    @functools.cached_property
    def teacher(self) -> Teacher:
        t = self.settings.teacher
        log.info("loading teacher %s", t.name)
        teacher = load_teacher(
            t.name, allow_pickle=t.allow_pickle, random_dir=self.workdir.subdir("teacher"), seed=self.settings.seed
        )
        check_positions(self.settings, teacher.spec)
        return teacher

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """The packed corpus (cached on disk by content fingerprint)."""
        data = self.settings.data
        log.info("preparing corpus %s", data.corpus)
        rows = packed_corpus(data, self.teacher.tokenizer, self.workdir.cache, seed=self.settings.seed)
        pad = self.teacher.tokenizer.pad_token_id
        log.info("corpus: %d rows of %d tokens, %.1f%% non-pad", len(rows), rows.shape[1], 100 * np.mean(rows != pad))
        return rows

    @functools.cached_property
    def masking(self) -> MaskingSpec:
        return MaskingSpec.from_tokenizer(self.teacher.tokenizer, self.settings.data.mlm_probability)

    @functools.cached_property
    def mesh(self):
        return make_mesh()

    @property
    def global_batch(self) -> int:
        """Rows per KD step: `kd.per_device_batch_size` on every device of the mesh."""
        return self.settings.kd.per_device_batch_size * self.mesh.size

    @property
    def dtype(self):
        """The KD compute dtype, `kd.compute_dtype` with 'auto' resolved on this machine's devices."""
        return compute_dtype(self.settings.kd.compute_dtype)

    @functools.cached_property
    def teacher_identity(self) -> str:
        """Source + config hash of the teacher: what its latency (and every cache derived from it) is keyed by."""
        from kdjax.search_latency import teacher_identity

        return teacher_identity(self.teacher.source, self.teacher.hf_config)

    def teacher_latency(self) -> dict:
        """The teacher's measured latency (machine cache), recorded in teacher/latency.json by identity and protocol."""
        from kdjax.search_latency import teacher_latency

        return teacher_latency(
            self.teacher.spec,
            self.teacher_identity,
            self.settings.nas.latency,
            self.workdir.path("teacher", "latency.json"),
        )

    def search_latency(self):
        """The latencies the search reward reads (fitted model or side-by-side timing), pinned in nas/latency.json."""
        from kdjax.search_latency import SearchLatency

        return SearchLatency(
            self.settings.nas.latency,
            self.teacher.spec,
            self.teacher_identity,
            self.workdir.path("nas", "latency.json"),
            float(self.teacher_latency()["latency_ms"]),
        )

    def search_space(self, latency=None):
        """The run's search space: derived from the teacher, nas.space's overrides, and with nas.space.min_speedup
        the speed cap from the latency model the search pins (nas/latency.json; `latency`, a SearchLatency already
        built, saves reading it again), else this machine's fitted one."""
        from kdjax.latency import MachineCache
        from kdjax.latency_model import load_or_fit
        from kdjax.search_space import SearchSpace

        space, model = self.settings.nas.space, None
        if space.min_speedup > 0:
            lat = self.settings.nas.latency
            model = (latency or self.search_latency()).model if lat.source == "model" else None
            model = model or load_or_fit(MachineCache(lat), self.teacher.spec.hidden_size)
        return SearchSpace.from_teacher(self.teacher.spec, space, model)

    def student_spec(self, arch_id: str) -> ArchSpec:
        from kdjax.spec import parse_arch_id

        return parse_arch_id(arch_id, self.teacher.spec)

    def devices_summary(self) -> str:
        return f"{jax.device_count()} x {jax.devices()[0].platform}"
