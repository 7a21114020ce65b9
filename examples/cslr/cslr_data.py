"""Sign-language keypoint data on disk for the CSLR example: the format, its reader and writer.

A data set is a folder (on the stack: a `data:` entry of config.yaml, read-only at /data/NAME):

    annotations.csv        one row per sentence, '|'-separated, a header line naming the columns
    keypoints/NAME.npy     the sentence's keypoints: a float array (frames, points, channels)
    keypoints/NAME.pose    ... or a pose-format file (needs the pose-format package)

`annotations.csv` needs the columns `name` (the sentence id: the keypoint file's stem), `split`
(`train`, `dev` or `test`) and `orth` (the gloss sequence, glosses separated by spaces): the
column names and separator of PHOENIX-2014T's `*.corpus.csv` files, plus `split`. Other columns
(PHOENIX's `video`, `start`, `end`, `speaker`, `translation`) are allowed and ignored.

Keypoints: channels are x, y[, z or confidence]; the model reads x and y of each point, so a
frame's features are 2 x points numbers. A (frames, people, points, channels) array (pose-format's
body layout) takes person 0; a 2-D (frames, features) array is read as it is. NaN (a missing
point) reads as 0, the value OpenPose and pose-format give missing points.

Why `.npy` as well as `.pose`: the example runs on the stack's default images, which carry Ray and
the MLflow client but neither NumPy nor pose-format (pose-format needs NumPy). `.npy` is read and
written here with the standard library only (`read_npy`, `write_npy`: the NPY format v1-v3, float
16/32/64, either byte order, C order); `.pose` files are read with `pose_format.Pose.read` when
pose-format imports, and otherwise stop with what to install.

The vocabulary is the set of glosses of the train split only (`Vocabulary.from_train`); a dev or
test gloss outside it is kept in the references as `UNKNOWN` (an id no model class has), so it
counts as an error in WER instead of vanishing from the reference, and the loader reports how many.

Malformed input raises `DataError` naming the file and line (train.py prints it and exits 2).

    python cslr_data.py synth OUT [--sentences 48] [--seed 0] ...   write the synthetic data set
    python cslr_data.py check DIR                                   read a data set and summarise it
    python cslr_data.py from-openpose FRAMES_DIR OUT.npy             one sentence's OpenPose JSON -> .npy
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

ANNOTATIONS = "annotations.csv"
KEYPOINTS = "keypoints"
SEPARATOR = "|"
REQUIRED = ("name", "split", "orth")
SPLITS = ("train", "dev", "test")
EXTENSIONS = (".npy", ".pose")
UNKNOWN = -1  # a dev/test gloss that is not in the training vocabulary: no class predicts it
NPY_MAGIC = b"\x93NUMPY"
NPY_TYPES = {"f2": "e", "f4": "f", "f8": "d"}  # descr (without byte order) -> struct code
NORMALIZE = ("none", "sentence")


class DataError(Exception):
    """Malformed data: the message names the file (and line) and what was found vs expected."""


# --------------------------------------------------------------------------------- NPY files


def read_npy(path: Path) -> tuple[tuple[int, ...], list[float]]:
    """(shape, values in C order) of a float .npy file, with the standard library only."""
    data = Path(path).read_bytes()
    if not data.startswith(NPY_MAGIC):
        raise DataError(f"{path}: not an NPY file (expected it to start with \\x93NUMPY)")
    major = data[6] if len(data) > 6 else 0
    if len(data) < (10 if major == 1 else 12):
        raise DataError(f"{path}: truncated NPY file ({len(data)} bytes)")
    if major == 1:
        (hlen,), start = struct.unpack("<H", data[8:10]), 10
    elif major in (2, 3):
        (hlen,), start = struct.unpack("<I", data[8:12]), 12
    else:
        raise DataError(f"{path}: NPY format version {major}: expected 1, 2 or 3")
    try:
        header = ast.literal_eval(data[start : start + hlen].decode("latin1" if major < 3 else "utf-8"))
        descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable NPY header ({exc})") from None
    if not isinstance(descr, str) or descr[1:] not in NPY_TYPES or descr[0] not in "<>=|":
        raise DataError(f"{path}: dtype {descr!r}: expected float16, float32 or float64 ('<f4', '<f8', ...)")
    if fortran:
        raise DataError(f"{path}: fortran_order True: expected a C-order array (numpy.ascontiguousarray)")
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise DataError(f"{path}: shape {shape}: expected whole numbers")
    body = data[start + hlen :]
    fmt = f"{'>' if descr[0] == '>' else '<' if descr[0] == '<' else '='}{math.prod(shape)}{NPY_TYPES[descr[1:]]}"
    if len(body) != struct.calcsize(fmt):
        raise DataError(f"{path}: shape {shape} of {descr} needs {struct.calcsize(fmt)} bytes of data, found {len(body)}")
    return shape, list(struct.unpack(fmt, body))


def write_npy(path: Path, shape: tuple[int, ...], values, dtype: str = "<f4") -> None:
    """Write a C-order float .npy file (NPY format 1.0) that numpy.load reads."""
    if dtype[1:] not in NPY_TYPES or dtype[0] not in "<>":
        raise ValueError(f"dtype: expected '<f2', '<f4', '<f8' or big-endian '>…', found {dtype!r}")
    values = list(values)
    if len(values) != math.prod(shape):
        raise ValueError(f"shape {shape} needs {math.prod(shape)} values, found {len(values)}")
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"  # as numpy.save writes it
    header += " " * (-(len(NPY_MAGIC) + 4 + len(header) + 1) % 64) + "\n"  # data aligned to 64 bytes
    Path(path).write_bytes(
        NPY_MAGIC
        + b"\x01\x00"
        + struct.pack("<H", len(header))
        + header.encode("latin1")
        + struct.pack(f"{dtype[0]}{len(values)}{NPY_TYPES[dtype[1:]]}", *values)
    )


# --------------------------------------------------------------------------- keypoints -> frames


def frames_from_array(shape: tuple[int, ...], values: list[float], where: str) -> list[list[float]]:
    """T x D features: x and y of every point of every frame (person 0 of a 4-D array)."""
    if len(shape) == 4:  # frames, people, points, channels: person 0
        t, people, points, channels = shape
        if people < 1:
            raise DataError(f"{where}: shape {shape}: no person (expected frames, people >= 1, points, channels)")
        stride = people * points * channels
        values = [v for f in range(t) for v in values[f * stride : f * stride + points * channels]]
        shape = (t, points, channels)
    if len(shape) == 3:
        t, points, channels = shape
        if channels < 2:
            raise DataError(f"{where}: shape {shape}: expected (frames, points, channels >= 2: x, y[, ...])")
        frames = [[values[(f * points + p) * channels + c] for p in range(points) for c in (0, 1)] for f in range(t)]
    elif len(shape) == 2:
        t, dim = shape
        frames = [values[f * dim : (f + 1) * dim] for f in range(t)]
    else:
        raise DataError(f"{where}: shape {shape}: expected (frames, points, channels), (frames, people, points, channels) or (frames, features)")
    if not frames or not frames[0]:
        raise DataError(f"{where}: shape {shape}: no frames or no features")
    return [[0.0 if v != v else v for v in frame] for frame in frames]  # NaN (missing point) -> 0


def read_pose(path: Path) -> tuple[tuple[int, ...], list[float]]:
    """(shape, values) of a pose-format file's body: (frames, people, points, dims), masked -> 0."""
    try:
        from pose_format import Pose
    except ImportError as exc:
        raise DataError(
            f"{path}: reading .pose files needs pose-format ({type(exc).__name__}: {exc}); add `pose-format` to the file "
            "images.requirements names, or convert the keypoints to .npy (examples/cslr/README.md)"
        ) from None
    try:
        pose = Pose.read(Path(path).read_bytes())
        data = pose.body.data
        filled = data.filled(0.0) if hasattr(data, "filled") else data
    except Exception as exc:  # a truncated or foreign file: pose-format raises various errors
        raise DataError(f"{path}: unreadable .pose file ({type(exc).__name__}: {exc})") from None
    return tuple(int(d) for d in filled.shape), [float(v) for v in filled.reshape(-1).tolist()]


