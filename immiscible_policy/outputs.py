"""What the commands write, and the rules that keep them from destroying anything else.

Why: ``immiscible-convert SRC DEST overwrite=true`` used to ``rmtree(DEST)`` whatever DEST held (a user's
folder, even the parent of SRC), and a full disk or a read-only folder ended a command in a traceback.
The rules, as safetensors and LeRobot keep them (they refuse to write over what they did not create):

* a folder a command creates as its output carries :data:`MARKER` (``.immiscible-output``: the command,
  version and the files it wrote); ``overwrite=true`` replaces only an empty folder or a marked one that
  holds no file added since (:func:`check_replaceable`);
* a source and its destination nested either way are refused (:func:`check_not_nested`);
* the output is built in a hidden sibling and renamed into place at the end (:func:`staged_dir`): an
  interrupted command leaves the old output as it was; the partial sibling it leaves carries the marker
  and the next run removes it;
* output locations are checked writable before any work (:func:`check_writable`), and an ``OSError``
  (disk full, read-only, permission) becomes one line, ``cannot write PATH: <reason>`` (:func:`os_error_line`).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from immiscible_policy.run_log import normal_mode

MARKER = ".immiscible-output"
_PARTIAL = ".partial-"
_OLD = ".old-"
#: errnos that only a write gives (a permission error may come from a read: it is "cannot access")
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}
_FIX = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EFBIG: "write to another file system",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "write elsewhere or fix the folder's permissions",
    errno.EPERM: "write elsewhere or fix the folder's permissions",
}


class NotWritableError(OSError):
    """An output location failed the check before any work (:func:`check_writable`)."""


def os_error_line(exc: OSError) -> str:
    """One line for an ``OSError``: ``cannot write PATH: No space left on device; free some space ...``.

    "cannot write" for :func:`check_writable`'s error and the errnos only a write gives (disk full,
    read-only); "cannot access" for the rest, since e.g. ``EACCES`` may come from a read."""
    path = exc.filename if exc.filename is not None else "?"
    reason = exc.strerror or str(exc) or type(exc).__name__
    verb = "write" if isinstance(exc, NotWritableError) or exc.errno in WRITE_ERRNOS else "access"
    fix = _FIX.get(exc.errno)
    return f"cannot {verb} {path}: {reason}" + (f"; {fix}" if fix else "")


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_writable(path: str | os.PathLike) -> None:
    """Raise :class:`NotWritableError` naming ``path`` unless a file can be created there (``path`` or,
    when it does not exist yet, its nearest existing parent folder).

    Why a real probe (a temporary file, removed at once) rather than ``os.access``: ``access`` answers
    for the real user id, says yes to root on any folder a permission bit closes, and cannot tell a full
    disk from a read-only one; a created file is the answer the command's own writes will get."""
    path = Path(path)
    folder = _existing_ancestor(path)
    if not folder.is_dir():
        raise NotWritableError(errno.ENOTDIR, f"{folder} is a file, not a folder", str(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".immiscible-write-test-", dir=folder)
    except OSError as err:
        raise NotWritableError(err.errno, err.strerror or str(err), str(path)) from None
    os.close(fd)
    os.unlink(probe)


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative, sorted), the marker excepted."""
    found = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())
    return sorted(f for f in found if f != MARKER)


def write_marker(folder: str | os.PathLike, command: str, *, list_files: bool = False) -> Path:
    """``folder/.immiscible-output``: which command (and version) wrote this folder, when, and (with
    ``list_files``) the files it wrote, so that a file added later by hand is never replaced."""
    from immiscible_policy import __version__

    path = Path(folder) / MARKER
    record = {"command": command, "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if list_files:
        record["files"] = _files(Path(folder))
    path.write_text(json.dumps(record) + "\n")
    return path


def has_marker(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MARKER).is_file()


def _added_files(folder: Path) -> list[str]:
    """Files in a marked ``folder`` that its marker does not list (added after the command wrote it)."""
    try:
        listed = json.loads((folder / MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if not isinstance(listed, list):
        return []  # a marker without a list (a partial folder): the whole folder is ours
    return sorted(set(_files(folder)) - set(listed))


def check_not_nested(
    src: str | os.PathLike, dest: str | os.PathLike, error: type[Exception] = ValueError
) -> None:
    """Refuse a destination that is the source, inside it, or holds it (symlinks resolved): replacing
    such a destination would delete the source."""
    a, b = Path(src).resolve(), Path(dest).resolve()
    if a == b or a in b.parents:
        raise error(f"DEST {dest} is inside SRC {src}; write the output outside the source.")
    if b in a.parents:
        raise error(f"DEST {dest} holds SRC {src}; replacing it would delete the source: pick another DEST.")


def check_replaceable(
    dest: str | os.PathLike, *, overwrite: bool, command: str, error: type[Exception] = ValueError
) -> None:
    """Whether ``dest`` may become ``command``'s output: absent, or (with ``overwrite``) an empty folder
    or one carrying :data:`MARKER`; anything else is a one-line ``error`` naming what is there."""
    dest = Path(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    if not overwrite:
        raise error(f"{dest} already exists; pick a new folder or pass overwrite=true")
    if dest.is_symlink() or not dest.is_dir():
        kind = "a symbolic link" if dest.is_symlink() else "a file"
        raise error(
            f"{dest} is {kind}; overwrite=true replaces only a folder {command} wrote: pick another destination."
        )
    marked = has_marker(dest)
    held = _added_files(dest) if marked else sorted(p.name for p in dest.iterdir())
    if held:
        example = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        why = "added after it wrote the folder" if marked else f"no {MARKER}"
        raise error(
            f"{dest} holds files {command} did not write ({example}; {why}); overwrite=true replaces "
            "only an empty folder or an earlier output: pick another destination or move them away yourself."
        )


def _remove_stale(dest: Path) -> None:
    """Partial siblings of ``dest`` left by a killed run: ours only (named so, and carrying the marker)."""
    for entry in dest.parent.iterdir():
        ours = entry.name.startswith(f".{dest.name}{_PARTIAL}")
        if ours and entry.is_dir() and not entry.is_symlink() and has_marker(entry):
            shutil.rmtree(entry, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(tmp: Path, dest: Path) -> None:
    """Put ``tmp`` at ``dest``, removing what ``dest`` held (already checked replaceable)."""
    if not (dest.exists() or dest.is_symlink()):
        os.rename(tmp, dest)
        return
    if _exchange(tmp, dest):  # atomic: dest is never absent; tmp now holds the old output
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = dest.with_name(f".{dest.name}{_OLD}{os.getpid()}-{time.monotonic_ns()}")
    os.rename(dest, old)  # elsewhere: two renames, dest absent for the moment between them
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(
    dest: str | os.PathLike, command: str, *, overwrite: bool = False, keep_marker: bool = True
) -> Iterator[Path]:
    """Yield a hidden sibling folder of ``dest`` to write the output into; swap it in at the end.

    Before the swap an existing ``dest`` is checked again (:func:`check_replaceable`: it may have changed
    while the output was written); the swap is one atomic exchange on Linux (two renames elsewhere) and
    the previous output is removed after it. On an error or a kill ``dest`` is untouched; the sibling is
    removed at once (after a kill: by the next run, since it carries the marker). ``keep_marker=False``
    drops the marker from the finished folder (one that must hold exactly a format's files; it can then
    be replaced only while empty)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_PARTIAL}", dir=dest.parent))
    try:
        os.chmod(tmp, normal_mode(directory=True))  # not mkdtemp's 0o700
        write_marker(tmp, command)
        yield tmp
        if keep_marker:
            write_marker(tmp, command, list_files=True)
        else:
            (tmp / MARKER).unlink()
        check_replaceable(dest, overwrite=overwrite, command=command)
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
