"""Seeded train / validation / calibration split of the training rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import InputError

MIN_ROWS = 10


@dataclass(frozen=True)
class Split:
    """Row positions of each part; disjoint, together all rows."""

    train: np.ndarray
    val: np.ndarray
    cal: np.ndarray


def split_rows(n: int, val_fraction: float, cal_fraction: float, seed: int) -> Split:
    """Shuffle ``n`` row positions with ``seed`` and cut them into train / val / cal.

    The calibration rows are never used to fit anything: they only set the threshold.
    """
    for name, f in (("val_fraction", val_fraction), ("cal_fraction", cal_fraction)):
        if not 0.0 < f < 1.0:
            raise InputError(f"{name} must be in (0, 1), got {f!r}")
    if val_fraction + cal_fraction >= 0.9:
        raise InputError(
            f"val_fraction + cal_fraction must leave at least 10% for training, got {val_fraction + cal_fraction}"
        )
    if n < MIN_ROWS:
        raise InputError(f"training needs at least {MIN_ROWS} rows, got {n}")
    n_val = max(round(n * val_fraction), 1)
    n_cal = max(round(n * cal_fraction), 1)
    order = np.random.default_rng(seed).permutation(n)
    return Split(
        train=np.sort(order[n_val + n_cal :]), val=np.sort(order[:n_val]), cal=np.sort(order[n_val : n_val + n_cal])
    )


def member_folds(split: Split, n_members: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, val) row positions of each member of an ensemble: a cross-fitted ensemble.

    Member 0 early-stops on ``split.val`` and trains on ``split.train``. Member i > 0 early-stops on
    the i-th block of ``len(split.val)`` rows of a seeded shuffle of ``split.train`` (the blocks are
    disjoint; members cycle through them when there are fewer blocks than members) and trains on
    every other non-calibration row. Every member trains on ``len(split.train)`` rows and none sees
    a calibration row; together they see all the non-calibration rows, and each member's validation
    rows are ones it was not trained on.
    """
    if n_members < 1:
        raise InputError(f"n_members must be >= 1, got {n_members!r}")
    n_val = len(split.val)
    order = np.random.default_rng([seed, 1]).permutation(split.train)
    blocks = [split.val] + [np.sort(order[j * n_val : (j + 1) * n_val]) for j in range(len(order) // n_val)]
    rest = np.sort(np.concatenate([split.train, split.val]))
    return [
        (np.setdiff1d(rest, blocks[i % len(blocks)], assume_unique=True), blocks[i % len(blocks)])
        for i in range(n_members)
    ]


def cross_folds(n: int, n_members: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, validation, held-out) row positions of each member for cross-conformal calibration.

    A seeded shuffle of the ``n`` rows is cut into ``n_members`` folds of near-equal size. Member k never sees
    fold k (its held-out rows, whose out-of-fold scores calibrate), early-stops on fold k + 1 (cyclically) and
    trains on the others; so every row is held out by exactly one member, no row is set aside, and a held-out
    row has not even chosen its member's stopping epoch.

    Raises:
        InputError: fewer than 3 members, or fewer rows than 2 per fold.
    """
    if n_members < 3:
        raise InputError(
            f"cross-conformal calibration needs n_models >= 3 (a held-out and a validation fold per member), "
            f"got {n_members!r}"
        )
    if n < 2 * n_members:
        raise InputError(
            f"cross-conformal calibration over {n_members} folds needs at least {2 * n_members} rows, got {n}"
        )
    order = np.random.default_rng([seed, 2]).permutation(n)
    folds = [np.sort(f) for f in np.array_split(order, n_members)]
    out = []
    for k in range(n_members):
        v = (k + 1) % n_members
        train = np.sort(np.concatenate([f for j, f in enumerate(folds) if j not in (k, v)]))
        out.append((train, folds[v], folds[k]))
    return out