def write_pose(path: Path, frames: list[list[float]], fps: float = 25.0) -> None:
    """Write T x 2K features as a pose-format file: one person, component SYNTHETIC of K points
    (x, y; confidence 1). Needs pose-format (and so NumPy)."""
    import numpy as np
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions

    points = len(frames[0]) // 2
    component = PoseHeaderComponent("SYNTHETIC", [f"P{i}" for i in range(points)], [], [], "XYC")
    header = PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(width=1, height=1), components=[component])
    data = np.array(frames, dtype=np.float32).reshape(len(frames), 1, points, 2)
    body = NumPyPoseBody(fps=fps, data=np.ma.masked_array(data), confidence=np.ones((len(frames), 1, points), dtype=np.float32))
    with open(path, "wb") as f:
        Pose(header, body).write(f)


def normalize_sentence(frames: list[list[float]]) -> list[list[float]]:
    """Centre each sentence on the mean x and y of its present points (a point at exactly (0, 0) is
    missing and stays 0) and scale by their standard deviation, pooled over x and y: keypoints in
    pixels of any camera become numbers of order 1, as the linear model and its learning rate expect."""
    xs = [f[i] for f in frames for i in range(0, len(f) - 1, 2) if f[i] or f[i + 1]]
    ys = [f[i + 1] for f in frames for i in range(0, len(f) - 1, 2) if f[i] or f[i + 1]]
    if not xs:
        return frames
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = (sum((x - mx) ** 2 for x in xs) + sum((y - my) ** 2 for y in ys)) / (2 * len(xs))
    scale = 1.0 / math.sqrt(var) if var > 0 else 1.0
    out = []
    for f in frames:
        row = list(f)
        for i in range(0, len(f) - 1, 2):
            if f[i] or f[i + 1]:
                row[i], row[i + 1] = (f[i] - mx) * scale, (f[i + 1] - my) * scale
        out.append(row)
    return out


