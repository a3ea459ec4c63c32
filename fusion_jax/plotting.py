r"""Plots of g_max sweeps (matplotlib, no display needed).

:func:`plot_sweep` draws test accuracy against g_max for one or several
:class:`~fusion_jax.SweepResult` objects (for example a digital and a
hardware-aware model): one colour per inference time, the spread over seeds
as error bars, the results side by side in panels or overlaid in one
``Axes`` with a line style each. It never uses
``matplotlib.pyplot``: a new figure is a plain
:class:`matplotlib.figure.Figure`, saved with the Agg renderer, so it works
on machines without a display and leaves pyplot's global state alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fusion_jax._atomic import atomic_open
from fusion_jax.evaluation import SweepResult
from fusion_jax.units import format_time

__all__ = ["plot_sweep"]

#: Line styles given to the results, in order.
LINE_STYLES = ("-", "--", ":", "-.")


def _check_results(results: Any) -> list[SweepResult]:
    if isinstance(results, SweepResult):
        return [results]
    if not isinstance(results, Sequence) or not results:
        raise ValueError("results must be a non-empty sequence of SweepResult.")
    for i, r in enumerate(results):
        if not isinstance(r, SweepResult):
            raise TypeError(f"results[{i}] is a {type(r).__name__}, not a SweepResult.")
    if len(results) > len(LINE_STYLES):
        raise ValueError(
            f"at most {len(LINE_STYLES)} results fit one plot (one line style each), "
            f"got {len(results)}."
        )
    return list(results)


def _save_atomically(figure: Any, path: str | os.PathLike[str], dpi: int) -> None:
    """Save ``figure`` to ``path`` atomically (no partial file on failure)."""
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    with atomic_open(path, binary=True) as fh:
        figure.savefig(fh, format=suffix, dpi=dpi)


def _draw(
    ax: Any,
    result: SweepResult,
    style: str,
    colours: Mapping[float, Any],
    dodge: Mapping[float, float],
) -> None:
    """Lines (mean over seeds) and error bars (+-1 std) of one result, one per inference time.

    The error bars of the inference times are shifted sideways by ``dodge``
    (in uS) so that they stay apart; shaded bands would overlap into one colour.
    """
    acc = 100.0 * np.asarray(result.accuracy, np.float64)
    mean = acc.mean(axis=1)
    std = acc.std(axis=1, ddof=1 if acc.shape[1] > 1 else 0)
    order = np.argsort(result.g_max)
    g = np.asarray(result.g_max)[order]
    for k, t in enumerate(result.t_inference):
        colour = colours[float(t)]
        m, s = mean[order, k], std[order, k]
        ax.plot(g, m, style, color=colour, marker="o", markersize=3.5, linewidth=1.6)
        if acc.shape[1] > 1:
            ax.errorbar(
                g + dodge[float(t)],
                m,
                yerr=s,
                fmt="none",
                ecolor=colour,
                elinewidth=1.0,
                alpha=0.8,
            )


def plot_sweep(
    results: Sequence[SweepResult],
    path: str | os.PathLike[str] | None = None,
    ax: Any = None,
    *,
    title: str | None = None,
    clean: Sequence[float] | None = None,
    dpi: int = 150,
) -> Any:
    r"""Plot accuracy against g_max, one line per inference time.

    A line is the mean test accuracy over seeds, its error bars the mean
    +- one standard deviation over seeds (none for a single seed), shifted
    slightly sideways per inference time so that they stay apart; each
    inference time has its own colour (viridis, earliest time darkest). With
    ``clean``, a dashed grey line marks each model's accuracy before
    programming (its digital weights).

    * ``ax=None``: a new figure with one panel per result, side by side
      with a shared accuracy axis, each titled with the result's ``label``.
    * ``ax`` a matplotlib ``Axes``: all results drawn into it, told apart
      by line style (``-``, ``--``, ``:``, ``-.`` in order), for example
      ``[hardware_aware, digital]`` as solid and dashed lines.
    * ``ax`` a sequence of ``Axes``, one per result: one result in each.

    Args:
        results: One or more :class:`~fusion_jax.SweepResult` (at most four).
        path: If given, the figure is saved there (format from the suffix,
            PNG by default) atomically: a temporary file in the same folder
            renamed over ``path``, removed on failure.
        ax: Where to draw, as above; by default a new
            :class:`matplotlib.figure.Figure` (not registered with pyplot).
        title: Figure title; by default none.
        clean: The accuracy (a fraction) of each result's model before
            programming, one per result, drawn as a horizontal reference line.
        dpi: Resolution of the saved file.

    Returns:
        The matplotlib ``Figure`` drawn into.

    Raises:
        TypeError: if an element of ``results`` is not a ``SweepResult``.
        ValueError: for no results, more than four, a sequence of ``ax``
            whose length is not the number of results, or a ``clean`` that
            is not one accuracy in [0, 1] per result.
        OSError: if ``path`` cannot be written.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from fusion_jax.plotting import plot_sweep
        >>> from fusion_jax.evaluation import SweepResult
        >>> acc = np.random.default_rng(0).uniform(0.8, 0.95, (3, 4, 2))  # g_max x seeds x t
        >>> grid = dict(g_max=np.array([10.0, 25.0, 40.0]), seeds=np.arange(4),
        ...             t_inference=np.array([1.0, 86400.0]))
        >>> digital = SweepResult(**grid, accuracy=acc, loss=1 - acc, label="digital")
        >>> aware = SweepResult(**grid, accuracy=acc + 0.02, loss=1 - acc, label="hardware-aware")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     figure = plot_sweep([digital, aware], Path(tmp) / "sweep.png", clean=[0.97, 0.96])
        ...     print(Path(tmp, "sweep.png").read_bytes()[:8])
        b'\x89PNG\r\n\x1a\n'
        >>> [(a.get_title(), len(a.get_lines())) for a in figure.axes]  # per time, and clean
        [('digital', 3), ('hardware-aware', 3)]
        >>> len(figure.legends)                   # one legend for both panels
        1
    """
    items = _check_results(results)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if ax is None:
        figure = Figure(figsize=(4.2 * len(items) + 1.0, 4.6), layout="constrained")
        axes = list(figure.subplots(1, len(items), sharey=True, squeeze=False)[0])
    elif isinstance(ax, Axes):
        axes = [ax] * len(items)
    else:
        axes = list(ax)
        if len(axes) != len(items) or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(
                f"ax must be an Axes or {len(items)} Axes (one per result), got {len(axes)} items."
            )
    overlay = len(set(map(id, axes))) < len(axes)
    figure = axes[0].figure
    clean_values = _check_clean(clean, len(items))
    times = np.unique(np.concatenate([r.t_inference for r in items]))
    colours = {float(t): c for t, c in zip(times, _viridis(len(times)), strict=True)}
    g_all = np.concatenate([r.g_max for r in items])
    step = np.diff(np.unique(g_all)).min() if np.unique(g_all).size > 1 else 1.0
    offsets = (np.arange(times.size) - (times.size - 1) / 2) * 0.08 * step
    dodge = {float(t): float(o) for t, o in zip(times, offsets, strict=True)}

    for i, (a, r) in enumerate(zip(axes, items, strict=True)):
        style = LINE_STYLES[i] if overlay else "-"
        _draw(a, r, style, colours, dodge)
        if clean_values is not None:
            a.axhline(100.0 * clean_values[i], color="0.45", linestyle=(0, (4, 3)), linewidth=1.1)
        if not overlay and r.label:
            a.set_title(r.label)

    handles = [
        Line2D([], [], color=colours[float(t)], linewidth=2.5, label="t=" + format_time(float(t)))
        for t in times
    ]
    if overlay:
        handles = [
            Line2D([], [], color="0.25", linestyle=style, linewidth=1.6, label=r.label or f"#{i}")
            for i, (style, r) in enumerate(zip(LINE_STYLES, items, strict=False))
        ] + handles
    if clean_values is not None:
        handles.append(
            Line2D([], [], color="0.45", linestyle=(0, (4, 3)), label="before programming")
        )
    seeds = "/".join(map(str, sorted({len(r.seeds) for r in items})))
    handles.append(Line2D([], [], linestyle="none", label=f"bars: ±1 std over {seeds} seeds"))
    if ax is None:
        # One legend for the whole figure, below the panels: it holds for every panel.
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 6),
            fontsize="small",
            frameon=False,
        )
    else:
        for a in dict.fromkeys(axes):
            a.legend(handles=handles, loc="lower right", fontsize="small", framealpha=0.9)
    for a in dict.fromkeys(axes):
        a.set_xlabel("g_max (uS)")
        a.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    if title:
        figure.suptitle(title)
    if path is not None:
        _save_atomically(figure, path, dpi)
    return figure


def _check_clean(clean: Sequence[float] | None, n: int) -> list[float] | None:
    if clean is None:
        return None
    values = np.atleast_1d(np.asarray(clean, dtype=np.float64))
    if values.shape != (n,) or not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"clean must hold one accuracy in [0, 1] per result ({n}), got {clean!r}.")
    return [float(v) for v in values]


def _viridis(n: int) -> list[tuple[float, ...]]:
    """``n`` colours along viridis, avoiding its pale yellow end."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.0, 0.85, n)] if n > 1 else [cmap(0.0)]
