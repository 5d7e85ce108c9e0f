"""A full or read-only disk (issue 12): prepare refuses to start when the cache's disk lacks room for the
store, says so before the data scan when the cache cannot be written, and a disk that fills up during the
run ends it with one clear error (never a SIGBUS: memory-mapped arrays are preallocated), leaving a
partial folder that resumes, once space is freed, into a store equal to an uninterrupted one.

A real small tmpfs is mounted where the system allows it (CI runs as root); elsewhere those tests are
skipped and the fakes at the end (ENOSPC raised at a chosen write) still run."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import core.pipeline
import core.store
from core.config import ExperimentConfig
from core.pipeline import PrepareError, prepare
from core.store import StoreError, check_store, list_stores
from tests.reliability.test_bad_input import cli, config, error_line, write_toml
from tests.reliability.test_crash_safety import identical_stores

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]
ID = "full"


def small() -> dict:
    return config(None, {"data.per_class": 3, "prepare.batch_size": 2})  # chunks of 8 images


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("reference")
    return prepare(ExperimentConfig.from_dict(small()), ID, cache_dir=cache, show_bars=False)


def _mount(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs: ``tmpfs(options) -> folder``; unmounted (lazily: maps may still be open)."""
    mounted = []

    def mount(options: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        if not _mount(where, options):
            pytest.skip("mounting a tmpfs is not permitted here (the fake-ENOSPC tests below still run)")
        mounted.append(where)
        return where
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_too_small_disk_is_refused_before_writing(tmpfs, tmp_path, capsys, monkeypatch):
    disk = tmpfs("size=2m")  # the estimate of this store is about 5 MB
    monkeypatch.setenv("NVE_MIN_FREE_DISK_BYTES", "1")
    toml = write_toml(small(), tmp_path / "small.toml")
    rc, out, err = cli(capsys, "--cache", str(disk), "prepare", "--quiet", "--config", str(toml), "--out", ID)
    assert rc == 2, err
    line = error_line(err)
    assert "not enough free disk" in line and f"the disk of {disk}" in line and "MB free" in line, line
    assert list_stores(disk) == [] and not list((disk / f".partial-{ID}" / "work").iterdir())


def test_min_free_disk_is_kept(tmp_path, capsys, monkeypatch):
    """The server's reserve (``min_free_disk_bytes``) counts too: a reserve larger than any disk refuses."""
    monkeypatch.setenv("NVE_MIN_FREE_DISK_BYTES", str(1 << 60))
    with pytest.raises(PrepareError, match="must stay free"):
        prepare(ExperimentConfig.from_dict(small()), ID, cache_dir=tmp_path, show_bars=False)


def test_read_only_cache_is_refused_before_the_data_scan(tmpfs, capsys, monkeypatch):
    disk = tmpfs("size=1m,ro")

    def scan(*a, **k):
        raise AssertionError("the data scan must not start")
    monkeypatch.setattr(core.pipeline.Context, "build", scan)
    with pytest.raises(StoreError, match="is not writable"):
        prepare(ExperimentConfig.from_dict(small()), ID, cache_dir=disk / "cache", show_bars=False)
    rc, _, err = cli(capsys, "--cache", str(disk), "prepare", "--preset", "demo", "--out", ID)
    assert rc == 2 and "is not writable" in error_line(err) and "--cache" in error_line(err)


LAUNCHER = """
import os, sys
import core.pipeline as P
cache, at, leave = sys.argv[1], sys.argv[2], int(sys.argv[3])
real = P.pause_point
def fill(name):  # another writer fills the disk here, leaving `leave` bytes
    if name == at:
        with open(os.path.join(cache, "ballast"), "wb") as f:
            st = os.statvfs(cache)
            os.posix_fallocate(f.fileno(), 0, max(st.f_bavail * st.f_frsize - leave, 1))
    real(name)
P.pause_point = fill
from core.cli import main
sys.exit(main(sys.argv[4:]))
"""


def test_disk_full_mid_run_is_one_error_then_resumes(tmpfs, reference, tmp_path, capsys, monkeypatch):
    disk = tmpfs("size=8m")
    monkeypatch.setenv("NVE_MIN_FREE_DISK_BYTES", "1")
    args = ["--cache", str(disk), "prepare", "--quiet", "--out", ID, "--config",
            str(write_toml(small(), tmp_path / "small.toml"))]
    # 1. the disk fills up after the clean pass: the attack's memory-mapped array cannot be allocated. Run
    #    as a process: without preallocation this was a SIGBUS (exit 135) with no message
    run = subprocess.run([sys.executable, "-c", LAUNCHER, str(disk), "clean:24", str(16 << 10), *args],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, (run.returncode, run.stderr)
    line = error_line(run.stderr)
    assert line.startswith(f"the disk of {disk} is full: free ") and "run the same command again to resume" \
        in line, line
    assert "Traceback" not in run.stderr and list_stores(disk) == []
    (disk / "ballast").unlink()
    # 2. the resumed run meets a full disk again while writing the pair table (in this process)
    real = core.pipeline.pause_point

    def fill(name):
        if name == "tsne:adversarial":
            with open(disk / "ballast", "wb") as f:
                os.posix_fallocate(f.fileno(), 0, _free(disk))
        real(name)
    monkeypatch.setattr(core.pipeline, "pause_point", fill)
    rc, out, err = cli(capsys, *args)
    assert rc == 2 and "resuming the interrupted prepare" in err, err
    assert error_line(err).startswith(f"the disk of {disk} is full"), err
    assert list_stores(disk) == [] and not list(disk.glob(f".partial-{ID}/.*.tmp-*"))
    (disk / "ballast").unlink()
    monkeypatch.setattr(core.pipeline, "pause_point", real)
    # 3. space freed: the same command resumes where it stopped and publishes the same store
    rc, out, err = cli(capsys, *args)
    assert rc == 0, err
    assert "resuming the interrupted prepare" in err and "attack 0" not in err
    assert check_store(disk / ID).ok
    identical_stores(disk / ID, reference)


@pytest.mark.parametrize("where", ["memmap", "state"])
def test_fake_enospc_is_one_error_then_resumes(reference, tmp_path, monkeypatch, where):
    """Without a tmpfs: ENOSPC raised by the preallocation of the attack's array, or by the progress
    record (state.json) of the features stage; then the same call resumes into an equal store."""
    cfg = ExperimentConfig.from_dict(small())
    monkeypatch.setenv("NVE_MIN_FREE_DISK_BYTES", "1")
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "memmap":
        real = core.store.preallocate

        def preallocate(fd, size):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("adv_images.npy"):
                raise full
            real(fd, size)
        monkeypatch.setattr(core.store, "preallocate", preallocate)
    else:
        real = core.store.atomic_write_json

        def write(path, obj):
            if path.name == "state.json" and "features_done" in obj:
                raise full
            real(path, obj)
        monkeypatch.setattr(core.store, "atomic_write_json", write)
    with pytest.raises(PrepareError, match=f"the disk of {tmp_path} is full: free .* MB and run the same "
                                           "command again to resume"):
        prepare(cfg, ID, cache_dir=tmp_path, show_bars=False)
    monkeypatch.undo()
    seen: list = []
    prepare(cfg, ID, cache_dir=tmp_path, show_bars=False, progress=lambda s, d, t: seen.append((s, d)))
    assert ("clean", 0) not in seen  # resumed
    identical_stores(tmp_path / ID, reference)
