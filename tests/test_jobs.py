"""The job-worker template (`medssl.jobs.CacheItemWorker`) on its own, with a tiny fake worker whose
item is one uint8 array: the bytes of a text file."""

from __future__ import annotations

import csv
import os
import pickle
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zarr

from medssl.cache import store as cache_mod
from medssl.errors import MedsslError
from medssl.jobs import DONE, FAILED, SKIPPED, CacheItemWorker, Job, SourceFingerprint, Written, run_jobs

KIND = "things"


class Boom(MedsslError):
    """Raised by the fake worker where a test asks it to fail."""


class ByteWorker(CacheItemWorker):
    """Caches a file's bytes as ``data``; ``fail_in`` makes one step raise, ``events`` records the order."""

    kind = KIND

    def __init__(self, out: Path, fail_in: str = ""):
        self.out, self.fail_in, self.events = Path(out), fail_in, []

    def manifest_extra(self, job):
        return {"note": job.fields.get("note", "")}

    def source(self, job):
        self.events.append("source")
        return SourceFingerprint.of(job.path).as_dict()

    def skipped_count(self, previous, source):
        return previous["n"]

    @contextmanager
    def prepare(self, job, source):
        if self.fail_in == "prepare":
            raise Boom(f"{job.path}: cannot prepare")
        self.events.append("enter")
        try:
            yield np.frombuffer(job.path.read_bytes(), dtype=np.uint8)
        finally:
            committed = cache_mod.complete_attrs(self.open_root(), KIND, job.item_id)
            self.events.append(f"exit:{'committed' if committed and committed['source'] == source else 'open'}")

    def write(self, group, job, data, progress):
        group.create_array("data", data=data)
        progress(len(data))
        self.events.append("write")
        if self.fail_in == "write":
            raise Boom(f"{job.path}: failed half-way")
        if self.fail_in == "interrupt":
            raise KeyboardInterrupt
        attrs = {"source": SourceFingerprint.of(job.path).as_dict(), "n": len(data)}
        return Written(attrs, len(data), {"size": len(data)})

    def after_commit(self, job, written, progress):
        self.events.append("after_commit")


@pytest.fixture
def out(tmp_path) -> Path:
    cache_mod.open_for_writing(tmp_path / "cache", KIND, {"v": 1})
    return tmp_path / "cache"


def write_file(path: Path, text: str, mtime_ns: int) -> Path:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def committed(out: Path, item_id: str) -> tuple[dict, bytes] | None:
    root = zarr.open_group(cache_mod.store_path(out), mode="r")
    attrs = cache_mod.complete_attrs(root, KIND, item_id)
    return None if attrs is None else (attrs, root[f"{KIND}/{item_id}/data"][:].tobytes())


def staging_leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in (cache_mod.store_path(out) / cache_mod.STAGING / KIND).iterdir() if p.is_dir())


def test_done_then_skipped_then_redone_when_the_source_changes(out, tmp_path):
    job = Job("a", write_file(tmp_path / "a.txt", "hello", 10**18), {"note": "x"})
    units: list[int] = []
    worker = ByteWorker(out)

    first = worker(job, units.append)
    assert (first.status, first.reason, first.count, first.extra) == (DONE, "", 5, {"note": "x", "size": 5})
    assert worker.events == ["source", "enter", "write", "exit:committed", "after_commit"]
    assert units == [5]
    attrs, data = committed(out, "a")
    assert data == b"hello" and attrs["n"] == 5 and attrs["source"] == SourceFingerprint.of(job.path).as_dict()
    assert staging_leftovers(out) == []

    worker.events.clear()
    second = worker(job, units.append)
    assert (second.status, second.reason, second.count, second.extra) == (SKIPPED, "already complete", 5, {"note": "x"})
    assert worker.events == ["source"]  # nothing prepared, nothing written
    assert units == [5]

    write_file(job.path, "hello, world", 2 * 10**18)
    third = worker(job, units.append)
    assert (third.status, third.count) == (DONE, 12)
    assert committed(out, "a")[1] == b"hello, world"
    assert staging_leftovers(out) == []


@pytest.mark.parametrize("fail_in", ["write", "interrupt"])
def test_a_failed_write_keeps_the_previous_version_and_leaves_no_staging(out, tmp_path, fail_in):
    job = Job("a", write_file(tmp_path / "a.txt", "first", 10**18))
    ByteWorker(out)(job, lambda n: None)
    before = committed(out, "a")
    write_file(job.path, "second version", 2 * 10**18)

    worker = ByteWorker(out, fail_in=fail_in)
    with pytest.raises(Boom if fail_in == "write" else KeyboardInterrupt):
        worker(job, lambda n: None)
    assert worker.events == ["source", "enter", "write", "exit:open"]  # not committed; no after_commit
    assert committed(out, "a") == before
    assert staging_leftovers(out) == []

    new = Job("b", write_file(tmp_path / "b.txt", "never", 10**18))
    with pytest.raises(Boom if fail_in == "write" else KeyboardInterrupt):
        ByteWorker(out, fail_in=fail_in)(new, lambda n: None)
    assert committed(out, "b") is None
    assert not (cache_mod.store_path(out) / KIND / "b").exists()
    assert staging_leftovers(out) == []


def test_a_failed_prepare_stages_nothing(out, tmp_path):
    leftover = cache_mod.store_path(out) / cache_mod.STAGING / KIND / "a"
    leftover.mkdir()  # from a killed run: only a new staging of the item discards it
    job = Job("a", write_file(tmp_path / "a.txt", "data", 10**18))
    with pytest.raises(Boom, match="cannot prepare"):
        ByteWorker(out, fail_in="prepare")(job, lambda n: None)
    assert committed(out, "a") is None and staging_leftovers(out) == ["a"]


def test_runs_in_the_job_runner_and_pickles_without_an_open_store(out, tmp_path):
    worker = ByteWorker(out, fail_in="")
    clone = pickle.loads(pickle.dumps(worker))
    assert vars(clone) == vars(worker)
    jobs = [Job("a", write_file(tmp_path / "a.txt", "abc", 10**18), {"note": "n"}), Job("gone", tmp_path / "gone.txt")]
    manifest = tmp_path / "manifest.csv"
    results = run_jobs(jobs, worker, manifest, unit="bytes", progress=False, extra_fields=("note", "size"))
    assert [r.status for r in results] == [DONE, FAILED]
    with open(manifest, newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert (rows["a"]["status"], rows["a"]["bytes"], rows["a"]["note"], rows["a"]["size"]) == (DONE, "3", "n", "3")
    assert "gone.txt" in rows["gone"]["reason"]
    again = run_jobs(jobs[:1], ByteWorker(out), manifest, unit="bytes", progress=False)
    assert [(r.status, r.count) for r in again] == [(SKIPPED, 3)]
