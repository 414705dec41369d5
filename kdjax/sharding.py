"""Where arrays live: the data-parallel mesh, its two shardings, batch placement (with prefetch) and compute dtype.

Every jitted step takes the batch split along the mesh's 'data' axis and everything else (state, teacher weights,
keys) replicated; `shardings(mesh)` is the one place that pair is built.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Generator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kdjax.data.batches import Batches


def compute_dtype(name: str) -> Any:
    """'auto' -> bfloat16 on GPU/TPU, float32 on CPU."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    return jnp.dtype(name)


def make_mesh(devices=None) -> Mesh:
    """1-D data-parallel mesh over all devices.

    The axis is `Auto`: with the `Explicit` axes `jax.make_mesh` gives by default, the embedding lookup of a
    data-sharded batch under jit fails with a `ShardingTypeError` asking for an `out_sharding`.
    """
    devices = devices if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


class Shardings(NamedTuple):
    """The two layouts of a data-parallel step."""

    data: NamedSharding  # leading (batch) dimension split over the 'data' axis
    replicated: NamedSharding  # a full copy on every device


@functools.lru_cache(maxsize=16)
def shardings(mesh: Mesh) -> Shardings:
    return Shardings(NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    data = shardings(mesh).data
    return {k: jax.device_put(v, data) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, shardings(mesh).replicated)


def prefetch(
    batches: Batches, mesh: Mesh, start: int, stop: int, depth: int = 2
) -> Generator[tuple[int, dict[str, np.ndarray], dict[str, jax.Array]], None, None]:
    """Yield (step, host batch, device batch), preparing the next `depth` batches on a background thread.

    Masking and the host-to-device copy of step s+1 overlap the device step s (jitted steps dispatch
    asynchronously), so the accelerator does not wait on numpy.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop_event = threading.Event()

    def work():
        try:
            for step in range(start, stop):
                if stop_event.is_set():
                    return
                host = batches.get(step)
                q.put((step, host, shard_batch(host, mesh)))
        except BaseException as e:  # surfaced in the consumer
            q.put(e)
        q.put(None)

    thread = threading.Thread(target=work, daemon=True, name="kdjax-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop_event.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
