"""Matplotlib figures from saved results (never from live models).

Every function takes arrays read back from an experiment's saved files and returns
a :class:`matplotlib.figure.Figure`. Figures are built with the object API
(``Figure()``, no ``pyplot``), so no global backend state is touched and they render
with Agg; save them with :func:`seqjax.io.save_figure` (atomic).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = ["band", "gradient_norms_figure", "spectral_sweep_figure", "clipping_figure",
           "layer_norms_figure", "learning_curves_figure", "FLOAT32_TINY"]

FLOAT32_TINY = float(np.finfo(np.float32).tiny)   # 1.2e-38: float32's smallest normal number

_STYLE = {  # stable colours per architecture across every figure
    "rnn_tanh": "tab:blue", "rnn_relu": "tab:orange", "rnn_linear": "tab:gray",
    "lstm_fb0": "tab:green", "lstm_fb1": "tab:olive", "gru": "tab:purple",
    "transformer_post_ln": "tab:red", "transformer_pre_ln": "tab:brown",
    "irnn": "tab:cyan", "lstm": "tab:green", "transformer": "tab:red",
}
_TAB10 = tuple(f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray",
                                     "olive", "cyan"))


def band(ax, x: np.ndarray, runs: np.ndarray, *, label: str, color: str | None = None,
         log: bool = True, linestyle: str = "-") -> None:
    """Draw the centre and the min-max spread of ``runs`` (R, X) over x (X,).

    With ``log=True`` the centre is the geometric mean (the mean on a log axis) and
    non-positive values (float32 underflow) are left out of it.
    """
    runs = np.asarray(runs, dtype=np.float64)
    if runs.ndim == 1:
        runs = runs[None]
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(runs > 0, np.log(np.where(runs > 0, runs, 1.0)), np.nan)
        valid = np.isfinite(logs).any(axis=0)
        centre = np.full(runs.shape[1], np.nan)
        centre[valid] = np.exp(np.nanmean(logs[:, valid], axis=0))
        lo = np.where(runs > 0, runs, np.nan)
        low = np.full(runs.shape[1], np.nan)
        high = np.full(runs.shape[1], np.nan)
        low[valid] = np.nanmin(lo[:, valid], axis=0)
        high[valid] = np.nanmax(lo[:, valid], axis=0)
    else:
        centre, low, high = runs.mean(axis=0), runs.min(axis=0), runs.max(axis=0)
    (line,) = ax.plot(x, centre, label=label, color=color, linestyle=linestyle, linewidth=1.6)
    if runs.shape[0] > 1:
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18, linewidth=0)


def gradient_norms_figure(curves: Mapping[str, Mapping[str, np.ndarray]], distance: np.ndarray, *,
                          labels: Mapping[str, str], phases: Sequence[str] = ("init", "trained"),
                          phase_titles: Mapping[str, str] | None = None, title: str = "",
                          ylabel: str = r"$\|\partial L/\partial h_t\|$") -> Figure:
    """The headline: per-step gradient norm against distance T - t, one panel per phase.

    Args:
      curves: ``curves[phase][arch]`` is (seeds, T) with column d the norm at distance d.
      distance: (T,) distances 0 .. T-1.
      labels: legend label per architecture.
      phases: panel order.
      phase_titles: panel titles.
      title: figure title.
      ylabel: y-axis label.
    """
    fig = Figure(figsize=(6.0 * len(phases), 4.6), layout="constrained")
    axes = fig.subplots(1, len(phases), sharey=True, squeeze=False)[0]
    for ax, phase in zip(axes, phases):
        for arch, runs in curves[phase].items():
            style = "--" if arch.startswith("transformer") else "-"
            band(ax, distance, runs, label=labels.get(arch, arch), color=_STYLE.get(arch), linestyle=style)
        ax.set_yscale("log")
        ax.axhline(FLOAT32_TINY, color="k", linewidth=0.6, linestyle=":")
        ax.set_xlabel("distance T - t (steps between the state and the loss)")
        ax.set_title((phase_titles or {}).get(phase, phase))
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def spectral_sweep_figure(sigma: np.ndarray, norms: Mapping[str, np.ndarray], analytic: np.ndarray, *,
                          length: int, inverse_gamma: Mapping[str, float]) -> Figure:
    """||dL/dh_0|| against the recurrent weight's largest singular value.

    Args:
      sigma: (S,) largest singular values.
      norms: per activation (seeds, S) measured norms.
      analytic: (S,) the linear RNN's exact value sigma^T ||v||.
      length: T.
      inverse_gamma: activation -> 1/gamma (Pascanu et al. 2013: with ||diag f'|| <= gamma,
        sigma_max < 1/gamma is sufficient for vanishing, > 1/gamma necessary for exploding).
    """
    fig = Figure(figsize=(6.6, 4.6), layout="constrained")
    ax = fig.subplots()
    for act, runs in norms.items():
        band(ax, sigma, runs, label=f"{act} RNN", color=_STYLE.get(f"rnn_{act}"))
    ax.plot(sigma, analytic, color="k", linestyle="--", linewidth=1.0,
            label=rf"analytic, linear: $\sigma^{{{length}}}\|v\|$ (bound for tanh/ReLU)")
    drawn = set()
    for act, inv in inverse_gamma.items():
        if inv in drawn:
            continue
        drawn.add(inv)
        acts = ", ".join(a for a, v in inverse_gamma.items() if v == inv)
        ax.axvline(inv, color="tab:red", linewidth=1.0, linestyle=":")
        ax.text(inv, 0.55, rf" $1/\gamma$ = {inv:g} ({acts})", transform=ax.get_xaxis_transform(),
                color="tab:red", fontsize=8, rotation=90, va="bottom", ha="right")
    ax.axvspan(sigma.min(), min(inverse_gamma.values()), color="tab:blue", alpha=0.05)
    ax.text(0.02, 0.97, "$\\sigma_{max} < 1/\\gamma$: vanishing guaranteed\n"
            "$\\sigma_{max} > 1/\\gamma$: necessary for exploding", transform=ax.transAxes, fontsize=8, va="top")
    ax.set_yscale("log")
    ax.set_xlabel(r"largest singular value $\sigma_{max}$ of $W_{hh}$")
    ax.set_ylabel(rf"$\|\partial L/\partial h_0\|$, T = {length}")
    ax.set_title("Vanishing/exploding phase transition (Pascanu et al. 2013)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def clipping_figure(steps: np.ndarray, grad_norm: Mapping[str, np.ndarray], loss: Mapping[str, np.ndarray],
                    *, clip_norm: float, baseline: float | None = None) -> Figure:
    """Gradient norm (log) and loss over training, one line (band over seeds) per run.

    Args:
      steps: (N,) step numbers.
      grad_norm: run name -> (seeds, N) global gradient norm before clipping.
      loss: run name -> (seeds, N) training loss.
      clip_norm: the clipping threshold (drawn as a line).
      baseline: optional chance-level loss (drawn as a line).
    """
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    ax_g, ax_l = fig.subplots(1, 2)
    colors = {"no clipping": "tab:red", "clipped": "tab:blue"}
    for name, runs in grad_norm.items():
        band(ax_g, steps, runs, label=name, color=colors.get(name))
    ax_g.axhline(clip_norm, color="k", linestyle=":", linewidth=1.0, label=f"clip threshold {clip_norm:g}")
    ax_g.set_yscale("log")
    ax_g.set_xlabel("training step")
    ax_g.set_ylabel("global gradient norm (before clipping)")
    ax_g.set_title("Gradient norm")
    ax_g.legend(fontsize=8)
    for name, runs in loss.items():
        band(ax_l, steps, runs, label=name, color=colors.get(name))
    if baseline is not None:
        ax_l.axhline(baseline, color="k", linestyle="--", linewidth=1.0, label=f"chance {baseline:.3f}")
    ax_l.set_yscale("log")
    ax_l.set_xlabel("training step")
    ax_l.set_ylabel("training loss")
    ax_l.set_title("Loss")
    ax_l.legend(fontsize=8)
    for ax in (ax_g, ax_l):
        ax.grid(True, alpha=0.3)
    return fig


def layer_norms_figure(layers: np.ndarray, norms: Mapping[str, Mapping[str, np.ndarray]], *,
                       groups: Sequence[str], title: str = "") -> Figure:
    """Per-layer gradient norms at initialisation, one panel per parameter group.

    Args:
      layers: (L,) layer indices (1-based).
      norms: ``norms[group][variant]`` is (seeds, L).
      groups: panel order (e.g. ``("ff", "self_attn", "all")``).
      title: figure title.
    """
    fig = Figure(figsize=(4.4 * len(groups), 4.2), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    colors = {"post_ln": "tab:red", "pre_ln": "tab:brown"}
    names = {"post_ln": "Post-LN", "pre_ln": "Pre-LN"}
    for ax, group in zip(axes, groups):
        for variant, runs in norms[group].items():
            band(ax, layers, runs, label=names.get(variant, variant), color=colors.get(variant))
            ax.plot(layers, np.exp(np.mean(np.log(np.asarray(runs, np.float64)), axis=0)), "o",
                    color=colors.get(variant), markersize=4)
        ax.set_yscale("log")
        ax.set_xticks(layers)
        ax.set_xlabel("layer")
        ax.set_title(f"{group} parameters")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("gradient norm at init")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def learning_curves_figure(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], *,
                           ylabel: str | Mapping[str, str], log: bool | Mapping[str, bool] = False,
                           baseline: Mapping[str, float] | None = None, baseline_label: str = "chance",
                           xlabel: str = "step", title: str = "") -> Figure:
    """A metric against the training step: one panel per task, one line per model.

    Used for every learning curve (the long-range tasks, the character LMs, the copy
    task). A model keeps its colour in every panel, and one legend lists them all.

    Args:
      panels: panel title -> line label -> (steps (N,), values (N,)).
      ylabel: the y-axis label, one for all panels or one per panel title.
      log: a log y-axis, for all panels or per panel title.
      baseline: panel title -> a reference level (chance, unigram), drawn dashed.
      baseline_label: the legend label of the reference level.
      xlabel: the x-axis label.
      title: figure title.
    """
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    free = iter(c for c in _TAB10 if c not in {_STYLE.get(label) for label in labels})
    colors = {label: _STYLE.get(label) or next(free, None) for label in labels}
    fig = Figure(figsize=(4.4 * len(panels) + (1.2 if len(panels) > 1 else 0.6), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = {}
    for ax, (name, lines) in zip(axes, panels.items()):
        for label, (steps, values) in lines.items():
            (handles[label],) = ax.plot(steps, values, marker="o", markersize=3, label=label, color=colors[label])
        if baseline and name in baseline:
            ax.axhline(baseline[name], color="k", linestyle="--", linewidth=1.0, label=baseline_label)
        if log if isinstance(log, bool) else log.get(name, False):
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if isinstance(ylabel, str) else ylabel.get(name, ""))
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3)
    if len(panels) == 1:
        axes[0].legend(fontsize=8)
    else:   # every model once, in one legend beside the panels
        if baseline:
            handles[baseline_label] = Line2D([], [], color="k", linestyle="--", linewidth=1.0)
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
