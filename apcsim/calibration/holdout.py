"""Fit errors on profile points held out from the fit.

For each op, a seeded random `fraction` of its distinct measured points (a token count, a
(chunk, context) cell, a (batch, context) cell, a batch size) is removed, the op is refitted on
the rest exactly as the cost model fits it (but in the measured shape: no head scaling), and the
absolute percentage error is taken on every measured row of the held-out points.
"""

from __future__ import annotations

import numpy as np

from apcsim.calibration.attention import DecodeAttention, PrefillAttention
from apcsim.calibration.fit import Curve, affine_fit
from apcsim.calibration.profile import OPS, OpData, Profile


def _keys(op: str, d: OpData) -> np.ndarray:
    kind = OPS[op].kind
    if kind in ("token", "cpu_token"):
        return d.num_tokens[:, None]
    if kind == "cpu_batch":
        return d.batch_size[:, None]
    if kind == "attn_prefill":
        return np.stack([d.num_tokens, d.context_len], axis=1)
    return np.stack([d.batch_size, d.context_len], axis=1)


def _fit_predict(op: str, d: OpData, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    kind = OPS[op].kind
    t = d.time_ms
    if kind == "token":
        return Curve.fit(d.num_tokens[train], t[train]).eval(d.num_tokens[test])
    if kind == "cpu_batch":
        a, b = affine_fit(d.batch_size[train], t[train])
        return a + b * d.batch_size[test]
    if kind == "cpu_token":
        x = d.num_tokens[train].astype(np.float64)
        return (x * t[train]).sum() / (x * x).sum() * d.num_tokens[test]
    if kind == "attn_prefill":
        f = PrefillAttention.fit(d.num_tokens[train], d.context_len[train], t[train])
        return np.array([f(n, c) for n, c in zip(d.num_tokens[test].tolist(), d.context_len[test].tolist())])
    f = DecodeAttention.fit(d.batch_size[train], d.context_len[train], t[train])
    return np.array([f(b, b * c) for b, c in zip(d.batch_size[test].tolist(), d.context_len[test].tolist())])


def holdout_errors(profile: Profile, fraction: float = 0.2, seed: int = 0) -> dict[str, dict]:
    """{op: {"median_ape_pct", "p90_ape_pct", "max_ape_pct", "n_holdout", "n_points"}} per profiled op."""
    out: dict[str, dict] = {}
    names = sorted(profile.ops)
    for op, ss in zip(names, np.random.SeedSequence(seed).spawn(len(names))):
        d = profile.ops[op]
        keys = _keys(op, d)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        n_hold = max(1, int(round(fraction * len(uniq))))
        if len(uniq) - n_hold < 2:
            continue  # too few points to fit on what is left
        held = np.zeros(len(uniq), dtype=bool)
        held[np.random.default_rng(ss).choice(len(uniq), size=n_hold, replace=False)] = True
        test = held[inv]
        pred = _fit_predict(op, d, ~test, test)
        ape = 100.0 * np.abs(pred - d.time_ms[test]) / d.time_ms[test]
        out[op] = {
            "median_ape_pct": float(np.median(ape)),
            "p90_ape_pct": float(np.percentile(ape, 90)),
            "max_ape_pct": float(ape.max()),
            "n_holdout": int(test.sum()),
            "n_points": int(len(uniq)),
        }
    return out
