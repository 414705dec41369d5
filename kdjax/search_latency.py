"""The latencies one search's reward reads, and the teacher's measured latency, keyed by what produced them.

`nas.latency_source=model` (default): student and teacher latencies come from the machine's fitted latency model
(`kdjax.latency_model`), pinned in W/nas/latency.json at the search's first start so a resumed search keeps its scale
even if the machine cache is cleared. `nas.latency_source=measured`: each candidate is timed side by side with the
teacher (round-robin, low percentile) and its latency is expressed relative to that same-round teacher timing.

The teacher's measured latency (for the report and the model check) is cached per machine under the teacher's
identity (source + config hash) and recorded in W/teacher/latency.json under `teacher_key(...)`: identity, protocol
and machine, so a changed teacher is re-timed instead of feeding an old teacher's latency to every speed-up.
"""

from __future__ import annotations

import json
import logging
import os

from kdjax.latency import LatencyConfig, MachineCache, digest, measure_many, spec_key
from kdjax.latency_model import LatencyModel, load_or_fit
from kdjax.spec import ArchSpec
from kdjax.workdir import read_json, write_json

log = logging.getLogger(__name__)


def teacher_identity(source: str, hf_config: dict) -> str:
    """A teacher is its source (folder or hub id) plus its config; weights do not change latency."""
    return digest({"source": os.path.abspath(source) if os.path.isdir(source) else source, "config": hf_config})


def teacher_key(identity: str, cfg: LatencyConfig, cache: MachineCache) -> str:
    return f"{identity}|{cfg.key}|{digest(cache.machine)}"


def _read_dict(path: str, what: str) -> dict:
    """A JSON object from `path`; {} when absent, and {} with a warning when damaged (the caller rebuilds it)."""
    if not os.path.exists(path):
        return {}
    try:
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as e:
        log.warning("%s %s is damaged (%s); rebuilding it", what, path, e)
        return {}


def teacher_latency(spec: ArchSpec, identity: str, cfg: LatencyConfig, record_path: str) -> dict:
    """The teacher's measured latency (machine cache first), recorded in `record_path` under its full key."""
    cache = MachineCache(cfg)
    key = teacher_key(identity, cfg, cache)
    record = _read_dict(record_path, "teacher latency cache")
    hit = record.get(key)
    if isinstance(hit, dict) and "latency_ms" in hit:
        return hit
    result = cache.get(f"teacher:{identity}")
    if result is None:
        result = measure_many({"t": spec}, cfg)["t"]
        cache.put({f"teacher:{identity}": result})
    result = dict(result, teacher_identity=identity, key=key)
    record[key] = result
    write_json(record_path, record)
    return result


class SearchLatency:
    """`teacher_ms` and `student(spec) -> fields` of one search; R reads fields['latency_ms'] and teacher_ms."""

    def __init__(
        self, cfg: LatencyConfig, teacher_spec: ArchSpec, identity: str, pin_path: str, measured_teacher_ms: float
    ):
        self.cfg, self.teacher_spec, self.identity = cfg, teacher_spec, identity
        self.cache = MachineCache(cfg)
        self.model: LatencyModel | None = None
        pin = _read_dict(pin_path, "search latency pin")
        same = pin.get("protocol") == cfg.key and pin.get("teacher") == identity and pin.get("source") == cfg.source
        if pin and not same:
            log.warning("nas latency pin %s was made for another teacher or protocol; re-pinning", pin_path)
        if cfg.source == "model":
            if same and "model" in pin:
                try:
                    self.model = LatencyModel.from_dict(pin["model"])
                except (KeyError, TypeError, ValueError) as e:
                    log.warning("latency model pinned in %s is damaged (%s); using this machine's", pin_path, e)
            if self.model is None:
                self.model = load_or_fit(self.cache, teacher_spec.hidden_size)
            self.teacher_ms = self.model.predict(teacher_spec)
        else:
            self.teacher_ms = float(pin["teacher_latency_ms"]) if same else float(measured_teacher_ms)
        if not same or (self.model is not None and pin.get("model") != json.loads(json.dumps(self.model.to_dict()))):
            write_json(
                pin_path,
                {
                    "protocol": cfg.key,
                    "teacher": identity,
                    "source": cfg.source,
                    "machine": self.cache.machine,
                    "teacher_latency_ms": self.teacher_ms,
                    "measured_teacher_latency_ms": measured_teacher_ms,
                    "model": self.model.to_dict() if self.model else None,
                },
            )
        self._teacher_run = None

    def describe(self) -> str:
        if self.model is not None:
            q = self.model.fit
            err = 100 * q.get("median_rel_err", 0.0)
            text = f"modelled latency (fit on {q.get('shapes')} shapes, median error {err:.0f}%"
            if "loo_median_rel_err" in q:  # models fitted before it was recorded have no leave-one-out error
                loo, worst = 100 * q["loo_median_rel_err"], 100 * q["loo_max_rel_err"]
                text += f", on a shape left out {loo:.0f}% (max {worst:.0f}%)"
            return text + ")"
        return f"measured latency (p{self.cfg.percentile:g} of {self.cfg.timed_runs} runs beside the teacher)"

    def student(self, spec: ArchSpec) -> dict:
        """History fields of one candidate's latency: `latency_ms` (what the reward reads), its source and spread."""
        if self.model is not None:
            return {"latency_ms": self.model.predict(spec), "latency_source": "model"}
        key = f"beside:{self.identity}:{spec_key(spec)}"
        res = self.cache.get(key)
        if res is None:
            both = measure_many({"t": self.teacher_spec, "s": spec}, self.cfg)
            res = {"student": both["s"], "teacher": both["t"]}
            self.cache.put({key: res})
        # The student's timing in units of the teacher timed in the same rounds, put on this search's teacher scale.
        ratio = res["student"]["latency_ms"] / res["teacher"]["latency_ms"]
        return {
            "latency_ms": ratio * self.teacher_ms,
            "latency_source": "measured",
            "measured_latency_ms": res["student"]["latency_ms"],
            "latency_spread": res["student"]["spread"],
        }
