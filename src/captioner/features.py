"""Feature cache: run the (frozen) encoder once per dataset and keep its outputs on disk.

One directory per (dataset, encoder, weights, input size, grid)::

    <root>/features/<fingerprint>-<encoder>-<weights>-s<input>-g<grid>/
        meta.json    encoder.describe(), image names in row order, fingerprint, failed images, complete flag
        grid.npy     float16 [N, grid_size**2, grid_dim]   (memory-mapped)
        global.npy   float16 [N, global_dim]
        done.npy     bool [N]: rows written so far (flushed after every batch)

Extraction is resumable: an interrupted run leaves ``complete: false`` and its finished rows marked in
``done.npy``; running it again computes only the missing rows. Images that cannot be read do not stop it:
they are listed in meta.json ``failed`` (their rows stay zero, ``done`` False) so training can skip them;
the next run tries them again.

Before writing anything, extraction logs how much disk the cache takes and refuses to start when the disk
has less free; the arrays' blocks are then allocated up front, so a disk that fills up during the run (another
program writing) stops it with a one-line error instead of faulting a write into the map. Features that
overflow float16 stop it. A damaged cache (an array cut short or with a corrupt
header, a meta.json that is not a cache's) is a one-line error naming the file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from captioner.data.readers import dataset_fingerprint, load_dataset
from captioner.data.records import ImageRecord
from captioner.devices import extraction_options, pick_device, trains_on_gpu
from captioner.distributed import barrier, fail_together, merge_dicts, rank_and_world
from captioner.encoders import create_encoder
from captioner.encoders.base import Encoder
from captioner.errors import CaptionerError, file_error
from captioner.io import write_json_atomic

META, GRID, GLOBAL, DONE = "meta.json", "grid.npy", "global.npy", "done.npy"
DTYPE = np.float16
TORCH_DTYPE = torch.float16
FORMAT_VERSION = 1

log = logging.getLogger("captioner")


def default_cache_root() -> Path:
    """``$CAPTIONER_CACHE``, else ``.cache/captioner`` in the user's home folder."""
    return Path(os.environ.get("CAPTIONER_CACHE") or Path.home() / ".cache" / "captioner")


def cache_dir_for(dataset_fingerprint: str, encoder: Encoder, root: str | Path | None = None) -> Path:
    """``<root>/features/<fingerprint>-<name>-<weights>-s<input>-g<grid>`` (name gets ``.<layer>`` if set; a
    mirroring encoder's features, of the images flipped left-right, end in ``-mirror``)."""
    d = encoder.describe()
    key = f"{dataset_fingerprint}-{_encoder_label(d)}-{d['weights']}-s{d['input_size']}-g{d['grid_size']}"
    key += "-mirror" if d.get("mirror") else ""
    return Path(root or default_cache_root()) / "features" / key


# -- reading a cache ------------------------------------------------------------------------------------


