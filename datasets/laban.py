"""Laban movement features from joint positions, for the personality variant of MS-G3D.

The variant (DYAD @ ICCV 2021) feeds 3 xyz + 12 Laban channels per joint; its description
names the four groups (velocity: first difference of position; flow: second difference of
bone-direction angles; space and weight: bone angles) but no formula, so this module defines
them, per frame t, joint v and person, from positions x (3, T, V, ...):

- bone b[v] = x[v] - x[parent(v)] (the graph's bone pairs; the root's bone is 0);
- bone angles a[v] = arccos(b[v] / |b[v]|), the angle (radians, [0, pi]) between the bone
  and each of the x, y, z axes (0 for a zero-length bone);
- velocity (ch 0-2)  = x[t] - x[t-1]                      (0 at t = 0);
- flow     (ch 3-5)  = a[t] - 2 a[t-1] + a[t-2]           (0 at t < 2), angular acceleration;
- space    (ch 6-8)  = a[t], where the body part points;
- weight   (ch 9-11) = a[t] - a[t-1]                      (0 at t = 0), angular velocity,
  the effort/energy of the movement.

`authors_laban_features` is instead what the authors' code computes (Rgtemze/PersonalityRecognition,
data_gen/preprocess_personality.py, stage `laban`), for SMPL-24 joints, where it differs from the
description: its velocity differences neighbouring joint indices, not frames; its flow takes the frames
before the first as 0; its weight repeats space; its bones run from the spine up to joint 9.

Plain numpy on float arrays; any trailing axes after V (e.g. persons M) are carried along.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

NUM_LABAN_CHANNELS = 12
GROUPS = {"velocity": slice(0, 3), "flow": slice(3, 6), "space": slice(6, 9), "weight": slice(9, 12)}


def _check(x: np.ndarray) -> None:
    if x.ndim < 3 or x.shape[0] != 3:
        raise ValueError(f"Laban features need xyz positions (3, T, V, ...), got shape {x.shape}")


def bone_vectors(x: np.ndarray, pairs: Sequence[Tuple[int, int]]) -> np.ndarray:
    """bone[:, :, v1] = x[:, :, v1] - x[:, :, v2] for each (v1, v2) pair; joints without a pair stay 0."""
    out = np.zeros_like(x)
    if len(pairs):
        v1, v2 = (np.asarray(p, dtype=np.int64) for p in zip(*pairs))
        out[:, :, v1] = x[:, :, v1] - x[:, :, v2]
    return out


def bone_angles(
    x: np.ndarray, pairs: Sequence[Tuple[int, int]], eps: float = 1e-8, zero_bone_cosine: float = 1.0
) -> np.ndarray:
    """(3, T, V, ...) angles in radians between each bone and the x, y, z axes; where the bone is no longer
    than `eps` (the root's), arccos(`zero_bone_cosine`): 0 by default."""
    b = bone_vectors(x, pairs)
    norm = np.sqrt((b * b).sum(axis=0, keepdims=True))
    has_length = norm > eps
    cosines = np.where(has_length, b / np.where(has_length, norm, 1.0), zero_bone_cosine)
    return np.arccos(np.clip(cosines, -1.0, 1.0)).astype(x.dtype, copy=False)


def first_difference(a: np.ndarray) -> np.ndarray:
    """a[:, t] - a[:, t-1] along axis 1 (time), 0 at t = 0; same shape."""
    out = np.zeros_like(a)
    out[:, 1:] = a[:, 1:] - a[:, :-1]
    return out


def second_difference(a: np.ndarray) -> np.ndarray:
    """a[:, t] - 2 a[:, t-1] + a[:, t-2] along axis 1, 0 at t < 2; same shape."""
    out = np.zeros_like(a)
    out[:, 2:] = a[:, 2:] - 2 * a[:, 1:-1] + a[:, :-2]
    return out


def laban_features(x: np.ndarray, pairs: Sequence[Tuple[int, int]]) -> np.ndarray:
    """(3, T, V, ...) positions -> (12, T, V, ...) Laban features: velocity, flow, space,
    weight, 3 channels each (see the module docstring), dtype of `x` (float)."""
    _check(x)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    angles = bone_angles(x, pairs)
    return np.concatenate([first_difference(x), second_difference(angles), angles, first_difference(angles)])


# The authors' bone pairs (v1, v2): SMPL's tree re-rooted at spine3 (joint 9), so the spine chain runs
# 0 -> 3 -> 6 -> 9 (SMPL's parents run down to the pelvis); every other pair is SMPL's (child, parent).
AUTHORS_SMPL_PAIRS: Tuple[Tuple[int, int], ...] = (
    (0, 3),
    (1, 0),
    (2, 0),
    (3, 6),
    (4, 1),
    (5, 2),
    (6, 9),
    (7, 4),
    (8, 5),
    (9, 9),
    (10, 7),
    (11, 8),
    (12, 9),
    (13, 9),
    (14, 9),
    (15, 12),
    (16, 13),
    (17, 14),
    (18, 16),
    (19, 17),
    (20, 18),
    (21, 19),
    (22, 20),
    (23, 21),
)


def authors_laban_features(x: np.ndarray) -> np.ndarray:
    """(3, T, 24, ...) SMPL positions -> (12, T, 24, ...) Laban features as the authors' code computes them:

    - velocity (ch 0-2) = x[v] - x[v-1] over the joint index (x[0] for joint 0): their `np.diff` runs along
      the joint axis of a (frames, joints, xyz) array;
    - flow (ch 3-5) = a[t] - 2 a[t-1] + a[t-2] with a = 0 before the first frame (a[0], a[1] - 2 a[0] first);
    - space (ch 6-8) and weight (ch 9-11) = a, the bone angles of `AUTHORS_SMPL_PAIRS`; a zero-length bone
      (the root's) has angles pi/2, the arccos of its zero dot products. Where their code divides 0 by 0
      (a zero-length bone between two joints, e.g. an all-zero frame) and gets NaN, this gives pi/2 too.
    """
    _check(x)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    if x.shape[2] != len(AUTHORS_SMPL_PAIRS):
        raise ValueError(f"the authors' Laban features are for SMPL-24 joints, got V={x.shape[2]} (shape {x.shape})")
    velocity = x.copy()
    velocity[:, :, 1:] -= x[:, :, :-1]
    angles = bone_angles(x, AUTHORS_SMPL_PAIRS, eps=0.0, zero_bone_cosine=0.0)  # their zero dot products
    padded = np.concatenate([np.zeros_like(angles[:, :2]), angles], axis=1)
    flow = padded[:, 2:] - 2 * padded[:, 1:-1] + padded[:, :-2]
    return np.concatenate([velocity, flow, angles, angles])