def parse_points(spec: str) -> list[int] | None:
    """`--points 0-24,95-136` -> [0, ..., 24, 95, ..., 136]; '' or 'all' -> None (every point)."""
    if spec in ("", "all"):
        return None
    out: list[int] = []
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and (not hi.isdigit() or int(hi) < int(lo))):
            raise DataError(f"--points: expected point indices and ranges like 0-24,95-136, found {part.strip()!r} in {spec!r}")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def load_frames(root: Path, path: str, points: list[int] | None = None, frame_step: int = 1, normalize: str = "none") -> list[list[float]]:
    """One sentence's T x D features from `root / path` (.npy or .pose), every `frame_step`-th
    frame, only `points` (indices into the file's points; None: all), optionally normalised."""
    file = Path(root) / path
    shape, values = read_pose(file) if file.suffix == ".pose" else read_npy(file)
    frames = frames_from_array(shape, values, str(file))
    if points is not None:
        available = len(frames[0]) // 2
        if max(points) >= available:
            raise DataError(f"{file}: --points asks for point {max(points)}, the file has {available} points (0-{available - 1})")
        frames = [[f[2 * p + c] for p in points for c in (0, 1)] for f in frames]
    frames = frames[::frame_step]
    return normalize_sentence(frames) if normalize == "sentence" else frames


# ---------------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class Sentence:
    name: str
    split: str
    glosses: tuple[str, ...]
    line: int  # in annotations.csv, for messages
    path: str = ""  # keypoints/NAME.npy or .pose, relative to the data set folder


