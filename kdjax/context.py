"""Everything a stage needs, built lazily once per run: validated config, workdir, teacher, packed corpus."""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from kdjax.config import check_positions, split_list, validate
from kdjax.data.batches import MaskingSpec
from kdjax.data.corpus import packed_corpus
from kdjax.latency import LatencyConfig
from kdjax.losses import LossConfig
from kdjax.sharding import compute_dtype, make_mesh
from kdjax.spec import ArchSpec
from kdjax.teacher import Teacher, load_teacher
from kdjax.workdir import Workdir

log = logging.getLogger(__name__)


class RunContext:
    def __init__(self, config, workdir: Workdir):
        self.config = config
        self.workdir = workdir
        self.stages = split_list(config.stages)
        self.settings = validate(config)

    @functools.cached_property
    def teacher(self) -> Teacher:
        c = self.config.teacher
        log.info("loading teacher %s", c.name)
        teacher = load_teacher(
            str(c.name),
            allow_pickle=bool(c.allow_pickle),
            random_dir=self.workdir.subdir("teacher"),
            seed=self.config.seed,
        )
        check_positions(self.settings, teacher.spec)
        return teacher

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """The packed corpus (cached on disk by content fingerprint)."""
        log.info("preparing corpus %s", self.config.data.corpus)
        rows = packed_corpus(self.config.data, self.teacher.tokenizer, self.workdir.cache, seed=self.config.seed)
        pad = self.teacher.tokenizer.pad_token_id
        log.info("corpus: %d rows of %d tokens, %.1f%% non-pad", len(rows), rows.shape[1], 100 * np.mean(rows != pad))
        return rows

    @functools.cached_property
    def masking(self) -> MaskingSpec:
        return MaskingSpec.from_tokenizer(self.teacher.tokenizer, float(self.config.data.mlm_probability))

    @functools.cached_property
    def mesh(self):
        return make_mesh()

    @property
    def global_batch(self) -> int:
        return int(self.config.kd.per_device_batch_size) * self.mesh.size

    @property
    def dtype(self):
        return compute_dtype(str(self.config.kd.compute_dtype))

    @property
    def loss_cfg(self) -> LossConfig:
        return LossConfig.from_config(self.config.kd.loss)

    @property
    def latency_cfg(self) -> LatencyConfig:
        return LatencyConfig.from_config(self.config.nas)

    @functools.cached_property
    def teacher_identity(self) -> str:
        """Source + config hash of the teacher: what its latency (and every cache derived from it) is keyed by."""
        from kdjax.search_latency import teacher_identity

        return teacher_identity(self.teacher.source, self.teacher.hf_config)

    def teacher_latency(self) -> dict:
        """The teacher's measured latency (machine cache), recorded in teacher/latency.json by identity and protocol."""
        from kdjax.search_latency import teacher_latency

        return teacher_latency(
            self.teacher.spec, self.teacher_identity, self.latency_cfg, self.workdir.path("teacher", "latency.json")
        )

    def search_latency(self):
        """The latencies the search reward reads (fitted model or side-by-side timing), pinned in nas/latency.json."""
        from kdjax.search_latency import SearchLatency

        return SearchLatency(
            self.latency_cfg,
            self.teacher.spec,
            self.teacher_identity,
            self.workdir.path("nas", "latency.json"),
            float(self.teacher_latency()["latency_ms"]),
        )

    def student_spec(self, arch_id: str) -> ArchSpec:
        from kdjax.spec import parse_arch_id

        return parse_arch_id(arch_id, self.teacher.spec)

    def devices_summary(self) -> str:
        return f"{jax.device_count()} x {jax.devices()[0].platform}"
