"""An independent NumPy + scikit-learn implementation of REFERENCE.md.

Written from the specification, row by row like aihwkit does, to check
fusion_jax against: no fusion_jax code is used here.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LinearRegression


def ref_convert_to_conductances(w: np.ndarray, g_max: float) -> np.ndarray:
    """Per row: s = g_max / max(max|w|, 1e-10); G = clip(|w * s|, 0, g_max)."""
    w = np.asarray(w)
    out = np.empty_like(w)
    for idx in np.ndindex(*w.shape[:-1]):
        row = w[idx]
        scale = w.dtype.type(g_max) / max(np.abs(row).max(), w.dtype.type(1e-10))
        out[idx] = np.clip(np.abs(row * scale), 0, g_max)
    return out


def ref_convert_back_to_weights(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row: fit LinearRegression of w on x = g * sign(w), return coef * x."""
    g = np.asarray(g, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    x = g * np.sign(w)
    out = np.empty_like(x)
    for idx in np.ndindex(*w.shape[:-1]):
        out[idx] = _coef(x[idx], w[idx]) * x[idx]
    return out


def _coef(x: np.ndarray, y: np.ndarray) -> float:
    """LinearRegression's slope; 0 on zero-variance rows, as REFERENCE.md states.

    (On a constant row, the float mean can be off by an ulp, and scikit-learn
    then fits rounding noise; the exact least-squares problem has the
    minimum-norm solution 0, which aihwkit was measured to return.)
    """
    if np.all(x == x[0]):
        return 0.0
    return float(LinearRegression().fit(x[:, None], y).coef_[0])


def ref_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row LinearRegression slope (intercept fitted)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out = np.empty(x.shape[:-1])
    for idx in np.ndindex(*x.shape[:-1]):
        out[idx] = _coef(x[idx], y[idx])
    return out


def degenerate_rows(g: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rows where x = g * sign(w) or w is constant (fusion_jax's fallback rows)."""
    w = np.asarray(w, dtype=np.float64)
    x = np.asarray(g, dtype=np.float64) * np.sign(w)
    return np.all(x == x[..., :1], axis=-1) | np.all(w == w[..., :1], axis=-1)