def read_annotations(path: Path) -> list[Sentence]:
    """The rows of an annotation table; DataError naming file and line for any malformed one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: not found (a data set folder needs {ANNOTATIONS}: name|split|orth, examples/cslr/README.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}, line 1: expected a header naming the columns {SEPARATOR.join(REQUIRED)}, found an empty line")
    header = [h.strip() for h in lines[0].split(SEPARATOR)]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DataError(
            f"{path}, line 1: header: expected the columns {SEPARATOR.join(REQUIRED)} (others allowed), found {lines[0].strip()!r}; missing {', '.join(missing)}"
        )
    col = {c: header.index(c) for c in REQUIRED}
    seen: dict[str, int] = {}
    out = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split(SEPARATOR)
        if len(fields) != len(header):
            raise DataError(f"{path}, line {number}: expected {len(header)} fields separated by {SEPARATOR!r} (as the header), found {len(fields)}")
        name, split, orth = (fields[col[c]].strip() for c in REQUIRED)
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise DataError(f"{path}, line {number}: name: expected a file stem (no '/'), found {name!r}")
        if split not in SPLITS:
            raise DataError(f"{path}, line {number}: split: expected one of {', '.join(SPLITS)}, found {split!r}")
        glosses = tuple(orth.split())
        if not glosses:
            raise DataError(f"{path}, line {number}: orth: expected glosses separated by spaces, found an empty gloss sequence")
        if name in seen:
            raise DataError(f"{path}, line {number}: name {name!r} already on line {seen[name]}")
        seen[name] = number
        out.append(Sentence(name, split, glosses, number))
    return out


def write_annotations(path: Path, sentences: list[Sentence]) -> None:
    lines = [SEPARATOR.join(REQUIRED)] + [SEPARATOR.join((s.name, s.split, " ".join(s.glosses))) for s in sentences]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- data set index


@dataclass(frozen=True)
class Vocabulary:
    glosses: tuple[str, ...]  # id i + 1 is glosses[i]; 0 is the CTC blank

    @classmethod
    def from_train(cls, sentences: list[Sentence]) -> Vocabulary:
        return cls(tuple(sorted({g for s in sentences if s.split == "train" for g in s.glosses})))

    def __len__(self) -> int:
        return len(self.glosses)

    def encode(self, glosses) -> list[int]:
        ids = {g: i + 1 for i, g in enumerate(self.glosses)}
        return [ids.get(g, UNKNOWN) for g in glosses]

    def decode(self, ids) -> list[str]:
        return [self.glosses[i - 1] if 1 <= i <= len(self.glosses) else "<unk>" for i in ids]


@dataclass(frozen=True)
class DataSet:
    root: Path
    sentences: list[Sentence]
    vocabulary: Vocabulary

    def split(self, name: str) -> list[Sentence]:
        return [s for s in self.sentences if s.split == name]

    def unknown(self, name: str) -> tuple[int, int, int]:
        """(unknown tokens, all tokens, unknown types) of a split against the vocabulary."""
        tokens = [g for s in self.split(name) for g in s.glosses]
        bad = [g for g in tokens if g not in set(self.vocabulary.glosses)]
        return len(bad), len(tokens), len(set(bad))


def load_index(root: Path) -> DataSet:
    """Read `root`/annotations.csv, find each sentence's keypoint file, build the vocabulary from
    the train split. Keypoint contents are read later (load_frames), where the sentence is used."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (--data names a data set folder: {ANNOTATIONS} and {KEYPOINTS}/)")
    table = root / ANNOTATIONS
    sentences = []
    for s in read_annotations(table):
        found = [f"{KEYPOINTS}/{s.name}{ext}" for ext in EXTENSIONS if (root / KEYPOINTS / f"{s.name}{ext}").is_file()]
        if not found:
            raise DataError(f"{table}, line {s.line}: no keypoint file for {s.name!r}: expected {root / KEYPOINTS / s.name}.npy or .pose")
        if len(found) > 1:
            raise DataError(f"{table}, line {s.line}: {s.name!r} has both {found[0]} and {found[1]}: keep one")
        sentences.append(Sentence(s.name, s.split, s.glosses, s.line, found[0]))
    for split in ("train", "dev"):
        if not any(s.split == split for s in sentences):
            raise DataError(f"{table}: no {split} sentences (train trains the model, dev WER selects the checkpoint; test is optional)")
    return DataSet(root, sentences, Vocabulary.from_train(sentences))


# ------------------------------------------------------------------------------ synthetic data


def write_synthetic(
    out: Path,
    sentences: int = 48,
    seed: int = 0,
    vocab: int = 8,
    keypoints: int = 6,
    dev: float = 0.25,
    test: float = 0.25,
    dtype: str = "<f4",
    fmt: str = "npy",
) -> list[Sentence]:
    """Write `sentences` of cslr_core.make_dataset's synthetic sentences in this format: gloss k is
    named G<k>, keypoints (frames, keypoints, 2) in .npy (`fmt` "pose": pose-format files), splits
    in the given proportions (the last ones dev, then test). Returns the rows written."""
    from cslr_core import make_dataset

    out = Path(out)
    (out / KEYPOINTS).mkdir(parents=True, exist_ok=True)
    samples = make_dataset(sentences, seed=seed, vocab=vocab, keypoints=keypoints)
    n_test, n_dev = round(sentences * test), round(sentences * dev)
    rows = []
    for i, s in enumerate(samples):
        split = "test" if i >= sentences - n_test else "dev" if i >= sentences - n_test - n_dev else "train"
        name = f"synth{i:05d}"
        if fmt == "pose":
            write_pose(out / KEYPOINTS / f"{name}.pose", s.frames)
        else:
            write_npy(out / KEYPOINTS / f"{name}.npy", (len(s.frames), keypoints, 2), [v for f in s.frames for v in f], dtype)
        rows.append(Sentence(name, split, tuple(f"G{g}" for g in s.glosses), i + 2, f"{KEYPOINTS}/{name}.{fmt}"))
    write_annotations(out / ANNOTATIONS, rows)
    return rows


