"""Skeleton graphs as plain data, and the adjacency helpers of the graph-convolution models.

A graph is a `SkeletonGraph`: `num_nodes`, `edges` as 0-based (child, parent) pairs of a tree
that points towards one root, and `center`, the body-centre joint. The model only sees the
symmetric binary adjacency, so the edge orientation matters for bone data alone
(bone[child] = joint[child] - joint[parent], the root's bone is zero).

Multi-scale ("disentangled") adjacency, as in MS-G3D (Liu et al., CVPR 2020):

    A_0 = I,   A_k = 1[(A + I)^k > 0] - 1[(A + I)^(k-1) > 0] + I   (k >= 1),

i.e. the nodes exactly k hops away, plus self-loops; each scale is then normalised
D^-1/2 A_k D^-1/2 with D the row sums.

Only numpy: the graph layer has no learnable state and is shared with the data layer.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

Edge = Tuple[int, int]


@dataclass(frozen=True)
class SkeletonGraph:
    """A skeleton: joints, the tree's (child, parent) edges, and the body-centre joint.

    Attributes:
        name: registry name.
        num_nodes: number of joints V.
        edges: 0-based (child, parent) pairs; together they form a tree (V - 1 edges).
        center: body-centre joint, used to centre coordinates.
        fully_connected: the model's adjacency links every joint with every other; the tree then
            only defines the bones.
    """

    name: str
    num_nodes: int
    edges: Tuple[Edge, ...]
    center: int
    fully_connected: bool = False

    @property
    def root(self) -> int:
        """The one joint that has no parent (its bone is zero)."""
        children = {c for c, _ in self.edges}
        roots = [v for v in range(self.num_nodes) if v not in children]
        if len(roots) != 1:
            raise ValueError(f"graph {self.name!r} has roots {roots}; expected exactly one")
        return roots[0]

    @property
    def A(self) -> np.ndarray:
        """Symmetric binary adjacency (V, V), no self-loops."""
        if self.fully_connected:
            return (1.0 - np.eye(self.num_nodes)).astype(np.float32)
        return adjacency(self.edges, self.num_nodes)


def _from_one_based(pairs: Sequence[Edge]) -> Tuple[Edge, ...]:
    return tuple((i - 1, j - 1) for i, j in pairs)


# NTU RGB+D, 25 Kinect v2 joints; inward edges as listed by the dataset (1-based), centre = 21
# (spine). 1 base of spine, 2 mid spine, 3 neck, 4 head, 5-8 left arm, 9-12 right arm,
# 13-16 left leg, 17-20 right leg, 21 spine shoulder, 22-23 left hand tip/thumb, 24-25 right.
NTU_RGB_D = SkeletonGraph(
    name="ntu-rgb+d",
    num_nodes=25,
    edges=_from_one_based(
        [
            (1, 2),
            (2, 21),
            (3, 21),
            (4, 3),
            (5, 21),
            (6, 5),
            (7, 6),
            (8, 7),
            (9, 21),
            (10, 9),
            (11, 10),
            (12, 11),
            (13, 1),
            (14, 13),
            (15, 14),
            (16, 15),
            (17, 1),
            (18, 17),
            (19, 18),
            (20, 19),
            (22, 23),
            (23, 8),
            (24, 25),
            (25, 12),
        ]
    ),
    center=20,
)

# Kinetics-Skeleton (OpenPose COCO-18): 0 nose, 1 neck, 2-4 right arm, 5-7 left arm, 8-10 right
# leg, 11-13 left leg, 14/15 right/left eye, 16/17 right/left ear. The tree is rooted at the nose
# so that bone data matches MS-G3D's Kinetics bones (nose bone = 0); the centre is the neck.
KINETICS = SkeletonGraph(
    name="kinetics",
    num_nodes=18,
    edges=(
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 3),
        (5, 1),
        (6, 5),
        (7, 6),
        (8, 2),
        (9, 8),
        (10, 9),
        (11, 5),
        (12, 11),
        (13, 12),
        (14, 0),
        (15, 0),
        (16, 14),
        (17, 15),
    ),
    center=1,
)

# SMPL kinematic tree, 24 joints: 0 pelvis, 1/2 left/right hip, 3 spine1, 4/5 knees, 6 spine2,
# 7/8 ankles, 9 spine3, 10/11 feet, 12 neck, 13/14 collars, 15 head, 16/17 shoulders,
# 18/19 elbows, 20/21 wrists, 22/23 hands (left before right). Root and centre: pelvis.
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
SMPL_24 = SkeletonGraph(
    name="smpl-24",
    num_nodes=24,
    edges=tuple((v, p) for v, p in enumerate(SMPL_PARENTS) if p >= 0),
    center=0,
)

# The graph the personality authors' code (Rgtemze/PersonalityRecognition, graph/ntu_rgb_d.py) computes
# with: its SMPL edges are lists, and `A[edge] = 1` with a list sets two whole rows, so every joint is
# linked to every other. Their published results, and models trained with their code, use it.
SMPL_24_DENSE = SkeletonGraph(name="smpl-24-dense", num_nodes=24, edges=SMPL_24.edges, center=0, fully_connected=True)

_GRAPHS: Dict[str, SkeletonGraph] = {g.name: g for g in (NTU_RGB_D, KINETICS, SMPL_24, SMPL_24_DENSE)}


def list_graphs() -> List[str]:
    """Names of the known skeleton graphs, sorted."""
    return sorted(_GRAPHS)


def get_graph(name: str | SkeletonGraph) -> SkeletonGraph:
    """The graph called `name` (a graph passes through); an unknown name lists the valid ones."""
    if isinstance(name, SkeletonGraph):
        return name
    if name not in _GRAPHS:
        close = difflib.get_close_matches(str(name), _GRAPHS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown skeleton graph {name!r}{hint} Available: {', '.join(list_graphs())}")
    return _GRAPHS[name]


def bone_pairs(graph: SkeletonGraph | str) -> List[Edge]:
    """One (v1, v2) pair per joint, sorted by v1, for bone[v1] = joint[v1] - joint[v2].

    v2 is the parent of v1; the root is paired with itself, so its bone is zero.
    """
    g = get_graph(graph)
    parent = dict(g.edges)
    return [(v, parent.get(v, v)) for v in range(g.num_nodes)]


def adjacency(edges: Sequence[Edge], num_nodes: int) -> np.ndarray:
    """Symmetric binary adjacency (V, V) float32 of undirected `edges`, no self-loops."""
    A = np.zeros((num_nodes, num_nodes), dtype=np.float32)
    for i, j in edges:
        if not (0 <= i < num_nodes and 0 <= j < num_nodes):
            raise ValueError(f"edge ({i}, {j}) is out of range for {num_nodes} nodes")
        if i != j:
            A[i, j] = A[j, i] = 1.0
    return A


def k_adjacency(A: np.ndarray, k: int, with_self: bool = True) -> np.ndarray:
    """Binary adjacency of the nodes exactly `k` hops apart (plus I if `with_self`); k=0 -> I."""
    A = np.asarray(A, dtype=np.float64)
    eye = np.eye(len(A))
    if k == 0:
        return eye.astype(np.float32)
    reach = lambda n: (np.linalg.matrix_power(A + eye, n) > 0).astype(np.float64)  # noqa: E731
    Ak = reach(k) - reach(k - 1)
    if with_self:
        Ak = Ak + eye
    return Ak.astype(np.float32)


def normalize_adjacency(A: np.ndarray) -> np.ndarray:
    """Symmetric normalisation D^-1/2 A D^-1/2 (D = row sums); isolated nodes stay zero."""
    A = np.asarray(A, dtype=np.float64)
    deg = A.sum(-1)
    inv_sqrt = np.zeros_like(deg)
    np.power(deg, -0.5, out=inv_sqrt, where=deg > 0)
    return (inv_sqrt[:, None] * A * inv_sqrt[None, :]).astype(np.float32)


def window_adjacency(A: np.ndarray, window: int) -> np.ndarray:
    """The G3D graph of a `window`-frame temporal window: a window x window tiling of A + I.

    Node (t, v) joins (t', u) for every pair of frames t, t' when u is v or a neighbour of v,
    so a joint is linked to itself and its neighbours in all frames of the window.
    """
    A_self = np.asarray(A, dtype=np.float32) + np.eye(len(A), dtype=np.float32)
    return np.tile(A_self, (window, window))


def multiscale_adjacency(A: np.ndarray, num_scales: int) -> np.ndarray:
    """Stack (num_scales, V, V) of normalised disentangled k-hop adjacencies, k = 0..K-1."""
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    return np.stack([normalize_adjacency(k_adjacency(A, k, with_self=True)) for k in range(num_scales)])
