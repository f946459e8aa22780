"""Batch machinery shared by every command that turns a cohort into cache items (``medssl tile``,
``medssl cache-volumes``, ``medssl embed``).

Inputs (files, folders, globs, CSV manifests) become :class:`Job` s; a job array splits them with
``--shard i/n`` and no coordination; jobs run in-process or across worker processes; every finished
job appends one row to the run's manifest at once, so a killed run keeps the record of what it did.
One job failing never stops the others. :class:`CacheItemWorker` is the one way a job becomes a cache
item: skipped when its source is unchanged, else staged and committed atomically.
"""

from __future__ import annotations

import csv
import glob
import multiprocessing as mp
import os
import queue
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import zarr
from tqdm.auto import tqdm

from medssl.cache import store as cache_mod
from medssl.errors import InputError, MedsslError

DONE, SKIPPED, FAILED = "done", "skipped", "failed"
MANIFEST_FIELDS = ("id", "path", "status", "reason", "{unit}", "seconds")


@dataclass
class Job:
    """One input item: an id (the cache key), its main file, and any extra CSV columns."""

    item_id: str
    path: Path
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """What a job reports back; ``count`` is tiles for slides, voxels or slices for volumes."""

    item_id: str
    path: str
    status: str
    reason: str = ""
    count: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, unit: str = "count") -> dict[str, Any]:
        return {
            "id": self.item_id,
            "path": self.path,
            "status": self.status,
            "reason": self.reason,
            unit: self.count,
            "seconds": f"{self.seconds:.3f}",
            **self.extra,
        }


@dataclass
class RunSummary:
    """What one preprocessing run did; ``manifest`` is the CSV it wrote."""

    out: Path
    manifest: Path
    results: list[Result]

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status == FAILED]

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in (DONE, SKIPPED, FAILED)}


def manifest_path(out: Path, shard: tuple[int, int]) -> Path:
    """manifest.csv, or manifest.shard-i-of-n.csv so concurrent shards never share a file."""
    index, count = shard
    return out / ("manifest.csv" if count == 1 else f"manifest.shard-{index}-of-{count}.csv")


@dataclass(frozen=True)
class SourceFingerprint:
    """What identifies a source file's content cheaply: a changed file gets re-tiled on resume."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "SourceFingerprint":
        st = os.stat(path)
        return cls(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)

    def as_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


# -- inputs ---------------------------------------------------------------------------------------
def collect_jobs(
    inputs: Sequence[str | os.PathLike],
    suffixes: Iterable[str],
    id_column: str,
    path_column: str,
    extra_columns: Sequence[str] = (),
    path_columns: Sequence[str] = (),
    find: Callable[[Path], list[Path]] | None = None,
    item_id: Callable[[Path], str] | None = None,
    canonical: Callable[[Path], Path] | None = None,
) -> list[Job]:
    """Jobs from files, folders, glob patterns and CSV manifests.

    Folders are searched by ``find`` (default: files ending in one of ``suffixes``, recursively). A path
    that does not exist still becomes a job, so its failure is reported in the manifest with the
    others. IDs come from ``item_id`` (default: the file name without its suffixes) unless a CSV gives
    them; duplicates are refused. CSV columns in ``path_columns`` are paths relative to the CSV.
    ``canonical`` maps a found or given file to the file that stands for its item (e.g. any instance of a
    DICOM series to one chosen instance), so the files of one item become one job.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    find = find or (lambda folder: files_with_suffixes(folder, suffixes))
    item_id = item_id or (lambda p: strip_suffixes(p, suffixes))
    canonical = canonical or (lambda p: p)
    jobs: list[Job] = []
    for raw in inputs:
        text = str(raw)
        path = Path(text)
        if path.suffix.lower() == ".csv" and path.is_file():
            jobs.extend(read_csv_jobs(path, id_column, path_column, extra_columns, path_columns))
        elif path.is_dir() and path.suffix.lower() not in suffixes:
            found = find(path)
            if not found:
                raise InputError(f"{path}: folder holds no inputs (looked for {', '.join(suffixes)})")
            jobs.extend(Job(item_id(c), c) for c in map(canonical, found))
        elif any(ch in text for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True))
            if not found:
                raise InputError(f"{text}: glob pattern matches no file")
            jobs.extend(Job(item_id(c), c) for c in map(canonical, found))
        else:
            path = canonical(path)
            jobs.append(Job(item_id(path), path))
    _refuse_duplicates(jobs)
    return jobs


def files_with_suffixes(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files below ``folder`` (not in hidden folders) whose name ends in one of ``suffixes``."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes) and not _hidden(p, folder)
    )


