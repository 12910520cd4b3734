"""Plots with τ and the acceptable band drawn, saved as PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from unmemorize.thresholds import Band  # noqa: E402


def draw_band(ax, tau: float | None, band: Band, vertical: bool = True) -> None:
    line = ax.axvline if vertical else ax.axhline
    span = ax.axvspan if vertical else ax.axhspan
    span(band.lo, band.hi, color="tab:green", alpha=0.08, label=f"acceptable band [{band.lo:.2f}, {band.hi:.2f}]")
    line(band.lo, color="tab:blue", ls=":", lw=1)
    line(band.hi, color="tab:red", ls=":", lw=1)
    if tau is not None:
        line(tau, color="black", ls="--", lw=1.2, label=f"τ = {tau:.3f} (unseen text)")


def histogram(path: str | Path, groups: dict[str, np.ndarray], tau: float | None, band: Band,
              xlabel: str = "memorization accuracy g(x)", title: str = "") -> Path:
    """Overlaid histograms of g over [0, 1], one per named group, with τ and the band."""
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    bins = np.linspace(0, 1, 41)
    for name, values in groups.items():
        v = np.asarray(values, dtype=float)
        v = v[~np.isnan(v)]
        ax.hist(v, bins=bins, alpha=0.55, label=f"{name} (n={len(v)})")
    draw_band(ax, tau, band)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("sequences")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def by_category(path: str | Path, categories: list, series: dict[str, list[float]], tau: float | None,
                band: Band, xlabel: str, ylabel: str = "mean over sequences", title: str = "") -> Path:
    """Lines of one or more metrics against an ordered category (e.g. exposure count), with τ and band."""
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    xs = np.arange(len(categories))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    draw_band(ax, tau, band, vertical=False)
    ax.set_xticks(xs, [str(c) for c in categories])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def oracle_scatter(path: str | Path, ma_oracle: np.ndarray, ma_before: np.ndarray, ma_after: np.ndarray, band: Band,
                   tolerance: float = 0.05, title: str = "") -> Path:
    """Each forget sequence's MA against the oracle's (the model that never saw it): before unlearning
    (hollow) and after (filled); on the diagonal ± the tolerance a sequence is where it should be."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    xs = np.linspace(0, 1, 2)
    ax.fill_between(xs, xs - tolerance, xs + tolerance, color="tab:green", alpha=0.12,
                    label=f"at the oracle's level (± {tolerance:g})")
    ax.plot(xs, xs, color="black", lw=0.8)
    ax.axhspan(band.hi, 1.02, color="tab:red", alpha=0.05)
    ax.scatter(ma_oracle, ma_before, s=22, facecolors="none", edgecolors="grey", label="before unlearning")
    ax.scatter(ma_oracle, ma_after, s=22, color="tab:blue", label="after unlearning")
    for x, b, a in zip(ma_oracle, ma_before, ma_after):
        ax.plot([x, x], [b, a], color="grey", lw=0.5, alpha=0.5)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="MA of the retrain oracle (never saw the sequence)",
           ylabel="MA of the model", title=title or "Each forget sequence against the oracle")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