@dataclass
class FeatureCache:
    """A finished cache, memory-mapped read-only: ``grid[row]`` is ``[L, C]``, ``global_[row]`` is ``[D]``."""

    directory: Path
    meta: dict
    grid: np.ndarray  # float16 [N, L, C]
    global_: np.ndarray  # float16 [N, D]
    names: list[str] = field(init=False)
    index: dict[str, int] = field(init=False)
    failed: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.names = list(self.meta["names"])
        self.index = {name: row for row, name in enumerate(self.names)}
        self.failed = dict(self.meta.get("failed", {}))

    @classmethod
    def open(cls, out_dir: str | Path, expect: dict | None = None) -> FeatureCache:
        """Open a complete cache; ``expect`` (``encoder.describe()``, optionally + ``fingerprint``) must match."""
        out_dir = Path(out_dir)
        meta = read_meta(out_dir)
        if expect is not None:
            check_matches(out_dir, meta, expect)
        if not meta.get("complete"):
            raise file_error(out_dir, "feature extraction did not finish; re-run `captioner features` to resume it")
        n, enc = len(meta["names"]), meta["encoder"]
        grid = _open_array(out_dir / GRID, (n, enc["grid_size"] ** 2, enc["grid_dim"]), DTYPE)
        global_ = _open_array(out_dir / GLOBAL, (n, enc["global_dim"]), DTYPE)
        return cls(out_dir, meta, grid, global_)

    def __len__(self) -> int:
        return len(self.names)

    def rows(self, names: Sequence[str]) -> list[int]:
        """Row numbers of ``names``; unknown or failed images are an error (skip ``failed`` ones first)."""
        missing = [n for n in names if n not in self.index]
        if missing:
            raise file_error(self.directory, f"{len(missing)} images are not in this feature cache "
                             f"(e.g. {missing[0]}); re-extract features for this dataset")
        unusable = [n for n in names if n in self.failed]
        if unusable:
            raise file_error(self.directory, f"{len(unusable)} images failed to load during extraction "
                             f"(e.g. {unusable[0]}: {self.failed[unusable[0]]}); leave them out")
        return [self.index[n] for n in names]

    def load_rows(self, rows: Sequence[int], dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """Only these rows in RAM: ``(global [n, D], grid [n, L, C])``, in the order given."""
        index = np.asarray(rows, dtype=np.int64)
        global_ = torch.from_numpy(self.global_[index]).to(dtype)  # [n, D]
        grid = torch.from_numpy(self.grid[index]).to(dtype)  # [n, L, C]
        return global_, grid

    def streamed(self, rows: Sequence[int] | None = None) -> dict[str, CacheRows]:
        """The cache's rows (default: all of them) as ``{"global": .., "grid": ..}`` that read from the
        memory-mapped files when indexed (:class:`CacheRows`): nothing is held in this process's memory, and
        several processes reading one cache share the operating system's page cache."""
        index = np.arange(len(self.names)) if rows is None else np.asarray(rows, dtype=np.int64)
        return {"global": CacheRows(self.global_, index), "grid": CacheRows(self.grid, index)}

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the feature arrays (float16)."""
        return int(self.grid.nbytes + self.global_.nbytes)

    def load_all(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """The whole cache in RAM: ``(global [N, D], grid [N, L, C])``, same order as ``forward``."""
        global_ = torch.from_numpy(np.array(self.global_)).to(dtype)  # [N, D]
        grid = torch.from_numpy(np.array(self.grid)).to(dtype)  # [N, L, C]
        return global_, grid


class CacheRows:
    """Some rows of one memory-mapped cache array, read only when asked for.

    ``rows.read(index)`` reads the rows at these positions (a list, array or tensor of positions into this
    view) as a float16 tensor ``[n, ...]``; ``rows[i:j]`` reads a range the same way; ``rows.take(index)`` is
    another view of some of these rows, reading nothing. ``size(0)`` / ``len()`` count the rows. The view
    pickles as its file's path (DataLoader worker processes open the file again instead of copying it).
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def size(self, dim: int | None = None):
        shape = (len(self.rows), *self.array.shape[1:])
        return shape if dim is None else shape[dim]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size()

    def read(self, index) -> Tensor:
        positions = self.rows[np.asarray(index, dtype=np.int64)]  # rows of the file
        return torch.from_numpy(np.ascontiguousarray(self.array[positions]))  # float16 [n, ...]

    def float(self) -> Tensor:
        """All these rows, read now, as one float32 tensor (as a tensor's ``.float()``)."""
        return self[:].float()

    def take(self, index) -> CacheRows:
        return CacheRows(self.array, self.rows[np.asarray(index, dtype=np.int64)])

    def __getitem__(self, key) -> Tensor:
        if isinstance(key, slice):
            return self.read(np.arange(len(self.rows))[key])
        return self.read(key)

    def __reduce__(self):
        return _reopen, (str(self.array.filename), self.rows)


def _reopen(path: str, rows: np.ndarray) -> CacheRows:
    return CacheRows(np.load(path, mmap_mode="r"), rows)


def read_rows(features: Tensor | CacheRows, rows: Tensor) -> Tensor:
    """``features[rows]`` as float32, from a tensor in memory or from the cache on disk."""
    if isinstance(features, CacheRows):
        return features.read(rows.numpy()).float()
    return features[rows].float()


def read_meta(out_dir: Path) -> dict:
    """meta.json, checked for what opening the cache needs (image names, the encoder's feature sizes)."""
    path = out_dir / META
    if not path.is_file():
        raise file_error(out_dir, "no feature cache here (meta.json missing); run `captioner features` first")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise file_error(path, f"unreadable feature-cache metadata ({_one_line(e)}); delete the directory and "
                         "re-extract") from None
    problem = _meta_problem(meta)
    if problem:
        raise file_error(path, f"not a feature cache's metadata ({problem}); delete the directory and re-extract")
    return meta


def _meta_problem(meta) -> str | None:
    """What is wrong with a parsed meta.json, or None."""
    if not isinstance(meta, dict):
        return f"a JSON {type(meta).__name__}, not an object"
    names = meta.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "no 'names' list of image names"
    encoder = meta.get("encoder")
    if not isinstance(encoder, dict):
        return "no 'encoder' object"
    sizes = [k for k in ("grid_size", "grid_dim", "global_dim") if not isinstance(encoder.get(k), int)]
    if sizes:
        return f"the encoder has no {', '.join(sizes)}"
    if not isinstance(meta.get("failed", {}), dict):
        return "'failed' is not an object"
    return None


def check_matches(out_dir: Path, meta: dict, expect: dict) -> None:
    """Refuse a cache made with another encoder, weights, size, grid or dataset than ``expect``."""
    made = _made(meta)
    expect = json.loads(json.dumps(expect))  # tuples -> lists, as stored
    differs = [k for k, v in expect.items() if made.get(k) != v]
    if differs:
        show_fp = "fingerprint" in differs
        raise file_error(out_dir, f"feature cache was made with {_summary(made, show_fp)}, but the config asks "
                         f"for {_summary(expect, show_fp)} (differs in {', '.join(differs)}); "
                         "use another --cache or re-extract")


def _open_array(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The array memory-mapped read-only; a missing, corrupt or truncated file, or another shape or type than
    meta.json says, is a one-line error naming the file."""
    if not path.is_file():
        raise file_error(path, "missing from the feature cache; delete the directory and re-extract")
    problem = _npy_problem(path)
    if problem:
        raise file_error(path, f"{problem}; delete the directory and re-extract")
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise file_error(path, f"unreadable feature array ({_one_line(e)}); delete the directory and "
                         "re-extract") from None
    if array.shape != shape or array.dtype != dtype:
        raise file_error(path, f"holds {array.dtype} {array.shape}, meta.json says {np.dtype(dtype)} {shape}; "
                         "re-extract")
    return array


def _npy_problem(path: Path) -> str | None:
    """What makes a cache file an unusable .npy array, read from its header: not one at all, a corrupt
    header, or fewer bytes than the header announces (e.g. a copy cut off); None when it looks whole."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            data_start = f.tell()
    except OSError as e:
        return f"cannot read it ({e.strerror or _one_line(e)})"
    except (ValueError, EOFError) as e:
        return f"not a .npy array, or a corrupt header ({_one_line(e)})"
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    return f"truncated: {actual} bytes, its header announces {expected}" if actual < expected else None


def _one_line(error: BaseException, limit: int = 100) -> str:
    """An exception's message: its first line, at most ``limit`` characters."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- extraction ---------------------------------------------------------------------------------------


def get_or_extract(records: Sequence[ImageRecord], encoder: Encoder, root: str | Path | None = None, *,
                   fingerprint: str, out_dir: str | Path | None = None, **kw) -> FeatureCache:
    """The cache for these images and this encoder: opened if complete, else extracted (or resumed).

    ``out_dir`` defaults to :func:`cache_dir_for`; ``kw`` go to :func:`extract_features`.
    """
    out_dir = Path(out_dir) if out_dir else cache_dir_for(fingerprint, encoder, root)
    if (out_dir / META).is_file():
        meta = read_meta(out_dir)
        check_matches(out_dir, meta, {**encoder.describe(), "fingerprint": fingerprint})
        if meta.get("complete") and set(meta["names"]) >= {r.name for r in records}:
            return FeatureCache.open(out_dir)
    barrier()  # every process has looked before any of them starts rewriting meta.json
    return extract_features(records, encoder, out_dir, fingerprint=fingerprint, **kw)


def extract_features(records: Sequence[ImageRecord], encoder: Encoder, out_dir: str | Path, *,
                     batch_size: int = 32, num_workers: int = 0, device: str | torch.device = "cpu",
                     progress: bool = True, fingerprint: str | None = None,
                     overwrite: bool = False) -> FeatureCache:
    """Encode every image of ``records`` into ``out_dir`` (resuming a previous run there) and open it.

    A directory holding another encoder's or dataset's features is refused unless ``overwrite``.
    Images decode in ``num_workers`` DataLoader processes (0: in this process). On CUDA the encoder runs
    under fp16 autocast. The encoder's mode and device are restored afterwards.

    In a multi-process run (DDP) the processes share the work: process r encodes every world-th missing
    image starting at r, into the same files; process 0 alone writes meta.json.

    Before writing anything it says (log level INFO) how much disk the cache takes, and stops when the disk
    does not have that much free. Features that overflow float16 stop it too (see :func:`_check_finite`).
    """
    out_dir = Path(out_dir)
    rank, world = rank_and_world()
    paths = unique_images(records)
    names = list(paths)
    with fail_together():  # a refusal in process 0 stops every process; then the files exist
        if rank == 0:
            check_disk_space(out_dir, len(names), encoder)
            meta, resume = _start_meta(out_dir, encoder, names, fingerprint, overwrite)
            arrays = _Arrays.open_or_create(out_dir, len(names), encoder, fresh=not resume)
    if rank != 0:  # the other processes open the files as they are
        meta, arrays = read_meta(out_dir), _Arrays.open_or_create(out_dir, len(names), encoder, fresh=False)
    todo = np.flatnonzero(~arrays.done).tolist()[rank::world]
    images = _ImageFiles([paths[names[row]] for row in todo], todo, encoder.preprocess)
    with fail_together():  # features that overflow in one process stop all of them
        failed = _encode_all(encoder, images, arrays, batch_size, num_workers, torch.device(device),
                             progress and rank == 0, out_dir)
    failed = merge_dicts(failed)  # every process's share
    if rank == 0:
        write_json_atomic(out_dir / META, {**meta, "failed": failed, "complete": True})
        _report_failures(out_dir, failed)
    barrier()
    return FeatureCache.open(out_dir)


def unique_images(records: Sequence[ImageRecord]) -> dict[str, Path]:
    """Image name -> path, in record order; one file listed twice counts once, two files one name is an error."""
    paths: dict[str, Path] = {}
    for record in records:
        seen = paths.setdefault(record.name, record.image)
        if Path(seen) != Path(record.image):
            raise CaptionerError(f"two images share the name {record.name!r} ({seen} and {record.image}); "
                                 "the feature cache indexes images by file name")
    return paths


def cache_bytes(n_images: int, encoder: Encoder) -> int:
    """Bytes a cache of ``n_images`` takes on disk: float16 grid and global features, and done.npy's flags."""
    per_image = (encoder.grid_size**2 * encoder.grid_dim + encoder.global_dim) * np.dtype(DTYPE).itemsize
    return n_images * (per_image + np.dtype(np.bool_).itemsize)


def check_disk_space(out_dir: Path, n_images: int, encoder: Encoder) -> None:
    """Log the cache's size; refuse (one line) when the disk has less free than it needs.

    The arrays of an earlier, interrupted extraction count as free: they are resumed or replaced.
    """
    need = cache_bytes(n_images, encoder)
    log.info("features of %d images: %s in %s", n_images, format_bytes(need), out_dir)
    free = shutil.disk_usage(_existing_parent(out_dir)).free + _bytes_held(out_dir)
    if free < need:
        raise file_error(out_dir, f"needs {format_bytes(need)} for the feature cache, {format_bytes(free)} free")


def format_bytes(n: int) -> str:
    """``24.7 GB``, ``310.2 MB``, ``83.2 kB`` (powers of 1000, as disk sizes are sold)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def _existing_parent(path: Path) -> Path:
    """``path`` or its nearest existing parent folder (the one whose disk the cache will go on)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _bytes_held(out_dir: Path) -> int:
    """Disk space the cache's arrays already take in ``out_dir`` (allocated blocks: the files are sparse until
    their rows are written)."""
    held = 0
    for name in (GRID, GLOBAL, DONE):
        try:
            stat = (out_dir / name).stat()
        except OSError:
            continue
        held += stat.st_blocks * 512 if hasattr(stat, "st_blocks") else stat.st_size
    return held


def _start_meta(out_dir: Path, encoder: Encoder, names: list[str], fingerprint: str | None,
                overwrite: bool) -> tuple[dict, bool]:
    """Write meta.json (incomplete); also say whether the arrays already there belong to it (resume)."""
    meta = {"format": FORMAT_VERSION, "encoder": encoder.describe(), "fingerprint": fingerprint,
            "count": len(names), "names": names, "dtype": np.dtype(DTYPE).name, "failed": {}, "complete": False}
    resume = False
    if (out_dir / META).is_file():
        try:
            old = read_meta(out_dir)
        except CaptionerError:
            if not overwrite:
                raise
            old = {}  # a damaged cache: replaced
        resume = all(old.get(k) == meta[k] for k in ("encoder", "fingerprint", "names", "dtype"))
        if not resume and not overwrite:
            raise file_error(out_dir, f"holds features of {_summary(_made(old), True)} for other images or settings; "
                             "delete it, choose another directory, or pass overwrite=True")
    write_json_atomic(out_dir / META, meta)
    return meta, resume


@dataclass
class _Arrays:
    """The three writable memory-mapped arrays of a cache being filled."""

    grid: np.ndarray
    global_: np.ndarray
    done: np.ndarray

    @classmethod
    def open_or_create(cls, out_dir: Path, n: int, encoder: Encoder, fresh: bool) -> _Arrays:
        specs = {GRID: ((n, encoder.grid_size**2, encoder.grid_dim), DTYPE),
                 GLOBAL: ((n, encoder.global_dim), DTYPE),
                 DONE: ((n,), np.bool_)}
        keep = not fresh and all(_array_fits(out_dir / f, *spec) for f, spec in specs.items())
        if not keep:  # new files (not truncated ones): whoever still maps the old ones keeps valid data
            for f in specs:
                (out_dir / f).unlink(missing_ok=True)
        arrays = {f: np.lib.format.open_memmap(out_dir / f, mode="r+" if keep else "w+", dtype=dtype, shape=shape)
                  for f, (shape, dtype) in specs.items()}  # "w+" starts all zero
        for f in specs:
            _reserve(out_dir / f)
        return cls(arrays[GRID], arrays[GLOBAL], arrays[DONE])

    def store(self, rows: list[int], global_: np.ndarray, grid: np.ndarray) -> None:
        """Write rows, flush them, and only then mark them done (a crash never marks unwritten rows)."""
        self.grid[rows] = grid.astype(DTYPE)
        self.global_[rows] = global_.astype(DTYPE)
        self.grid.flush()
        self.global_.flush()
        self.done[rows] = True
        self.done.flush()


def _reserve(path: Path) -> None:
    """Allocate the blocks of a (sparse) memory-mapped file now: a write into a hole of the map when the disk
    has filled up would kill the process (SIGBUS) instead of raising."""
    if not hasattr(os, "posix_fallocate"):  # (not on macOS or Windows)
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise file_error(path, f"the disk is full ({format_bytes(os.fstat(f.fileno()).st_size)} of "
                                       "features could not be allocated)") from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot: left as it is
                raise


def _array_fits(path: Path, shape: tuple[int, ...], dtype) -> bool:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # missing, damaged or cut short: made anew
        return False
    return array.shape == shape and array.dtype == dtype


class _Item(NamedTuple):
    row: int
    name: str
    image: Tensor | None  # [3, S, S], None when the file could not be read
    error: str | None


class _Batch(NamedTuple):
    rows: list[int]
    names: list[str]  # of the readable images, in the order of rows
    images: Tensor | None  # [b, 3, S, S]: the readable images only
    errors: dict[str, str]
    size: int


class _ImageFiles(Dataset):
    """Decodes and preprocesses one image per item; unreadable files become an error message."""

    def __init__(self, paths: list[Path], rows: list[int], preprocess: Callable) -> None:
        self.paths, self.rows, self.preprocess = paths, rows, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> _Item:
        from captioner.data.images import load_image

        path = Path(self.paths[i])
        try:
            return _Item(self.rows[i], path.name, self.preprocess(load_image(path)), None)
        except (CaptionerError, OSError, ValueError) as e:
            return _Item(self.rows[i], path.name, None, str(e))


def _collate(items: list[_Item]) -> _Batch:
    ok = [it for it in items if it.image is not None]
    images = torch.stack([it.image for it in ok]) if ok else None  # [b, 3, S, S]
    errors = {it.name: it.error for it in items if it.image is None}
    return _Batch([it.row for it in ok], [it.name for it in ok], images, errors, len(items))


def _encode_all(encoder: Encoder, images: _ImageFiles, arrays: _Arrays, batch_size: int, num_workers: int,
                device: torch.device, progress: bool, out_dir: Path) -> dict[str, str]:
    """Run the encoder over ``images`` batch by batch, storing rows as they come; returns the failures."""
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda")
    failed: dict[str, str] = {}
    with _encoder_on(encoder, device), _progress_bar(progress, len(images)) as advance:
        for batch in loader:
            failed.update(batch.errors)
            if batch.images is not None:
                global_, grid = _encode(encoder, batch.images, device)
                _check_finite(global_, grid, batch.names, encoder, out_dir)
                arrays.store(batch.rows, global_, grid)
            advance(batch.size)
    return failed


def _encode(encoder: Encoder, images: Tensor, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
        global_, grid = encoder(images)  # [b, D], [b, L, C]
    # to the cache's dtype in torch: numpy's float32 -> float16 conversion is ~10x slower
    return global_.to(TORCH_DTYPE).cpu().numpy(), grid.to(TORCH_DTYPE).cpu().numpy()


def _check_finite(global_: np.ndarray, grid: np.ndarray, names: list[str], encoder: Encoder,
                  out_dir: Path) -> None:
    """Refuse features that are not finite in float16 (beyond +-65504 they become inf): training on them would
    give NaN losses without a word. (A scale stored with the cache would have to be undone by every reader of
    it, and an encoder whose outputs get that large is broken anyway.) Nothing of this batch is written; the
    rows before it stay done."""
    bad = _non_finite_rows(global_) | _non_finite_rows(grid)  # [b]
    if bad.any():
        name = names[int(np.flatnonzero(bad)[0])]
        raise file_error(out_dir, f"features of {name} overflow float16 (inf/nan) with encoder "
                         f"{_summary(encoder.describe())}: the encoder's outputs are too large for the feature "
                         "cache; use trained weights (encoder.weights) or an encoder whose outputs stay below 65504")


def _non_finite_rows(array: np.ndarray) -> np.ndarray:
    """[b]: whether each row of a float16 array holds an inf or a NaN, i.e. a value whose exponent bits are
    all set (a bit test: 15x faster than ``np.isfinite``, which converts to float32 first)."""
    bits = array.reshape(len(array), -1).view(np.uint16)
    return ((bits & 0x7C00) == 0x7C00).any(axis=1)


@contextmanager
def _encoder_on(encoder: Encoder, device: torch.device) -> Iterator[None]:
    """Eval mode on ``device`` for the duration; the previous mode and device come back afterwards."""
    was_training = encoder.training
    old_device = next(encoder.parameters()).device
    encoder.eval().to(device)
    try:
        yield
    finally:
        encoder.train(was_training).to(old_device)


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (or nothing); yields ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("features"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
               TimeRemainingColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("features", total=total)
        yield lambda n: bar.advance(task, n)


def _report_failures(out_dir: Path, failed: dict[str, str], shown: int = 3) -> None:
    if not failed:
        return
    from rich.console import Console

    console = Console(stderr=True)
    console.print(f"{len(failed)} image(s) could not be read and were skipped "
                  f"(listed under 'failed' in {out_dir / META}):", style="yellow", markup=False)
    for message in list(failed.values())[:shown]:
        console.print(f"  {message}", markup=False, highlight=False)
    if len(failed) > shown:
        console.print(f"  ... and {len(failed) - shown} more", markup=False)


def _made(meta: dict) -> dict:
    """What a cache was made with: ``encoder.describe()`` + ``fingerprint``, from its meta.json."""
    return {**meta.get("encoder", {}), "fingerprint": meta.get("fingerprint")}


def _encoder_label(d: dict) -> str:
    return d["name"] + (f".{d['layer']}" if d.get("layer") else "")


def _summary(d: dict, with_fingerprint: bool = False) -> str:
    """E.g. ``efficientnet_lite0 (imagenet) s224 g7`` (+ ``for dataset <fingerprint>``)."""
    text = f"{_encoder_label(d)} ({d.get('weights')}) s{d.get('input_size')} g{d.get('grid_size')}"
    return text + (f" for dataset {d.get('fingerprint')}" if with_fingerprint else "")


# -- a config's features: the dataset read, the cache opened (or built) for the config's encoder --------------


def config_encoder(cfg):
    """The encoder a config names (``encoder.name``, weights, input size, grid, layer)."""
    e = cfg.encoder
    return create_encoder(e.name, weights=e.weights, input_size=e.input_size, grid_size=e.grid_size, layer=e.layer)


def load_features(cfg, data: str | Path, cache_root: str | Path | None = None, progress: bool = True,
                  device: str | None = None, encoder=None):
    """Read the dataset and open (or build) its feature cache for the config's encoder (``encoder``: that
    encoder, already built).

    Extraction runs on ``device`` (default: the GPU when training would use one, else the CPU).
    """
    dataset = load_dataset(data)
    records = [r for r in dataset.records if r.split]
    encoder = encoder or config_encoder(cfg)
    device = pick_device(device or ("auto" if trains_on_gpu(cfg) else "cpu"))
    cache = get_or_extract(records, encoder, root=cache_root, fingerprint=dataset_fingerprint(dataset),
                           progress=progress, **extraction_options(device))
    return dataset, records, encoder, cache


def load_mirrored_features(cfg, dataset, records, split: str, cache_root: str | Path | None = None,
                           progress: bool = True, device: str | None = None):
    """The feature cache of one split's images flipped left-right (extracted on first use), in a folder of its
    own: the plain cache's name + ``-mirror-<split>``."""
    encoder = config_encoder(cfg)
    encoder.mirror = True
    fingerprint = dataset_fingerprint(dataset)
    out_dir = cache_dir_for(fingerprint, encoder, cache_root)
    device = pick_device(device or ("auto" if trains_on_gpu(cfg) else "cpu"))
    return get_or_extract([r for r in records if r.split == split], encoder, fingerprint=fingerprint,
                          out_dir=out_dir.with_name(f"{out_dir.name}-{split}"), progress=progress,
                          **extraction_options(device))


def split_rows(records, cache, split: str, limit: int | None = None):
    """The records of ``split`` whose features are in the cache (failed images left out), and their rows."""
    chosen = [r for r in records if r.split == split and r.name in cache.index and r.name not in cache.failed]
    chosen = chosen[:limit] if limit else chosen
    return chosen, [cache.index[r.name] for r in chosen]
