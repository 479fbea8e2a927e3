"""List files: which videos (or frame folders) make a split, and their labels.

Formats (one sample per line; blank lines and lines starting with `#` are skipped):
- `video`:      `path label` (split on the last whitespace, so paths may contain spaces)
- `csv`:        `path<separator>label` (TimeSformer; split on the last separator)
- `rawframes`:  `frame_dir total_frames label` (TSN/TSM/ST-ABN frame folders)
- `multilabel`: `path label1 label2 ...` (whitespace separated; at least one label)

A relative path resolves against `root` joined with `path_prefix`; an absolute one is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

FORMATS = ("video", "csv", "rawframes", "multilabel")


@dataclass(frozen=True)
class ListItem:
    """One line of a list file."""

    path: str
    """Resolved path of the video file or frame folder."""
    label: Union[int, List[int]]
    """Class index (a list of indices for `multilabel`)."""
    num_frames: Optional[int] = None
    """Frame count given by a `rawframes` list, else None."""
    line: int = 0
    """1-based line number in the list file (for error messages)."""


def read_class_names(root: str) -> Optional[List[str]]:
    """The class names of `root`/classes.txt (one a line, blank lines skipped; line i names label i), or
    None when there is no classes.txt."""
    path = os.path.join(root, "classes.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def resolve_list_path(root: str, list_file: str) -> str:
    """A list file path: relative ones are taken relative to `root`."""
    return list_file if os.path.isabs(list_file) else os.path.join(root, list_file)


def _missing_list_message(path: str) -> str:
    msg = f"list file not found: {path}"
    norm = os.path.normpath(os.path.abspath(path)).replace(os.sep, "/")
    if "/data/synthetic" in norm or norm.startswith("data/synthetic"):
        folder = os.path.dirname(path) or "."
        msg += f"; generate the synthetic data set with: python -m action_launch.datasets.synthetic {folder}"
    return msg


def _label(token: str) -> int:
    value = int(token)
    if value < 0:
        raise ValueError(f"negative label {value}")
    return value


def parse_line(text: str, fmt: str = "video", separator: str = " ") -> tuple:
    """Split one non-blank line into (path, label, num_frames). Raises ValueError on a
    malformed line (without file context; `read_list` adds it)."""
    if fmt == "video":
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            raise ValueError("expected 'path label'")
        return parts[0], _label(parts[1]), None
    if fmt == "csv":
        sep = separator if separator.strip() else None  # " " means any whitespace
        parts = text.rsplit(sep, 1)
        if len(parts) != 2 or not parts[0].strip():
            raise ValueError(f"expected 'path{separator!r}label'")
        return parts[0].strip(), _label(parts[1].strip()), None
    if fmt == "rawframes":
        parts = text.split()
        if len(parts) != 3:
            raise ValueError("expected 'frame_dir total_frames label'")
        frames = int(parts[1])
        if frames < 0:
            raise ValueError(f"negative frame count {frames}")
        return parts[0], _label(parts[2]), frames
    if fmt == "multilabel":
        parts = text.split()
        if len(parts) < 2:
            raise ValueError("expected 'path label1 [label2 ...]'")
        return parts[0], [_label(t) for t in parts[1:]], None
    raise ValueError(f"unknown list format {fmt!r}; valid: {', '.join(FORMATS)}")


def read_list(
    list_path: str,
    root: str = ".",
    fmt: str = "video",
    separator: str = " ",
    path_prefix: str = "",
) -> List[ListItem]:
    """Parse a list file into ListItems with resolved paths.

    Raises FileNotFoundError naming the file (and how to generate the synthetic set when the
    file is under data/synthetic), and ValueError `file:line: reason: 'the line'` for a
    malformed line.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown list format {fmt!r}; valid: {', '.join(FORMATS)}")
    if not os.path.isfile(list_path):
        raise FileNotFoundError(_missing_list_message(list_path))
    items: List[ListItem] = []
    with open(list_path, encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            try:
                path, label, frames = parse_line(text, fmt, separator)
            except ValueError as e:
                raise ValueError(f"{list_path}:{number}: malformed {fmt} list line ({e}): {text!r}") from None
            items.append(ListItem(os.path.join(root, path_prefix, path), label, frames, number))
    return items


# --- the bad-file log: one `path<TAB>reason` line per unreadable video, appended by every
# DataLoader worker (separate processes) so the engine can see what was skipped.


def append_bad_file(log_path: str, path: str, reason: str) -> None:
    """Append one `path<TAB>reason` line (tabs/newlines in the reason become spaces)."""
    clean = " ".join(str(reason).split())
    # one short write in append mode: lines from several workers do not interleave
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"{path}\t{clean}\n")


def read_bad_files(log_path: Optional[str]) -> dict:
    """Read a bad-file log back: {path: reason} (the first reason seen for each path);
    an unset or missing log gives {}."""
    out: dict = {}
    if not log_path or not os.path.isfile(log_path):
        return out
    with open(log_path, encoding="utf-8") as f:
        for raw in f:
            path, _, reason = raw.rstrip("\n").partition("\t")
            if path:
                out.setdefault(path, reason)
    return out


def too_many_bad_files(
    bad: Dict[str, str], total: int, list_path: str, noun: str, max_fraction: float, scanned: bool
) -> Optional[str]:
    """The one error for a split whose unreadable files (`bad`: path -> reason) pass `max_fraction` of its
    `total` entries, listing them; None below the ceiling. `scanned`: the whole list was checked (else the
    files are those found so far, and the error says how to find them all)."""
    if len(bad) <= max_fraction * total:
        return None
    found = "are unreadable" if scanned else "found unreadable so far"
    find_all = (
        ""
        if scanned
        else (
            f" (data.check_files=always, or `python -m action_launch.datasets.check {list_path} "
            f"--jobs 4`, finds them all before training)"
        )
    )
    return (
        f"{len(bad)} of {total} {noun}s in {list_path} {found}, more than data.max_bad_fraction={max_fraction}: "
        f"fix or delist them, or raise the fraction{find_all}:{bad_file_listing(bad)}"
    )


def bad_file_listing(bad: Dict[str, str]) -> str:
    """Unreadable files (path -> reason) as indented `path: reason` lines, each after a newline, sorted by path."""
    return "".join(f"\n  {p}: {r}" for p, r in sorted(bad.items()))
