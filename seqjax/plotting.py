"""Matplotlib figures from saved results (never from live models).

Every function takes arrays read back from an experiment's saved files and returns
a :class:`matplotlib.figure.Figure`. Figures are built with the object API
(``Figure()``, no ``pyplot``), so no global backend state is touched and they render
with Agg; save them with :func:`seqjax.io.save_figure` (atomic).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = ["band", "gradient_norms_figure", "spectral_sweep_figure", "clipping_figure",
           "layer_norms_figure", "learning_curves_figure", "accuracy_figure", "AttentionMap",
           "attention_maps_figure", "FLOAT32_TINY"]

FLOAT32_TINY = float(np.finfo(np.float32).tiny)   # 1.2e-38: float32's smallest normal number

_STYLE = {  # stable colours per architecture across every figure
    "rnn_tanh": "tab:blue", "rnn_relu": "tab:orange", "rnn_linear": "tab:gray",
    "lstm_fb0": "tab:green", "lstm_fb1": "tab:olive", "gru": "tab:purple",
    "transformer_post_ln": "tab:red", "transformer_pre_ln": "tab:brown",
    "irnn": "tab:cyan", "lstm": "tab:green", "transformer": "tab:red",
    "seq2seq, no attention": "tab:gray", "seq2seq + attention": "tab:blue", "Transformer": "tab:red",
}
_TAB10 = tuple(f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray",
                                     "olive", "cyan"))


def _colors(panels: Mapping[str, Mapping[str, object]]) -> dict[str, str | None]:
    """One colour per line label over all panels: its :data:`_STYLE` colour, else a free tab10 one."""
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    free = iter(c for c in _TAB10 if c not in {_STYLE.get(label) for label in labels})
    return {label: _STYLE.get(label) or next(free, None) for label in labels}


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
    colors = _colors(panels)
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


def accuracy_figure(panels: Mapping[str, Mapping[str, tuple[Sequence, np.ndarray]]], *,
                    xlabel: str | Mapping[str, str], ylabel: str = "exact match",
                    trained_up_to: Mapping[str, float] | None = None,
                    baseline: Mapping[str, float] | None = None, baseline_label: str = "chance",
                    title: str = "") -> Figure:
    """Accuracy against a property of the input, one panel per task, one line or bar set per model.

    A panel whose x values are numbers (source lengths) draws lines; one whose x values
    are strings (input formats, length buckets) draws grouped bars. A model keeps its
    colour in every panel, and one legend lists them all.

    Args:
      panels: panel title -> model label -> (x (N,), accuracy (N,) in [0, 1]).
      xlabel: the x-axis label, one for all panels or one per panel title.
      ylabel: the y-axis label.
      trained_up_to: panel title -> the largest x seen in training; x beyond it is
        shaded ("longer than any training input").
      baseline: panel title -> a reference level (chance), drawn dashed.
      baseline_label: the legend label of the reference level.
      title: figure title.
    """
    colors = _colors(panels)
    cats = {name: list(dict.fromkeys(x for xs, _ in lines.values() for x in xs if isinstance(x, str)))
            for name, lines in panels.items()}
    widths = [max(4.4, 0.6 * len(cats[name])) if cats[name] else 5.0 for name in panels]   # inches
    fig = Figure(figsize=(sum(widths) + 1.6, 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    handles = {}
    for ax, (name, lines) in zip(axes, panels.items()):
        if cats[name]:
            cats_ = cats[name]
            width = 0.8 / max(len(lines), 1)
            for i, (label, (xs, ys)) in enumerate(lines.items()):
                pos = np.array([cats_.index(x) for x in xs]) - 0.4 + (i + 0.5) * width
                handles[label] = ax.bar(pos, ys, width=width, label=label, color=colors[label])
            ax.set_xticks(range(len(cats_)), cats_, rotation=30, ha="right", fontsize=7)
            ax.set_axisbelow(True)                          # grid lines behind the bars
        else:
            for label, (xs, ys) in lines.items():
                (handles[label],) = ax.plot(xs, ys, marker="o", markersize=3, label=label, color=colors[label])
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if trained_up_to and name in trained_up_to:
                edge = trained_up_to[name] + 0.5
                ax.axvspan(edge, max(max(xs) for xs, _ in lines.values()) + 0.5, color="k", alpha=0.07,
                           linewidth=0)
                ax.text(edge, 0.97, " longer than any\n training source", fontsize=7, va="top",
                        transform=ax.get_xaxis_transform())
        if baseline and name in baseline:
            ax.axhline(baseline[name], color="k", linestyle="--", linewidth=1.0, label=baseline_label)
            handles[baseline_label] = Line2D([], [], color="k", linestyle="--", linewidth=1.0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(xlabel if isinstance(xlabel, str) else xlabel.get(name, ""))
        ax.set_ylabel(ylabel)
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


class AttentionMap(NamedTuple):
    """One heatmap: ``weights`` (S, T) (rows: output steps, columns: source positions),
    the tick labels of its columns and rows (empty: no ticks) and its title."""

    weights: np.ndarray
    x_labels: Sequence[str] = ()
    y_labels: Sequence[str] = ()
    title: str = ""


def attention_maps_figure(rows: Sequence[Sequence[AttentionMap]], *, xlabel: str = "source position",
                          ylabel: str = "output step", title: str = "", cell_size: float = 0.22) -> Figure:
    """A grid of attention heatmaps on one colour scale [0, 1] with one colour bar.

    Args:
      rows: the grid, row by row (rows may have different lengths).
      xlabel, ylabel: axis labels (drawn on the left column and the bottom row).
      title: figure title.
      cell_size: inches per heatmap cell (the panel size follows the largest map).
    """
    ncols = max(len(r) for r in rows)
    S = max(m.weights.shape[0] for r in rows for m in r)
    T = max(m.weights.shape[1] for r in rows for m in r)
    w, h = max(2.2, cell_size * T + 0.9), max(2.0, cell_size * S + 0.9)
    fig = Figure(figsize=(w * ncols + 0.8, h * len(rows) + (0.4 if title else 0.0)), layout="constrained")
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    image = None
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(row):
                ax.set_axis_off()
                continue
            m = row[j]
            image = ax.imshow(np.asarray(m.weights, np.float64), vmin=0.0, vmax=1.0, cmap="viridis",
                              aspect="auto", interpolation="nearest")
            for labels, set_ticks in ((m.x_labels, ax.set_xticks), (m.y_labels, ax.set_yticks)):
                if len(labels):
                    set_ticks(range(len(labels)), list(labels), fontsize=6)
                else:
                    set_ticks([])
            ax.set_title(m.title, fontsize=8)
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=8)
            if i == len(rows) - 1 or j >= len(rows[i + 1]):
                ax.set_xlabel(xlabel, fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------- seeds, bounds and depth

__all__ += ["learning_bands_figure", "spectral_panels_figure", "depth_sweep_figure"]
_STYLE.setdefault("orthogonal", "tab:pink")      # the orthogonal RNN (expRNN) in every figure
_STYLE.setdefault("rnn_sigmoid", "tab:purple")


def learning_bands_figure(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], *,
                          ylabel: str | Mapping[str, str], log: bool | Mapping[str, bool] = False,
                          baseline: Mapping[str, float] | None = None, baseline_label: str = "chance",
                          xlabel: str = "step", title: str = "") -> Figure:
    """Learning curves over several seeds: the mean (geometric on a log axis) and the min-max band.

    Args:
      panels: panel title -> line label -> (steps (N,), runs (seeds, N)).
      ylabel, log, baseline, baseline_label, xlabel, title: as :func:`learning_curves_figure`.
    """
    colors = _colors(panels)
    fig = Figure(figsize=(4.0 * len(panels) + (1.4 if len(panels) > 1 else 0.6), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = {}
    for ax, (name, lines) in zip(axes, panels.items()):
        is_log = log if isinstance(log, bool) else log.get(name, False)
        for label, (steps, runs) in lines.items():
            runs = np.asarray(runs, np.float64)
            band(ax, np.asarray(steps), runs, label=label, color=colors[label], log=is_log)
            color = ax.get_lines()[-1].get_color()
            centre = np.exp(np.mean(np.log(np.maximum(runs, 1e-300)), axis=0)) if is_log else runs.mean(axis=0)
            ax.plot(steps, centre, "o", markersize=3, color=color)       # a run stopped at its first evaluation
            handles[label] = Line2D([], [], color=color, linewidth=1.6, marker="o", markersize=3)
        if baseline and name in baseline:
            ax.axhline(baseline[name], color="k", linestyle="--", linewidth=1.0)
        if is_log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel if isinstance(ylabel, str) else ylabel.get(name, ""))
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3)
    if baseline:
        handles[baseline_label] = Line2D([], [], color="k", linestyle="--", linewidth=1.0)
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def spectral_panels_figure(panels: Sequence[Mapping], *, length: int) -> Figure:
    """||dL/dh_0|| against the largest singular value of W_hh, one panel per sweep, each with its bound.

    Args:
      panels: each a mapping with ``sigma`` (S,), ``norms`` (activation -> (seeds, S)),
        ``bound`` (S,) and ``bound_label``, ``inverse_gamma`` (the vertical line 1/gamma of
        Pascanu et al. 2013: sigma_max < 1/gamma is sufficient for vanishing) and ``title``.
      length: T.
    """
    fig = Figure(figsize=(5.6 * len(panels), 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels):
        sigma = np.asarray(p["sigma"])
        for act, runs in p["norms"].items():
            band(ax, sigma, runs, label=f"{act} RNN (measured)", color=_STYLE.get(f"rnn_{act}"))
        ax.plot(sigma, p["bound"], color="k", linestyle="--", linewidth=1.0, label=p["bound_label"])
        inv = p["inverse_gamma"]
        ax.axvline(inv, color="tab:red", linewidth=1.0, linestyle=":")
        ax.text(inv, 0.55, rf" $1/\gamma$ = {inv:g}", transform=ax.get_xaxis_transform(), color="tab:red",
                fontsize=8, rotation=90, va="bottom", ha="right")
        ax.axvspan(sigma.min(), min(inv, sigma.max()), color="tab:blue", alpha=0.05)
        ax.set_yscale("log")
        ax.set_xlabel(r"largest singular value $\sigma_{max}$ of $W_{hh}$")
        ax.set_title(p["title"], fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel(rf"$\|\partial L/\partial h_0\|$, T = {length}")
    fig.suptitle(r"Vanishing/exploding phase transition: left of $1/\gamma$ vanishing is guaranteed "
                 "(Pascanu et al. 2013)", fontsize=10)
    return fig


def depth_sweep_figure(depths: np.ndarray, norms: Mapping[str, np.ndarray], *, reference: np.ndarray,
                       reference_label: str, ylabel: str, title: str = "") -> Figure:
    """A gradient norm against the number of layers L (log-log), per variant, with a reference line.

    Args:
      depths: (K,) numbers of layers.
      norms: variant (``"post_ln"``, ``"pre_ln"``) -> (seeds, K).
      reference: (K,) the reference curve (e.g. c / sqrt(L)).
      reference_label: its legend label.
      ylabel: y-axis label.
      title: figure title.
    """
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.subplots()
    colors = {"post_ln": "tab:red", "pre_ln": "tab:brown"}
    names = {"post_ln": "Post-LN", "pre_ln": "Pre-LN"}
    for variant, runs in norms.items():
        band(ax, depths, runs, label=names.get(variant, variant), color=colors.get(variant))
    ax.plot(depths, reference, color="k", linestyle="--", linewidth=1.0, label=reference_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(depths, [str(int(d)) for d in depths])
    ax.minorticks_off()
    ax.set_xlabel("number of layers L")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def scaling_figure(series: Mapping[str, tuple[Sequence[int], Mapping[str, Sequence[float]]]], *,
                   crossovers: Mapping[str, int | None], labels: Mapping[str, str]) -> Figure:
    """Time and memory against sequence length, log-log, one line per model.

    Args:
      series: ``{model: (T values, {"seconds": [...], "temp_mib": [...]})}``.
      crossovers: ``{"seconds": T or None, "temp_mib": T or None}``, marked by a vertical line.
      labels: legend label per model.
    """
    fig = Figure(figsize=(9.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, ylabel in ((axes[0], "seconds", "forward + backward (s)"),
                            (axes[1], "temp_mib", "XLA temporary memory (MiB)")):
        for model, (Ts, values) in series.items():
            ax.plot(Ts, values[key], marker="o", label=labels.get(model, model))
        if crossovers.get(key) is not None:
            ax.axvline(crossovers[key], color="0.5", linestyle=":", label=f"crossover T={crossovers[key]}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


__all__ += ["scaling_figure"]
