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
