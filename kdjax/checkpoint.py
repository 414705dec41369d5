"""Orbax checkpointing (the only module that imports orbax): one `Checkpointer` per stage.

Each checkpoint holds a pytree `state` (what changes: student, projection, optimizer, step; or controller and
baseline) and a JSON `meta` (data position, history length, anything a resume needs). Orbax writes into a temporary
folder and renames it when complete, so a kill during a save never leaves a step that looks finished. A step whose
files are damaged anyway is skipped with a warning naming it, and the previous good step is restored.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import orbax.checkpoint as ocp

from kdjax.errors import KdjaxError

log = logging.getLogger(__name__)


class CheckpointError(KdjaxError, RuntimeError):
    """No checkpoint could be restored although some exist."""


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` with keep-N, interval, and fallback to older steps on restore."""

    def __init__(self, directory: str, *, keep: int = 3, interval_steps: int = 1, async_save: bool = False):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=interval_steps,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: Any, meta: dict | None = None, *, force: bool = False) -> bool:
        """Save `state` (pytree) and `meta` (JSON) at `step`; returns whether a checkpoint was written."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
        saved = self._manager.save(step, args=args, force=force)
        self._manager.wait_until_finished()
        return bool(saved)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
        """Restore (step, state, meta) from `step` or the newest good step; None when there is no checkpoint.

        `abstract_state` is a pytree of arrays or `jax.ShapeDtypeStruct`s (with shardings) giving the target layout.
        """
        candidates = [step] if step is not None else list(reversed(self.steps()))
        if not candidates:
            return None
        errors = []
        for s in candidates:
            try:
                restored = self._manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                    ),
                )
                return s, restored["state"], dict(restored["meta"] or {})
            except Exception as e:
                log.warning("checkpoint step %d in %s is unreadable (%s); trying an older one", s, self.directory, e)
                errors.append(f"step {s}: {type(e).__name__}")
        raise CheckpointError(f"no readable checkpoint in {self.directory} ({'; '.join(errors)})")

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
