"""What the training and evaluation loops may ask of a dataset: the dataset contract.

Every registered kind (`datasets.kinds`) is a map-style dataset (`MapDataset` below) made as `Class(cfg, split: str)`.
Everything else is optional: a dataset declares a capability by having the member of its protocol below (a value
of None says "declared, but not for this data", e.g. `class_names` without a classes.txt). The loops ask through
`isinstance(dataset, Capability)` (the protocols are runtime-checkable) or the accessors at the bottom, never by a
member's name in a string, so a renamed member is one edit here; `tests/test_contracts.py` builds every kind and
checks it against these protocols.

| capability | member | asked by |
|---|---|---|
| `HasClassNames` | `class_names` | trainer (confusion matrix), evaluation (per-class metrics, confusion matrix) |
| `HasOutputNames` | `output_names` | trainer and evaluation (regression metrics per output) |
| `HasParticipants` | `participants` | trainer and evaluation (regression averaged per participant) |
| `HasViews` | `num_views` | evaluation (`has_views`: the test split's samples carry a view axis) |
| `HasDataProtocol` | `protocol` | trainer (logs it), evaluation (how views are combined, `test.*` params) |
| `SkipsBadFiles` | `noun`, `ceiling_error()` | trainer (the bad-file ceiling, the final summary) |
| `HasRecordings` | `interactions`, `windows(id)` | `training.loaders.sequences_of` (memory-carrying models) |
| `HasIds`, `HasSampleNames`, `HasListItems` | `ids`, `sample_names`, `items` | evaluation (`sample_ids`) |

Nothing here imports torch or launch/: `from action_launch.datasets.contract import ...` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

if TYPE_CHECKING:
    from .protocols import Protocol as DataProtocol


@runtime_checkable
class MapDataset(Protocol):
    """What every registered kind is: a map-style dataset of (inputs, target) or (inputs, target, meta)."""

    num_classes: Optional[int]
    """Tests and the model-head checks: the class count the split's labels imply; None when it has no labels."""

    def __len__(self) -> int:
        """Loaders and samplers: the number of samples."""
        ...

    def __getitem__(self, key: Any) -> Tuple[Any, ...]:
        """Loaders, with an index or (index, seed): (inputs, target) or (inputs, target, meta dict)."""
        ...


@runtime_checkable
class HasClassNames(Protocol):
    """A dataset that can name its classes."""

    class_names: Optional[List[str]]
    """Trainer and evaluation: label i's name (`num_classes` names), or None (no classes.txt)."""


@runtime_checkable
class HasOutputNames(Protocol):
    """A regression dataset that can name its outputs (the Big-Five traits)."""

    output_names: Optional[List[str]]
    """Trainer and evaluation: one name per regression target, or None (classification data)."""


@runtime_checkable
class HasParticipants(Protocol):
    """A dataset whose samples belong to participants (several clips of one person share their targets)."""

    participants: Optional[List[str]]
    """Trainer and evaluation: sample i's participant id (len(dataset) ids), or None; metrics average per id."""


@runtime_checkable
class HasViews(Protocol):
    """A dataset whose test split returns several views (clips x crops) per sample."""

    num_views: Optional[int]
    """Evaluation (`has_views`): views per sample of this split (1 outside test), or None (no view axis)."""


@runtime_checkable
class HasDataProtocol(Protocol):
    """A dataset fed by a data protocol (`datasets.protocols`: another upstream's frame sampling and views)."""

    protocol: DataProtocol
    """Trainer (logs it) and evaluation (its `aggregate` rule, `name` and `describe()` in the `test.*` params)."""


@runtime_checkable
class SkipsBadFiles(Protocol):
    """A dataset that skips unreadable files up to `data.max_bad_fraction` (`datasets.video.BadFileSkipper`)."""

    noun: str
    """Trainer and preflight: what one of its files is called in messages ("video", "frame folder")."""

    def ceiling_error(self) -> Optional[str]:
        """Trainer (rank 0): the error listing every bad file once past the ceiling, else None."""
        ...


@runtime_checkable
class HasRecordings(Protocol):
    """A dataset of consecutive windows grouped into recordings (`datasets.multiperson`)."""

    @property
    def interactions(self) -> List[str]:
        """`sequences_of`: the recording ids."""
        ...

    def windows(self, interaction: str) -> List[int]:
        """`sequences_of`: dataset indices of one recording's windows, in window order (each index once overall)."""
        ...


@runtime_checkable
class HasIds(Protocol):
    """A dataset that gives each sample an id."""

    ids: Optional[Sequence[Any]]
    """Evaluation (`sample_ids`, first choice): sample i's id (len(dataset) entries), or None."""


@runtime_checkable
class HasSampleNames(Protocol):
    """A dataset whose samples have names (the skeleton label files')."""

    sample_names: Optional[Sequence[str]]
    """Evaluation (`sample_ids`, second choice): sample i's name (len(dataset) entries), or None."""


@runtime_checkable
class HasListItems(Protocol):
    """A dataset read from a list file, one item per sample."""

    items: Optional[Sequence[Any]]
    """Evaluation (`sample_ids`, third choice): the list's items in sample order; items with a `path` name them."""


DATASET_CAPABILITIES: Tuple[type, ...] = (
    HasClassNames,
    HasOutputNames,
    HasParticipants,
    HasViews,
    HasDataProtocol,
    SkipsBadFiles,
    HasRecordings,
    HasIds,
    HasSampleNames,
    HasListItems,
)
"""Every optional capability of the dataset contract."""


def dataset_capabilities(dataset: Any) -> List[str]:
    """Names of the capabilities `dataset` declares (e.g. `["HasClassNames", "HasViews", ...]`)."""
    return [cap.__name__ for cap in DATASET_CAPABILITIES if isinstance(dataset, cap)]


# ------------------------------------------------------------------------- accessors: the value, or None undeclared


def class_names_of(dataset: Any) -> Optional[List[str]]:
    """The dataset's `class_names`, or None when it declares none."""
    return dataset.class_names if isinstance(dataset, HasClassNames) else None


def output_names_of(dataset: Any) -> Optional[List[str]]:
    """The dataset's `output_names`, or None when it declares none."""
    return dataset.output_names if isinstance(dataset, HasOutputNames) else None


def participants_of(dataset: Any) -> Optional[List[str]]:
    """The dataset's `participants`, or None when it declares none."""
    return dataset.participants if isinstance(dataset, HasParticipants) else None


def num_views_of(dataset: Any) -> Optional[int]:
    """The dataset's `num_views`, or None when it declares none."""
    return dataset.num_views if isinstance(dataset, HasViews) else None


def protocol_of(dataset: Any) -> Optional[DataProtocol]:
    """The dataset's data `protocol`, or None when it has none."""
    return dataset.protocol if isinstance(dataset, HasDataProtocol) else None


def noun_of(dataset: Any, default: str = "file") -> str:
    """What the dataset calls one of its files, or `default`."""
    return dataset.noun if isinstance(dataset, SkipsBadFiles) else default


def sample_ids(dataset: Any) -> Optional[List[str]]:
    """An id per sample: the dataset's `ids`, else its `sample_names`, else its list items' paths; None without."""
    if isinstance(dataset, HasIds) and dataset.ids is not None:
        return [str(i) for i in dataset.ids]
    if isinstance(dataset, HasSampleNames) and dataset.sample_names is not None:
        return [str(n) for n in dataset.sample_names]
    items = dataset.items if isinstance(dataset, HasListItems) else None
    if items is not None and all(hasattr(it, "path") for it in items):
        return [str(it.path) for it in items]
    return None
