"""atomic_write: all or nothing, and files with the permissions a plain open() would give."""

from __future__ import annotations

import os

import pytest

from earlyprune.atomic import atomic_write


def test_a_new_file_gets_the_umask_mode_and_an_existing_file_keeps_its_own(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "new.bin"
        atomic_write(path, lambda f: f.write(b"one"))
        assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o640)
        atomic_write(path, lambda f: f.write(b"two"))
        assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep.bin"
    atomic_write(path, lambda f: f.write(b"good"))

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"good" and sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"]