def strip_suffixes(path: Path, suffixes: tuple[str, ...]) -> str:
    """'case_01.nii.gz' -> 'case_01' when '.nii.gz' is a known suffix; else the stem."""
    name = path.name
    for suffix in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_csv_jobs(
    csv_path: Path,
    id_column: str,
    path_column: str,
    extra_columns: Sequence[str] = (),
    path_columns: Sequence[str] = (),
) -> list[Job]:
    """Rows of a CSV manifest; relative paths (the main one and ``path_columns``) are taken from the CSV's folder."""
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        for required in (id_column, path_column):
            if required not in columns:
                raise InputError(f"{csv_path}: missing column {required!r} (has {columns})")
        jobs = []
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not row[id_column] or not row[path_column]:
                raise InputError(f"{csv_path}:{line}: empty {id_column!r} or {path_column!r}")
            path = Path(row[path_column])
            if not path.is_absolute():
                path = csv_path.parent / path
            extras = {k: row[k] for k in extra_columns if row.get(k)}
            for column in path_columns:
                if column in extras and not Path(extras[column]).is_absolute():
                    extras[column] = str(csv_path.parent / extras[column])
            jobs.append(Job(row[id_column], path, extras))
    return jobs


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _refuse_duplicates(jobs: list[Job]) -> None:
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.item_id in seen and seen[job.item_id] != job.path:
            raise InputError(
                f"two inputs share the id {job.item_id!r}: {seen[job.item_id]} and {job.path}; "
                "give unique ids in a CSV manifest"
            )
        seen[job.item_id] = job.path
    # The same file listed twice is one job.
    unique = {job.item_id: job for job in jobs}
    jobs[:] = list(unique.values())


def parse_shard(text: str | None) -> tuple[int, int]:
    """'2/8' -> (2, 8); shards are numbered from 0."""
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not (count >= 1 and 0 <= index < count):
        raise InputError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def select_shard(jobs: Sequence[Job], shard: tuple[int, int]) -> list[Job]:
    """Round-robin over jobs sorted by id: shards are disjoint, cover everything and balance counts."""
    index, count = shard
    ordered = sorted(jobs, key=lambda job: job.item_id)
    return ordered[index::count]


# -- one job, one cache item ---------------------------------------------------------------------
class Written(NamedTuple):
    """What :meth:`CacheItemWorker.write` staged: the attrs to commit it with, and its manifest entries."""

    attrs: dict[str, Any]  #: recorded on the committed item (include its ``source``)
    count: int  #: the manifest count (tiles, slices, rows)
    extra: dict[str, Any]  #: manifest columns known only once written, added to :meth:`manifest_extra`'s


class CacheItemWorker(ABC):
    """Turns one :class:`Job` into one committed cache item of ``kind``; a callable for :func:`run_jobs`.

    A call opens the store, fingerprints the job's source, and returns SKIPPED when a committed item
    was made from exactly that source; otherwise it prepares the item, writes it into a staging group
    and commits it by atomic rename, then returns DONE. An exception while writing leaves the previous
    committed version, if any, and no staging leftover; a kill leaves the old version or the new one
    (and a leftover that the next staging of the item wipes). Subclasses say only what differs:
    :meth:`source`, :meth:`skipped_count` and :meth:`write`, and where needed :meth:`prepare`,
    :meth:`manifest_extra` and :meth:`after_commit`. To run in worker processes a subclass must be
    picklable: keep paths and parameters, not open stores (:meth:`open_root` opens ``out`` once per
    process; the open store is never pickled). A skipped job reads only its item's ``zarr.json``.
    """

    kind: ClassVar[str]  #: the store group the items go to: "slides", "volumes", "embeddings"
    skip_reason: ClassVar[str] = "already complete"  #: the manifest reason of a skipped job
    out: Path  #: the cache folder written to (used by the default :meth:`open_root`)
    _root: zarr.Group | None = None  #: the store :meth:`open_root` opened in this process

    def __call__(self, job: Job, progress: Callable[[int], None]) -> Result:
        root = self.open_root()
        extra = self.manifest_extra(job)
        source = self.source(job)
        previous = cache_mod.unchanged_item(root, self.kind, job.item_id, source)
        if previous is not None:
            count = self.skipped_count(previous, source)
            return Result(job.item_id, str(job.path), SKIPPED, self.skip_reason, count, 0.0, extra)
        with self.prepare(job, source) as prepared:
            with cache_mod.staged_item(root, self.kind, job.item_id) as group:
                written = self.write(group, job, prepared, progress)
                cache_mod.commit_item(root, self.kind, job.item_id, written.attrs)
        self.after_commit(job, written, progress)
        return Result(job.item_id, str(job.path), DONE, "", written.count, 0.0, {**extra, **written.extra})

    # -- hooks --------------------------------------------------------------------------------
    def open_root(self) -> zarr.Group:
        """The store to write into, opened on first use in each process and kept (a worker process
        cannot share an open one; :meth:`__getstate__` leaves it out)."""
        if self._root is None:
            self._root = zarr.open_group(cache_mod.store_path(self.out), mode="r+")
        return self._root

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_root"}

    def manifest_extra(self, job: Job) -> dict[str, Any]:
        """Manifest columns of the job whatever happens to it (skipped or done)."""
        return {}

    @abstractmethod
    def source(self, job: Job) -> Mapping[str, Any]:
        """The fingerprint of what the item is made from; an unchanged one means the item is skipped.
        Checks that the inputs exist belong here (they fail the job before anything is written)."""

    @abstractmethod
    def skipped_count(self, previous: Mapping[str, Any], source: Mapping[str, Any]) -> int:
        """The manifest count of a skipped job, from the committed item's attrs (or its source)."""

    def prepare(self, job: Job, source: Mapping[str, Any]) -> AbstractContextManager[Any]:
        """Everything that may fail before a staging group exists (loading, planning), as a context
        manager whose value is handed to :meth:`write` and which stays open (e.g. a slide handle) until
        the item is committed. Default: nothing to prepare (``None``)."""
        return nullcontext()

    @abstractmethod
    def write(self, group: zarr.Group, job: Job, prepared: Any, progress: Callable[[int], None]) -> Written:
        """Write the item's arrays (and any side files that must exist before the commit) into the
        staging ``group``; report units to ``progress`` as they are written."""

    def after_commit(self, job: Job, written: Written, progress: Callable[[int], None]) -> None:
        """Runs once the item is committed (e.g. to report progress only for committed work)."""
        return None


# -- running --------------------------------------------------------------------------------------
class _QueueProgress:
    """A picklable progress callback that forwards counts from a worker to the main process."""

    def __init__(self, queue: Any):
        self.queue = queue

    def __call__(self, n: int) -> None:
        self.queue.put(n)


#: What a pool worker process runs, installed once per process by :func:`_install` (not sent per job).
_installed: tuple[Callable[[Job, Callable[[int], None]], Result], _QueueProgress] | None = None


def _install(work: Callable[[Job, Callable[[int], None]], Result], queue: Any) -> None:
    """Pool initializer: unpickle ``work`` once per worker process, so per job only the job travels,
    and an open store (:meth:`CacheItemWorker.open_root`) is reused by every job of that process."""
    global _installed
    _installed = (work, _QueueProgress(queue))


def _run_installed(job: Job) -> Result:
    if _installed is None:  # cannot happen: the pool's initializer installs it
        raise RuntimeError("no work installed in this worker process")
    work, progress = _installed
    return _guarded(work, job, progress)


def _guarded(work: Callable[[Job, Callable[[int], None]], Result], job: Job, progress: Callable) -> Result:
    """Run one job; any exception becomes a failed Result with a one-line reason."""
    start = time.perf_counter()
    try:
        result = work(job, progress)
    except MedsslError as exc:
        result = Result(job.item_id, str(job.path), FAILED, str(exc))
    except Exception as exc:  # an internal bug must not stop the cohort; keep the traceback's last line
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        result = Result(job.item_id, str(job.path), FAILED, f"{job.path}: internal error: {last}")
    result.seconds = time.perf_counter() - start
    return result


def run_jobs(
    jobs: Sequence[Job],
    work: Callable[[Job, Callable[[int], None]], Result],
    manifest_path: Path,
    workers: int = 1,
    unit: str = "tiles",
    desc: str = "slides",
    progress: bool = True,
    extra_fields: Sequence[str] = (),
) -> list[Result]:
    """Run ``work`` on every job, appending each result to ``manifest_path`` as soon as it is known.

    ``work`` must be a picklable top-level callable when ``workers > 1``; it receives the job and a
    callback to report units of progress (tiles, slices) for the second progress bar. The manifest
    has a column named after ``unit`` with each job's count.
    """
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    fields = [f.format(unit=unit) for f in MANIFEST_FIELDS]
    fields += [f for f in extra_fields if f not in fields]
    results: list[Result] = []
    disable = not progress
    with (
        open(manifest_path, "w", newline="") as handle,
        tqdm(total=len(jobs), desc=desc, unit=desc.rstrip("s"), position=0, disable=disable) as item_bar,
        tqdm(desc=unit, unit=unit.rstrip("s"), position=1, disable=disable) as unit_bar,
    ):
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        handle.flush()

        def record(result: Result) -> None:
            results.append(result)
            writer.writerow(result.row(unit))
            handle.flush()
            item_bar.update(1)
            if result.status == FAILED:
                tqdm.write(f"FAILED {result.item_id}: {result.reason}")

        if workers <= 1:
            for job in jobs:
                record(_guarded(work, job, unit_bar.update))
        else:
            _run_pool(jobs, work, workers, record, unit_bar)
    return results


def _run_pool(jobs, work, workers, record, unit_bar) -> None:
    context = mp.get_context("spawn")  # OpenSlide handles and Zarr's event loop do not survive fork
    progress = context.Queue()  # a plain pipe: no Manager process to start and call per update
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_install, initargs=(work, progress)) as pool:
        futures: dict[Future, Job] = {pool.submit(_run_installed, job): job for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            _drain(progress, unit_bar)
            for future in done:
                job = futures[future]
                try:
                    record(future.result())
                except Exception as exc:  # the worker process died (e.g. a crash inside a C library)
                    record(Result(job.item_id, str(job.path), FAILED, f"{job.path}: worker died ({exc})"))
    _drain(progress, unit_bar)
    progress.close()


def _drain(progress: Any, bar: tqdm) -> None:
    total = 0
    while True:
        try:
            total += progress.get_nowait()
        except queue.Empty:
            break
    if total:
        bar.update(total)