# ------------------------------------------------------------------------------ OpenPose -> npy

OPENPOSE_PARTS = ("pose_keypoints_2d", "face_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d")


def openpose_frames(files: list[Path], parts=OPENPOSE_PARTS) -> tuple[tuple[int, int, int], list[float]]:
    """Per-frame OpenPose JSON files (`--write_json`) of one sentence, in frame order -> a
    (frames, points, 3) array of x, y, confidence: person 0's `parts` concatenated (25 + 70 + 21 +
    21 = 137 points for the defaults); a frame without a person gives zeros (missing)."""
    values: list[float] = []
    points = None
    for f in files:
        try:
            people = json.loads(Path(f).read_text()).get("people", [])
        except (OSError, ValueError, AttributeError) as exc:
            raise DataError(f"{f}: not an OpenPose JSON file ({exc})") from None
        row = [float(v) for part in parts for v in (people[0].get(part) or [])] if people else []
        if people and points is None:
            points = len(row) // 3
        if points is not None and row and len(row) != 3 * points:
            raise DataError(f"{f}: {len(row) // 3} points for person 0, expected {points} as in the earlier frames")
        values.extend(row or [0.0] * 3 * (points or 0))
    if not points:
        raise DataError(f"{files[0].parent if files else '?'}: no frame has a person")
    frames = len(values) // (3 * points)
    lead = len(files) - frames  # frames before the first person: zeros too
    return (len(files), points, 3), [0.0] * (lead * 3 * points) + values


# ---------------------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="write the synthetic data set in this format")
    s.add_argument("out", type=Path)
    s.add_argument("--sentences", type=int, default=48)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--vocab", type=int, default=8)
    s.add_argument("--keypoints", type=int, default=6)
    s.add_argument("--format", choices=("npy", "pose"), default="npy", help="keypoint files: .npy (standard library) or .pose (needs pose-format)")
    c = sub.add_parser("check", help="read a data set folder (every keypoint file) and summarise it")
    c.add_argument("root", type=Path)
    o = sub.add_parser("from-openpose", help="one sentence's OpenPose JSON frames (a folder, sorted by name) -> .npy")
    o.add_argument("frames", type=Path)
    o.add_argument("out", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "synth":
            rows = write_synthetic(args.out, args.sentences, args.seed, args.vocab, args.keypoints, fmt=args.format)
            print(f"wrote {len(rows)} sentences to {args.out} ({ANNOTATIONS}, {KEYPOINTS}/*.{args.format})")
        elif args.command == "check":
            data = load_index(args.root)
            dims = {len(load_frames(data.root, s.path)[0]) for s in data.sentences}
            if len(dims) > 1:
                raise DataError(f"{args.root}: keypoint files disagree on the number of features per frame: {sorted(dims)}")
            print(f"{args.root}: {len(data.sentences)} sentences, {dims.pop()} features per frame, vocabulary {len(data.vocabulary)} glosses (train)")
            for split in SPLITS:
                bad, tokens, types = data.unknown(split)
                print(f"  {split}: {len(data.split(split))} sentences, {tokens} gloss tokens, {bad} not in the vocabulary ({types} types)")
        else:
            files = sorted(args.frames.glob("*.json"))
            if not files:
                raise DataError(f"{args.frames}: no *.json files (OpenPose --write_json output)")
            shape, values = openpose_frames(files)
            write_npy(args.out, shape, values)
            print(f"{args.out}: {shape[0]} frames, {shape[1]} points")
    except DataError as exc:
        print(f"cslr_data.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
