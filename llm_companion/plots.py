"""The book's figures that draw tensors and training records: one place for the matplotlib code.

Each function returns a matplotlib Figure (closed in pyplot, so a notebook shows it once, as the cell's
value) and imports matplotlib only when called (it takes seconds to load). :func:`plot_attention` is
chapters 2 and 5's heat map of attention weights; :func:`plot_classification_history` and
:func:`plot_confusion_matrix` are chapter 6's. Two figures still live beside what they draw:
``plot_class_balance`` (:mod:`llm_companion.data.spam`, which needs its class names from the data layer, above
this utility module) and ``plot_losses`` (:mod:`llm_companion.training.loop`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def plot_attention(weights, labels: list[str], *, titles: list[str] | None = None, ncols: int | None = None,
                   annotate: bool | None = None, cmap: str = "viridis", label: str = "attention weight"):
    """Heatmaps of attention weights: one panel per (n_queries, n_keys) matrix in ``weights``.

    ``weights`` is a (n, n) tensor, an (H, n, n) stack (e.g. one head per panel) or a list of matrices;
    ``labels`` names the tokens. Cells show their values when the matrix is small (``annotate``).
    ``-inf`` entries (masked scores) are drawn blank. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    mats = [weights] if getattr(weights, "dim", lambda: 0)() == 2 else list(weights)
    mats = [torch.as_tensor(m).detach().float().cpu() for m in mats]
    n = len(mats)
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    size = 0.45 * len(labels) + 1.2
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.6, size * nrows), squeeze=False,
                             layout="constrained")
    annotate = len(labels) <= 8 if annotate is None else annotate
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        m = mats[i]
        finite = torch.where(torch.isfinite(m), m, torch.nan)  # masked (-inf) cells are left blank
        vmin, vmax = min(0.0, float(finite.nan_to_num(0).min())), max(1e-9, float(finite.nan_to_num(0).max()))
        im = ax.imshow(finite.numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(m.shape[1]), labels[-m.shape[1]:], rotation=60, ha="right")
        ax.set_yticks(range(m.shape[0]), labels[-m.shape[0]:])
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
        if titles:
            ax.set_title(titles[i])
        if annotate:
            for r in range(m.shape[0]):
                for c in range(m.shape[1]):
                    v = float(m[r, c])
                    light = math.isfinite(v) and v < vmin + 0.6 * (vmax - vmin)
                    ax.text(c, r, f"{v:.2f}" if math.isfinite(v) else "−∞", ha="center", va="center",
                            fontsize=7, color="white" if light else "black")
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    plt.close(fig)  # the caller displays it; don't let pyplot show it a second time
    return fig


def plot_confusion_matrix(cm: torch.Tensor, labels: Sequence[str], *, title: str = "Confusion matrix (test set)"):
    """Heat map of a confusion matrix with the counts written in each cell. Returns a Figure."""
    import matplotlib.pyplot as plt  # imported only to plot: it takes seconds to load

    cm = torch.as_tensor(cm)
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    im = ax.imshow(cm.numpy(), cmap="Blues", vmin=0)
    peak = float(cm.max()) if cm.numel() else 0.0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            value = int(cm[i, j])
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > peak / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_classification_history(history, *, title: str = "Fine-tuning the spam classifier"):
    """Loss (left) and accuracy (right) against epochs, with examples seen on a twin x-axis. Returns a Figure."""
    import matplotlib.pyplot as plt  # imported only to plot: it takes seconds to load

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    panels = [("loss (cross-entropy)", history.train_loss, history.val_loss),
              ("accuracy", history.metrics.get("train_accuracy", []), history.metrics.get("val_accuracy", []))]
    for ax, (name, train_values, val_values) in zip(axes, panels):
        ax.plot(history.epochs, train_values, marker="o", markersize=3, label=f"training {name.split()[0]}")
        ax.plot(history.epochs, val_values, marker="o", markersize=3, linestyle="-.",
                label=f"validation {name.split()[0]}")
        ax.set_xlabel("epochs")
        ax.set_ylabel(name)
        ax.legend(frameon=False)
        top = ax.twiny()  # the same curve against examples seen: an invisible plot sets the top axis
        top.plot(history.examples_seen, train_values, alpha=0)
        top.set_xlabel("examples seen")
    axes[1].set_ylim(0, 1.02)
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig
