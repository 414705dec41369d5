"""PyTorch batch-1 latency of exported folders, and the report's measured / modelled / torch speed-up columns."""

import json
import os

import pytest

import kdjax.latency as latency
from kdjax import model_latency, report, torch_latency
from kdjax.export import hf_config
from kdjax.latency import LatencyConfig
from kdjax.spec import ArchSpec
from kdjax.torch_latency import available, measure_folder, measure_pair
from kdjax.workdir import Workdir, read_json, write_json

pytest.importorskip("torch")

TEACHER = ArchSpec(2, 64, 2, 128, vocab_size=100, max_position_embeddings=32)
STUDENT = ArchSpec(1, 32, 2, 64, vocab_size=100, max_position_embeddings=32)


def hf_folder(path, spec: ArchSpec) -> str:
    """A folder as the export writes it, config only (the timing never reads weights)."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config(spec, {}), f)
    return str(path)


def cfg(tmp_path) -> LatencyConfig:
    return LatencyConfig(seq_len=16, warmup_runs=1, timed_runs=5, cache_dir=str(tmp_path / "mc"))


def test_torch_latency_is_measured_once_per_machine(tmp_path, monkeypatch):
    assert available()
    folder = hf_folder(tmp_path / "s" / "hf", STUDENT)
    res = measure_folder(folder, cfg(tmp_path))
    assert res["latency_ms"] > 0 and res["runs"] == 5 and res["device"] == "cpu" and res["p90_ms"] >= res["latency_ms"]

    def fail(run):
        raise AssertionError("re-timed a cached folder")

    monkeypatch.setattr(latency, "_timed_run", fail)
    assert measure_folder(folder, cfg(tmp_path)) == res
    assert measure_folder(str(tmp_path / "no-such-folder"), cfg(tmp_path)) is None


def test_pair_is_timed_interleaved_so_load_hits_both(tmp_path, monkeypatch):
    """Teacher 40 ms, student 10 ms, and a machine whose load triples half-way through the session: the interleaved
    pair still gives 4.0x, while two lone timings at different load levels (the old way) would not."""
    folders = {"teacher": hf_folder(tmp_path / "t", TEACHER), "student": hf_folder(tmp_path / "s", STUDENT)}
    calls: list[str] = []
    cost = {"teacher": 40.0, "student": 10.0}

    def runner(folder, c):
        name = "teacher" if folder == folders["teacher"] else "student"
        return (lambda: calls.append(name)), "cpu"

    def timed(run):
        run()
        return cost[calls[-1]] * (3.0 if len(calls) > 12 else 1.0)

    monkeypatch.setattr(torch_latency, "_runner", runner)
    monkeypatch.setattr(latency, "_timed_run", timed)
    c = LatencyConfig(seq_len=16, warmup_runs=2, timed_runs=6, percentile=10, cache_dir=str(tmp_path / "mc"))
    # A lone timing already cached for the student must not stand in for its half of the pair.
    assert measure_folder(folders["student"], c)["latency_ms"] == 10.0
    calls.clear()
    pair = measure_pair(folders["student"], folders["teacher"], c)
    warm, timed_calls = calls[:4], calls[4:]
    assert sorted(warm) == ["student", "student", "teacher", "teacher"]
    rounds = [timed_calls[i : i + 2] for i in range(0, len(timed_calls), 2)]
    assert len(rounds) == 6 and all(sorted(r) == ["student", "teacher"] for r in rounds)
    assert rounds[0] != rounds[1]  # the order alternates, so neither always runs right after the other
    assert pair["speedup"] == pytest.approx(4.0) and pair["speedup_p50"] == pytest.approx(4.0)
    assert pair["student"]["runs"] == pair["teacher"]["runs"] == 6
    assert pair["student"]["spread"] > 1 and pair["teacher"]["p90_ms"] == pytest.approx(120.0)
    # Cached under both shapes: timed once per machine.
    calls.clear()
    assert measure_pair(folders["student"], folders["teacher"], c) == pair and calls == []


def test_report_speedup_columns(tmp_path):
    root = str(tmp_path / "w")
    c = cfg(tmp_path)
    folders = {"teacher": hf_folder(tmp_path / "t", TEACHER), "nas": hf_folder(tmp_path / "s" / "hf", STUDENT)}
    key = "teacher-id|proto|machine"
    write_json(os.path.join(root, "teacher", "latency.json"), {key: {"latency_ms": 50.0}, "old|x|y": {"latency_ms": 1}})
    for model, kind, spec in (("teacher", "teacher", TEACHER), (f"nas-{STUDENT.arch_id}", "nas", STUDENT)):
        rec = {
            "model": model,
            "kind": kind,
            "arch_id": spec.arch_id,
            "source": folders[kind],
            "task": "rte",
            "scores": {"accuracy": 0.6},
            "params": spec.num_params,
            "spec": spec.to_dict(),
        }
        write_json(os.path.join(root, "glue", model, "rte.json"), rec)
    os.makedirs(os.path.join(root, "nas"))
    with open(os.path.join(root, "nas", "history.jsonl"), "w") as f:
        row = {"arch_id": STUDENT.arch_id, "latency_ms": 1.0, "speedup": 7.0, "latency_source": "model", "reward": 0.5}
        f.write(json.dumps({"strategy": "lstm", "loss": 0.3, **row}) + "\n")
    # What the glue stage records when it scores them (kdjax.glue_stage.record_latency); the report only reads.
    wd = Workdir(root)
    t_rec = wd.latency_path("teacher", TEACHER.arch_id, "teacher")
    model_latency.record(t_rec, TEACHER, c, folders["teacher"], xla={"latency_ms": 50.0})
    s_rec = wd.latency_path("nas", STUDENT.arch_id, f"nas-{STUDENT.arch_id}")
    s_lat = model_latency.record(s_rec, STUDENT, c, folders["nas"], teacher_dir=folders["teacher"])
    assert s_lat["torch_pair"]["teacher"]["runs"] == s_lat["torch_pair"]["student"]["runs"] == c.timed_runs
    assert s_lat["torch_ms"] == s_lat["torch_pair"]["student"]["latency_ms"] and s_lat["torch_speedup"] > 0
    assert model_latency.is_current(s_rec, c) and not model_latency.is_current(s_rec, LatencyConfig(seq_len=32))
    report.build_report(root, teacher_key=key)
    rows = {r["kind"]: r for r in read_json(os.path.join(root, "report", "glue.json"))["rows"]}
    s, t = rows["nas"], rows["teacher"]
    assert t["latency_ms"] == 50.0  # this teacher's entry, not the old one's
    assert s["speedup_model"] == 7.0 and s["latency_ms"] != 1.0  # modelled latency is not shown as measured
    assert s["speedup"] == pytest.approx(50.0 / s["latency_ms"])
    assert t["torch_ms"] > 0 and s["torch_ms"] > 0 and t["torch_speedup"] == 1.0
    assert s["torch_speedup"] == s_lat["torch_pair"]["speedup"]  # the pair's ratio, not the teacher row's time / this
    md = open(os.path.join(root, "report", "glue.md")).read()
    assert "torch speed-up" in md and "modelled speed-up" in md and "7.0x" in md
    # Without the key the report cannot tell which of two teachers is this workdir's: no teacher latency.
    assert report.teacher_latency_ms(root, None) is None
