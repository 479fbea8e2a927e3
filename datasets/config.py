"""The `data:` config section: the keys every dataset kind reads (`DataConfig`), and the keys the kinds share.

YAML writes the section flat; `data.dataset` names the kind and with it the class the section is read as: the
section class its module registers (`datasets.kinds`), e.g. `VideoConfig` in `datasets.video`, each a `DataConfig`
with the fields of its kind. The clip kinds share `ClipConfig` (sampling, transforms and views of the data protocol);
the skeleton kinds share `SkeletonStreamConfig` (crop, rotation, stream and Laban features of a sequence); the kinds
that read a classification list share `ListedClipConfig`, those that decode video files `VideoFilesConfig`. A run's
config.yaml and its MLflow params hold the common keys and the chosen kind's, nothing else; the launcher's validator
refuses another kind's key (unless at its default, as the config.yaml of older runs carries it).

A field with a closed set of values is a `Literal` of the names the data code dispatches on
(`lists.FORMATS`, `video.SAMPLINGS`, ...); tests/test_validation.py keeps them equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Tuple, get_args, get_type_hints

from .registry import kind_name, kinds


@dataclass
class DataConfig:
    """Where a run's data comes from and how it is loaded: the keys of every kind.

    `DataConfig(dataset=kind, **keys)` makes the section class of that kind (`datasets.kinds`), so code writes a
    section as flat as YAML does; a key the kind does not have is a TypeError, as for any dataclass.
    """

    kind_key: ClassVar[str] = "dataset"  # the key whose value picks the class of a section (`Validator`)

    dataset: str = "video"
    """Dataset kind, one of the registered kinds (`datasets.kinds`): `video` (decoded video files), `rawframes`
    (JPEG/PNG frame folders), `skeleton` (NTU-style .npy + label .pkl), `multiperson` (synchronised windows of P
    people)."""
    root: str = "data/synthetic"
    """Folder that relative list paths and relative video paths resolve against."""
    train_list: str = "train.txt"
    """Training list file (relative to `root` unless absolute)."""
    val_list: str = "val.txt"
    """Validation list file."""
    test_list: Optional[str] = None
    """Test list file; defaults to `val_list`."""
    num_workers: int = 2
    """DataLoader worker processes (0 decodes in the training process)."""
    pin_memory: bool = True
    """Pin host memory when training on an accelerator."""
    prefetch_factor: int = 2
    """Batches each worker prepares ahead."""
    persistent_workers: bool = True
    """Keep workers alive between epochs."""
    bad_files_log: Optional[str] = None
    """File each worker appends `path<TAB>reason` lines to for every unreadable file
    (`datasets.read_bad_files` reads it back), once per file; None: log lines only. A run points it at its
    folder and checks the ceiling in the training process."""

    def __new__(cls, *args: Any, **kwargs: Any) -> DataConfig:
        if cls is DataConfig:  # the kind's own class; pickling and subclasses pass their class
            dataset = args[0] if args else kwargs.get("dataset", "video")
            registered = kinds()
            if dataset not in registered:
                raise ValueError(f"unknown data.dataset {dataset!r}; valid: {', '.join(registered)}")
            cls = registered[dataset].section
        return super().__new__(cls)

    def __post_init__(self) -> None:
        kind = kind_name(type(self))
        registered = kinds().get(kind)
        if registered is not None and registered.section is type(self) and self.dataset != kind:
            raise ValueError(
                f"{type(self).__name__} is the data section of data.dataset={kind}, got "
                f"data.dataset={self.dataset!r}; make it with DataConfig(dataset={self.dataset!r}, ...)"
            )

    @classmethod
    def kinds(cls) -> Dict[str, type]:
        """{`data.dataset` value: the class its section is read as}."""
        return {name: kind.section for name, kind in kinds().items()}

    def split_read(self, split: str) -> str:
        """The split whose files `split` reads: the test split without its own `test_list` reads the val split's,
        with the test views."""
        return "val" if split == "test" and not self.has_own_test_split() else split

    def has_own_test_split(self) -> bool:
        """Whether the test split has files of its own (`test_list`)."""
        return self.test_list is not None


@dataclass
class ClipConfig(DataConfig):
    """The keys of the clip kinds (video files, frame folders, multi-person windows): which frames a clip takes
    and how they are resized, cropped, augmented and viewed (the data protocol), and how unreadable files are
    skipped."""

    path_prefix: str = ""
    """Prefix joined to every path of a list (TimeSformer's PATH_PREFIX)."""
    protocol: Literal["native", "pyslowfast", "tsn", "mmaction"] = "native"
    """How clips are sampled, resized, cropped, augmented and viewed (`datasets.protocols`), for the video
    and frame-folder datasets: `native` (this project's own rules), or an upstream code's exactly:
    `pyslowfast` (TimeSformer, LightTimeSformer), `tsn` (TSM and DyReg-GNN's TSNDataSet and test scripts),
    `mmaction` (ST-ABN's MMAction 0.x RawFramesDataset). A published checkpoint scores its published
    accuracy with the protocol of its upstream."""
    num_frames: int = 8
    """Frames per clip."""
    sampling_rate: int = 32
    """Stride between sampled frames, defined at `target_fps`."""
    target_fps: float = 30.0
    """Frame rate the stride is defined at; a file's own fps rescales it (PySlowFast)."""
    sampling: Literal["dense", "segment"] = "dense"
    """`dense`: `num_frames` frames `sampling_rate` apart (TimeSformer; `tsn`: TSM's I3D-style dense
    sample, 64 frames); `segment`: TSN, one frame from each of `num_frames` equal segments
    (Something-Something, ST-ABN, TSM), each protocol with its own segment formula."""
    short_video: Literal["loop", "clamp"] = "loop"
    """`native` protocol: a video shorter than the dense clip span `loop`s (wraps around) or `clamp`s
    (repeats the last frame; what PySlowFast does)."""
    train_short_side: List[int] = field(default_factory=lambda: [256, 320])
    """Training short-side scale jitter range [min, max] (`native`, `pyslowfast`: TRAIN_JITTER_SCALES; `tsn`
    and `mmaction` crop the frames as stored, as their upstream trains)."""
    scale_sampling: Literal["uniform", "inverse_uniform"] = "uniform"
    """`pyslowfast`: the jittered short side is drawn uniformly, or its inverse is (INV_UNIFORM_SAMPLE)."""
    test_short_side: int = 224
    """Short side that test/val frames are resized to before the crops (`pyslowfast` resizes to the test
    crop, or with dense sampling and 1 crop to `train_short_side[0]`; `tsn` to crop_size * 256 // 224: rules
    which this must state)."""
    crop_size: int = 224
    """Square crop fed to the model in training (and at test, unless `test_crop_size` says otherwise)."""
    test_crop_size: Optional[int] = None
    """Square crop of the val/test views; None: `crop_size` (PySlowFast's TEST_CROP_SIZE; TSM's
    `--full_res` is `test_crop_size` = `test_short_side`)."""
    flip: bool = True
    """Random horizontal flip in training (switch off for Something-Something)."""
    multi_scale_crop: bool = False
    """`native` training crop: TSM multi-scale crop (scales 1/.875/.75/.66, resized to `crop_size`) instead of
    a random crop (the `tsn` protocol always trains with TSM's own)."""
    color_jitter: bool = False
    """`mmaction`: ST-ABN's colour augmentation in training (brightness, contrast, saturation and hue, each
    per frame with probability 1/2, then PCA lighting noise; `color_jitter` + `color_space_aug`)."""
    channel_order: Literal["rgb", "bgr"] = "rgb"
    """Channel order fed to the model. `bgr`: TimeSformer's Something-Something frames, which its code
    reads with OpenCV and never converts (the released SSv2 weights expect it)."""
    mean: List[float] = field(default_factory=lambda: [0.45, 0.45, 0.45])
    """Per-channel mean on the 0-1 scale."""
    std: List[float] = field(default_factory=lambda: [0.225, 0.225, 0.225])
    """Per-channel std on the 0-1 scale."""
    max_bad_fraction: float = 0.01
    """Unreadable videos are skipped (another sample is returned); more distinct bad files than
    this fraction of the list stop the run with an error listing them."""
    test_num_clips: int = 1
    """Temporal views of the `test` split: evenly spaced dense clips (segment sampling: 1 = centres, 2 = centres
    and starts, TSM's twice sample; `tsn` dense sampling: 10, TSM's dense test)."""
    test_num_crops: Literal[1, 3, 5, 10] = 1
    """Spatial views of the `test` split: 1 (centre) or 3 (left/centre/right on the long side; `tsn`: TSM's
    full-resolution 3 crops; `mmaction`: three_crop, left/right/middle, the crop spanning the short side); `tsn`
    also 5 (corners and centre), `tsn` and `mmaction` 10 (those and their mirror images)."""


@dataclass
class ListedClipConfig(ClipConfig):
    """The keys of the kinds that read their clips from a classification list (video files, frame folders): the
    list's format, and the scan of its files before a run starts."""

    list_format: Literal["video", "csv", "rawframes", "multilabel"] = "video"
    """`video` (`path label`), `csv` (`path<separator>label`), `multilabel` (`path l1 l2 ...`),
    `rawframes` (`frame_dir total_frames label`, for `data.dataset=rawframes`)."""
    separator: str = " "
    """Field separator of `csv` lists."""
    check_files: Literal["auto", "always", "never"] = "auto"
    """Scan the train and val lists before anything starts (`python -m action_launch.datasets.check`: a
    video opens and its first and last frames decode, a frame folder holds its frames), so a split past
    `max_bad_fraction` stops the run at once with every bad file listed. `auto`: when the two lists hold
    at most 5000 entries together (`always` for larger lists: the scan opens every file once, on all
    cores); `never`: bad files are found as they are read, and the error
    lists those found so far."""


@dataclass
class VideoFilesConfig(DataConfig):
    """The key of the kinds that decode video files (`video`; `multiperson` windows of videos): the decoder."""

    decoder: Literal["decord", "torchcodec"] = "decord"
    """What decodes video files (`DECODERS`): `decord`, or
    `torchcodec` (the PyTorch project's, over the system's FFmpeg libraries). Both give the same frames;
    `bench/data_pipeline.py` measures their speed side by side."""


@dataclass
class SkeletonStreamConfig(DataConfig):
    """The keys of the skeleton kinds: how a (C, T, V, M) sequence is cropped, rotated and turned into the
    model's input channels (`datasets.skeleton.sequence_transform`)."""

    skeleton_stream: Literal["joint", "bone"] = "joint"
    """`joint` coordinates or `bone` vectors (bone[v1] = joint[v1] - joint[parent v1])."""
    graph: Literal["ntu-rgb+d", "kinetics", "smpl-24", "smpl-24-dense"] = "ntu-rgb+d"
    """Graph whose edges define the bones (`models.graphs`; smpl-24-dense has smpl-24's bones)."""
    window_size: int = 0
    """Frames per sample after the temporal crop and resize; 0 keeps the array's T frames."""
    crop_range: List[float] = field(default_factory=lambda: [0.5, 1.0])
    """Training: the temporal crop keeps a random fraction in [min, max] of the valid frames."""
    random_rotation: float = 0.0
    """Training: rotate xyz about each axis by a uniform angle in [-this, this] degrees (0: off)."""
    laban: bool = False
    """Append 12 Laban channels (velocity, flow, space, weight; `datasets.laban`) to the 3 of the stream."""
    laban_formula: Literal["described", "authors"] = "described"
    """`described` (the paper's description) or `authors` (what the personality authors' code computes, SMPL-24)."""


DECODERS: Tuple[str, ...] = get_args(get_type_hints(VideoFilesConfig)["decoder"])
"""The values of `data.decoder` (read from its annotation, their one home): what `decode.open_video` opens a file
with, and the choices of `datasets.check --decoder`."""
