"""Shared by tests/test_faults.py and tests/test_faults_cli.py (imported by name: tests/ has no packages)."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hydra import compose, initialize_config_dir

from immiscible_policy.cli._hydra import config_dir

#: the one-line reason a read-only folder gives: permission bits (a user) or the file system (root)
READ_ONLY_REASON = (
    r"(Permission denied; write elsewhere or fix|Read-only file system; the file system is read-only)"
)


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def read_only_folder(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """A folder nothing can be created in (for a fixture). As root, permission bits stop nothing (root
    writes anyway), so there the file system's answer is simulated: creating a file under it fails with
    EROFS, as on a read-only mount."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    yield folder


class CountingExtractor:
    """A stand-in for the Inception network: 8 features per image, from its pixels."""

    resize = "tf1"
    preprocessing_id = weights_id = "test"

    def __call__(self, images):
        return images.flatten(1)[:, :8].double().numpy()
