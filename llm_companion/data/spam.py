"""The SMS Spam Collection: parse it exactly, balance the classes, split, and write the CSVs.

The UCI file holds one message per line, ``label<TAB>text``, with no header and no quoting. A naive
``pandas.read_csv(sep="\\t")`` treats ``"`` as a quote character and silently merges two pairs of lines
(5,572 rows instead of 5,574), so :func:`read_sms_collection` parses line by line and checks every line.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from llm_companion.atomic import atomic_file
from llm_companion.data.artifacts import fetch
from llm_companion.data.download import data_dir

LABELS: tuple[str, ...] = ("ham", "spam")     # class index = position in this tuple
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SEED = 123                                    # the reference book's seed for balancing and splitting


class SpamDataError(ValueError):
    """A line of the SMS collection that cannot be parsed."""


def splits_dir() -> Path:
    """Where the balanced ``train.csv``, ``validation.csv`` and ``test.csv`` live."""
    return data_dir() / "sms_spam_collection"


def read_sms_collection(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """All messages of the collection as a DataFrame with columns ``Label`` ("ham"/"spam") and ``Text``.

    ``path`` defaults to the verified artifact ``sms-spam``. A line without a tab, with an empty message
    or with an unknown label raises :class:`SpamDataError` naming the line number (1-based).
    """
    path = Path(path) if path is not None else fetch("sms-spam")
    labels, texts = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            label, tab, text = line.partition("\t")
            if not tab:
                raise SpamDataError(f"{path.name} line {lineno}: expected 'label<TAB>message', found no tab")
            if label not in LABELS:
                raise SpamDataError(
                    f"{path.name} line {lineno}: unknown label {label!r}; expected one of {', '.join(LABELS)}")
            if not text.strip():
                raise SpamDataError(f"{path.name} line {lineno}: empty message")
            labels.append(label)
            texts.append(text)
    return pd.DataFrame({"Label": labels, "Text": texts})


def balance(df: pd.DataFrame, *, seed: int = SEED) -> pd.DataFrame:
    """Undersample every class to the size of the smallest one (747 messages each for this corpus).

    Ham messages are sampled with ``seed``; the result keeps the original row order within each class.
    """
    n = int(df["Label"].value_counts().min())
    parts = [group if len(group) == n else group.sample(n, random_state=seed)
             for _, group in df.groupby("Label", sort=True)]
    return pd.concat(parts).sort_index().reset_index(drop=True)


def split(df: pd.DataFrame, fractions: tuple[float, float] = (0.7, 0.1), *, seed: int = SEED,
          ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Shuffle with ``seed`` and cut into train/validation/test (the rest after ``fractions``)."""
    train_frac, val_frac = fractions
    if not (0 < train_frac and 0 <= val_frac and train_frac + val_frac < 1):
        raise ValueError(f"fractions {fractions} must be positive and sum to less than 1")
    shuffled = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    train_end = int(len(shuffled) * train_frac)
    val_end = train_end + int(len(shuffled) * val_frac)
    return (shuffled.iloc[:train_end].reset_index(drop=True),
            shuffled.iloc[train_end:val_end].reset_index(drop=True),
            shuffled.iloc[val_end:].reset_index(drop=True))


def _write_csv_atomic(df: pd.DataFrame, dest: Path) -> None:
    with atomic_file(dest) as tmp:
        df.to_csv(tmp, index=False)


def prepare_splits(out_dir: str | os.PathLike | None = None, *, seed: int = SEED,
                   source: str | os.PathLike | None = None) -> dict[str, Path]:
    """Parse, balance and split the collection; write ``train.csv``, ``validation.csv``, ``test.csv``.

    The CSVs have columns ``Label`` (0 = ham, 1 = spam, as in the reference book) and ``Text``; each is
    written atomically. Returns ``{"train": path, "validation": path, "test": path}``.
    """
    out = Path(out_dir) if out_dir is not None else splits_dir()
    parts = split(balance(read_sms_collection(source), seed=seed), seed=seed)
    paths = {}
    for name, part in zip(SPLITS, parts):
        encoded = part.assign(Label=part["Label"].map(LABELS.index))
        paths[name] = out / f"{name}.csv"
        _write_csv_atomic(encoded, paths[name])
    return paths


def load_splits(out_dir: str | os.PathLike | None = None) -> dict[str, pd.DataFrame]:
    """The three CSV splits as DataFrames (``Label`` as 0/1), writing them first when any is missing."""
    out = Path(out_dir) if out_dir is not None else splits_dir()
    paths = {name: out / f"{name}.csv" for name in SPLITS}
    if not all(p.is_file() for p in paths.values()):
        paths = prepare_splits(out)
    return {name: pd.read_csv(p, keep_default_na=False) for name, p in paths.items()}


def plot_class_balance(raw: pd.DataFrame, balanced: pd.DataFrame | None = None):
    """Bar chart of messages per class, before (and after) balancing. Returns a Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    counts = [raw["Label"].value_counts().reindex(LABELS, fill_value=0)]
    names = ["full collection"]
    if balanced is not None:
        counts.append(balanced["Label"].value_counts().reindex(LABELS, fill_value=0))
        names.append("balanced")
    width = 0.8 / len(counts)
    for i, (c, name) in enumerate(zip(counts, names)):
        xs = [j + (i - (len(counts) - 1) / 2) * width for j in range(len(LABELS))]
        bars = ax.bar(xs, c.values, width=width, label=name)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_ylabel("messages")
    ax.set_title("SMS Spam Collection: messages per class")
    ax.margins(y=0.15)
    ax.legend(frameon=False)
    fig.tight_layout()
    plt.close(fig)
    return fig
