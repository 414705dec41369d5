"""A latency model fitted once per machine and protocol: what the search reward reads instead of one noisy timing.

As in hardware-aware NAS (FBNet's lookup table, Once-for-All's predictor), the reward uses a latency *model*: an
analytic cost of the encoder's work (matmul and attention FLOPs, softmax, activation and other elementwise work,
weight bytes, per-layer and per-call overheads) with non-negative coefficients fitted by least relative error to the
measured latencies of a fixed set of calibration shapes. The fit happens once per machine and protocol and is cached
(and pinned in each search's workdir), so the reward is a pure function of the architecture and that fitted model:
two searches of the same seed see the same latencies whatever the load on the machine while they run.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kdjax.latency import MachineCache, digest, spec_key
from kdjax.spec import ArchSpec

FEATURES = (
    "call",  # fixed cost of one call (dispatch, embedding lookup setup)
    "layer",  # fixed cost per layer (kernel launches, synchronisation)
    "embedding",  # embedding sums and layer norm: b*s*E
    "matmul",  # dense FLOPs: L * 2*b*s*(4H^2 + 2HF) (+ ALBERT's E->H projection)
    "attention",  # score and context FLOPs: L * 4*b*s^2*H
    "softmax",  # L * b*A*s^2
    "elementwise",  # residuals, layer norms, biases: L * b*s*H
    "act_gelu",  # FFN activation elements L*b*s*F, one column per activation kind
    "act_relu",
    "act_silu",
    "weight_bytes",  # fp32 layer weights read per call: L * 4*(4H^2 + 2HF)
)
_ACT_COLUMN = {"gelu": "act_gelu", "gelu_new": "act_gelu", "relu": "act_relu", "silu": "act_silu"}

# (layers, hidden, heads, ffn, activation). At a fixed sequence length FEATURES' 11 columns span only 9 directions
# (matmul FLOPs and weight bytes both grow as L*(4H^2+2HF); attention FLOPs and elementwise work both as L*H), and
# every cap of `calibration_specs` holds at least twice as many shapes as that, so the fit is overdetermined (its
# leave-one-out error says how well). Depth (1..12 layers) and FFN ratio (F/H from 1/8 to 4) vary independently at
# each width, because a search's fast candidates are the deep, narrow-FFN ones: the 9 shapes up to 384 wide used
# before were fitted exactly and put 6L-384H-6A-192F at 3.2x faster than MiniLM (timed: 2.1x; its FLOPs allow 2.2x).
# Each configured teacher's own shape is in the set (MiniLM's, BERT-base's), so speed-ups divide by a fitted teacher.
CALIBRATION = (
    (1, 64, 1, 128, "gelu"),
    (4, 64, 4, 256, "gelu"),
    (6, 64, 2, 32, "silu"),
    (2, 128, 2, 512, "gelu"),
    (1, 128, 8, 256, "relu"),
    (4, 128, 4, 64, "relu"),
    (3, 128, 2, 256, "silu"),
    (1, 256, 4, 512, "gelu"),
    (3, 256, 8, 1024, "gelu"),
    (2, 256, 4, 1024, "silu"),
    (6, 256, 8, 128, "gelu"),
    (4, 256, 4, 256, "relu"),
    (2, 256, 2, 512, "relu"),
    (5, 192, 3, 96, "silu"),
    (8, 128, 2, 128, "gelu"),
    (6, 192, 6, 384, "relu"),
    (12, 64, 4, 128, "silu"),
    (2, 192, 12, 768, "gelu"),
    (1, 384, 6, 1536, "gelu"),
    (2, 384, 12, 768, "relu"),
    (6, 384, 12, 1536, "gelu"),
    (6, 384, 6, 192, "silu"),
    (3, 384, 12, 384, "gelu"),
    (4, 384, 6, 768, "relu"),
    (1, 512, 8, 2048, "gelu"),
    (2, 512, 4, 1024, "gelu"),
    (1, 512, 8, 2048, "silu"),
    (4, 512, 8, 512, "relu"),
    (1, 768, 12, 3072, "gelu"),
    (2, 768, 12, 1536, "gelu"),
    (1, 768, 12, 3072, "relu"),
    (6, 768, 12, 768, "silu"),
    (12, 768, 12, 3072, "gelu"),
    (1, 1024, 16, 4096, "gelu"),
    (2, 1024, 16, 1024, "relu"),
)


def calibration_specs(max_hidden: int = 1024) -> list[ArchSpec]:
    """The calibration shapes up to `max_hidden` wide (at least the 256-wide ones): no time is spent timing shapes
    wider than any candidate of the search."""
    cap = max(256, max_hidden)
    return [
        ArchSpec(num_layers=n, hidden_size=h, num_heads=a, ffn_size=f, activation=act)
        for n, h, a, f, act in CALIBRATION
        if h <= cap
    ]


def features(spec: ArchSpec, batch_size: int, seq_len: int) -> np.ndarray:
    """The cost terms of one forward call of `spec` at (batch_size, seq_len), in FEATURES order."""
    b, s, L = batch_size, seq_len, spec.num_layers
    h, f, e, a = spec.hidden_size, spec.ffn_size, spec.embed_dim, spec.num_heads
    dense = 4 * h * h + 2 * h * f
    x = dict.fromkeys(FEATURES, 0.0)
    x["call"] = 1.0
    x["layer"] = float(L)
    x["embedding"] = float(b * s * e)
    x["matmul"] = float(L * 2 * b * s * dense + (2 * b * s * e * h if e != h else 0))
    x["attention"] = float(L * 4 * b * s * s * h)
    x["softmax"] = float(L * b * a * s * s)
    x["elementwise"] = float(L * b * s * h)
    x[_ACT_COLUMN[spec.activation]] = float(L * b * s * f)
    x["weight_bytes"] = float(L * 4 * dense)
    return np.array([x[k] for k in FEATURES])


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """latency_ms(spec) = coef . features(spec); coefficients per FEATURES entry, in ms per unit."""

    coef: tuple[float, ...]
    batch_size: int
    seq_len: int
    protocol: str = ""
    # Quality of the fit: median and max relative error on its calibration shapes and on each shape left out of it
    # (loo_*), number of shapes.
    fit: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def predict(self, spec: ArchSpec) -> float:
        return float(np.dot(self.coef, features(spec, self.batch_size, self.seq_len)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LatencyModel:
        if len(d["coef"]) != len(FEATURES):
            raise ValueError(f"latency model has {len(d['coef'])} coefficients, expected {len(FEATURES)}")
        return cls(
            coef=tuple(float(c) for c in d["coef"]),
            batch_size=int(d["batch_size"]),
            seq_len=int(d["seq_len"]),
            protocol=str(d.get("protocol", "")),
            fit=dict(d.get("fit", {})),
        )


def fit(
    specs: list[ArchSpec], latencies_ms: list[float], batch_size: int, seq_len: int, protocol: str = ""
) -> LatencyModel:
    """Non-negative least squares on relative error (each row divided by its latency), columns scaled to unit norm.

    Non-negative coefficients keep the model monotone: more layers, width or FLOPs never predict a faster model.
    """
    y = np.asarray(latencies_ms, dtype=np.float64)
    X = np.stack([features(s, batch_size, seq_len) for s in specs])
    coef = _nnls_rel(X, y)
    rel = np.abs(X @ coef - y) / y
    # Leave-one-out: each shape predicted by the model fitted to the others, i.e. how the model does on a shape it
    # has not seen (an exactly determined fit has no residual on its own shapes and can still extrapolate wildly).
    keep = np.ones(len(y), dtype=bool)
    loo = []
    for i in range(len(y)):
        keep[i] = False
        loo.append(abs(float(X[i] @ _nnls_rel(X[keep], y[keep])) - y[i]) / y[i])
        keep[i] = True
    quality = {
        "median_rel_err": float(np.median(rel)),
        "max_rel_err": float(np.max(rel)),
        "loo_median_rel_err": float(np.median(loo)),
        "loo_max_rel_err": float(np.max(loo)),
        "shapes": len(specs),
    }
    return LatencyModel(tuple(float(c) for c in coef), batch_size, seq_len, protocol, quality)


def _nnls_rel(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the relative error of X @ coef against y."""
    from scipy.optimize import nnls

    A = X / y[:, None]
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    w, _ = nnls(A / scale, np.ones_like(y))
    return w / scale


def model_key(specs: list[ArchSpec]) -> str:
    """Cache key of the fitted model: the feature set and the calibration shapes it was fitted to."""
    return f"model:{digest([FEATURES, [s.arch_id for s in specs]])}"


def load_or_fit(cache: MachineCache, max_hidden: int = 1024) -> LatencyModel:
    """This machine's model for `cache.cfg`'s protocol: from the cache, or fitted now from the calibration shapes."""
    cfg = cache.cfg
    specs = calibration_specs(max_hidden)
    hit = cache.get(model_key(specs))
    if hit is not None:
        try:
            return LatencyModel.from_dict(hit)
        except (KeyError, TypeError, ValueError) as e:
            import logging

            logging.getLogger(__name__).warning("latency model in %s is damaged (%s); refitting", cache.path, e)
    measured = cache.measure_specs(specs)
    lat = [measured[spec_key(s)]["latency_ms"] for s in specs]
    model = fit(specs, lat, cfg.batch_size, cfg.seq_len, cfg.key)
    cache.put({model_key(specs): model.to_dict()})
    return model
