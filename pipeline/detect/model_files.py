"""The files of a saved detector, shared by the table and image detectors.

A model folder holds a JSON file of metadata (its name marks the kind), the calibration scores
(``calibration_scores.npy``) and one ``weights.pt``, tensors only, so that it loads with
``torch.load(weights_only=True)``: each ensemble member's state dict (``member{i}``), its reference codes for
the density terms (``latent{i}``), for a cross-conformal model its sorted out-of-fold scores (``fold{i}``), and
with per-segment thresholds each segment's sorted calibration scores (``segment{j}``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.calibrate.segments import Segments
from vae.fit_plan import TrainHistory
from vae.trainer import resolve_device

WEIGHTS_FILE = "weights.pt"
CAL_FILE = "calibration_scores.npy"


def write_model_files(d: Path, meta_file: str, meta: dict[str, Any], det: Any) -> Path:
    """Write ``meta``, the calibration scores and the members' weights and latent codes of ``det`` into ``d``."""
    (d / meta_file).write_text(json.dumps(meta, indent=1))
    np.save(d / CAL_FILE, det.calibration_scores_)
    state: dict[str, Any] = {f"member{i}": m.state_dict() for i, m in enumerate(det.models_)}
    state |= {f"latent{i}": torch.from_numpy(c) for i, c in enumerate(det.latent_codes_)}
    state |= {f"fold{i}": torch.from_numpy(f) for i, f in enumerate(det.fold_scores_)}
    if det.segments_ is not None:
        state |= {f"segment{j}": torch.from_numpy(c) for j, c in enumerate(det.segments_.calibration)}
    torch.save(state, d / WEIGHTS_FILE)
    return d


def restore_members(
    det: Any, d: Path, meta: dict[str, Any], make_model: Callable[[], torch.nn.Module], device: str
) -> None:
    """Set the learned state both detectors share: members, latent codes, score scale, threshold, histories.

    Raises:
        pickle.UnpicklingError: the weights file holds objects other than tensors (refused, never run).
    """
    state = torch.load(d / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    det.models_ = []
    for i in range(det.n_models):
        model = make_model()
        model.load_state_dict(state[f"member{i}"])
        det.models_.append(model.to(resolve_device(device)).eval())
    det.latent_codes_ = [state[f"latent{i}"].numpy() for i in range(det.n_models)] if det.latent_k else []
    scale = meta.get("score_scale")
    det.score_scale_ = None if scale is None else np.asarray(scale, dtype=np.float64)
    det._knn = det._centre = None
    det.threshold_ = float(meta["threshold"])
    det.calibration_rule_ = meta["calibration_rule"]
    det.fold_scores_ = (
        [state[f"fold{i}"].numpy() for i in range(det.n_models)] if det.calibration_rule_ == "cross" else []
    )
    det.calibration_scores_ = np.load(d / CAL_FILE, allow_pickle=False)
    seg = meta["segments"]
    det.segments_ = (
        None
        if seg is None
        else Segments.from_dict(seg, [state[f"segment{j}"].numpy() for j in range(len(seg["values"]))])
    )
    det.n_rows_ = meta["n_rows"]
    det.histories_ = [TrainHistory(**h) for h in meta["histories"]]
    det.history_ = det.histories_[0]
