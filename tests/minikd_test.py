"""Mini-KD candidate evaluation: a candidate pruned by the search's epoch hook is recorded with the epochs it ran."""

from helpers import run_context

from kdjax.nas.history import History
from kdjax.nas.stage import evaluator


def test_pruned_candidate_records_its_epochs_and_exports_nothing(tiny_teacher, tmp_path):
    fields = {"nas.strategy": "optuna", "nas.mini_kd_epochs": 3, "nas.mini_kd_steps_per_epoch": 1}
    ctx = run_context(tmp_path, fields, teacher=tiny_teacher)
    history = History(str(tmp_path / "history.jsonl"))
    evaluate = evaluator(ctx, history, str(tmp_path / "candidates"), progress=False)
    seen = []

    def on_epoch(epoch, loss):
        seen.append((epoch, loss))
        return epoch == 1  # prune after the second of three epochs

    rec = evaluate(ctx.student_spec("1L-32H-2A-64F-gelu"), on_epoch=on_epoch, trial=0)
    assert rec["pruned"] and not rec["diverged"] and rec["hf"] is None
    assert [e for e, _ in seen] == [0, 1] and rec["epoch_losses"] == [x for _, x in seen]
    assert rec["loss"] == rec["epoch_losses"][-1] and rec["mini_kd_steps"] == 3
    assert not (tmp_path / "candidates").exists()
    kept = evaluate(ctx.student_spec("1L-32H-2A-64F-relu"), on_epoch=lambda e, loss: False, trial=1)
    assert not kept["pruned"] and len(kept["epoch_losses"]) == 3 and kept["hf"]  # the same hook, never pruning


def test_a_candidate_compiled_ahead_trains_exactly_as_without(tiny_teacher, tmp_path, monkeypatch):
    """`prepare` compiles the next candidate on the thread; its `distill` then uses that program (each program is
    built once) and learns exactly what it learns without compiling ahead."""
    import collections

    from kdjax import steps

    builds: collections.Counter = collections.Counter()
    compile_once = steps._compile

    def counting(key, build):
        def counted():
            builds[key[0], key[1].student.arch_id if key[0] == "student" else ""] += 1
            return build()

        return compile_once(key, counted)

    monkeypatch.setattr(steps, "_compile", counting)
    fields = {"nas.mini_kd_epochs": 1, "nas.mini_kd_steps_per_epoch": 2}
    first, second = "1L-32H-2A-64F-gelu", "2L-32H-2A-96F-relu"
    records = {}
    for ahead in (False, True):
        monkeypatch.setattr(steps, "_COMPILED", collections.OrderedDict())  # cold, as a fresh process
        builds.clear()
        ctx = run_context(tmp_path / str(ahead), {**fields, "nas.compile_ahead": ahead}, teacher=tiny_teacher)
        history = History(str(tmp_path / str(ahead) / "history.jsonl"))
        evaluate = evaluator(ctx, history, str(tmp_path / str(ahead) / "candidates"), progress=False)
        try:
            evaluate.prepare(ctx.student_spec(second))
            records[ahead] = [evaluate(ctx.student_spec(a), trial=t) for t, a in enumerate((first, second))]
        finally:
            evaluate.close()
        assert sorted(builds.values()) == [1, 1, 1], builds  # the teacher's program and each student's, once
    plain, ahead = records[False], records[True]
    assert [r["epoch_losses"] for r in ahead] == [r["epoch_losses"] for r in plain]
    assert ahead[1]["compile_ahead_s"] > 0 and plain[1]["compile_ahead_s"] is None
    assert ahead[0]["compile_ahead_s"] is None  # it was not announced
