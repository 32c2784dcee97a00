"""``key=value`` argument parsing shared by the non-Hydra CLIs (eval, sample, analyze)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from omegaconf import OmegaConf


def parse_kv(
    argv: list[str], options: tuple[str, ...], *, positional: bool = False
) -> tuple[dict, list[str]]:
    """Split ``argv`` into known ``key=value`` options and (if allowed) positional words; one-line errors."""
    words = [a for a in argv if "=" not in a]
    if words and not positional:
        raise ValueError(f"arguments are key=value pairs (e.g. checkpoint=runs/x); got {words[0]!r}.")
    kv = [a for a in argv if "=" in a]
    opts = OmegaConf.to_container(OmegaConf.from_dotlist(kv)) if kv else {}
    unknown = sorted(set(opts) - set(options))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(options)}.")
    for key in PATH_KEYS & set(opts):
        opts[key] = path_option(key, opts[key])
    return opts, words


#: options that name a file or folder, in every key=value command
PATH_KEYS = frozenset({"checkpoint", "output", "output_dir", "npz", "out", "dataset_path"})


def path_option(key: str, value: object) -> str:
    """A path option as text; ``npz=true`` or ``output=[a,b]`` is a one-line error, not a traceback."""
    if isinstance(value, (bool, dict, list)) or value is None or value == "":
        raise ValueError(f"{key}={value!r}: give a file or folder path.")
    return str(value)


def int_option(opts: dict, key: str, default: int, minimum: int | None = None) -> int:
    """``opts[key]`` (or ``default``) as an int, one line naming the key when it is not one or too small."""
    value = opts.get(key, default)
    hint = f"an integer >= {minimum}" if minimum is not None else "an integer"
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{key}={value!r}: use {hint}.")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r}: use {hint}.") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{key}={number}: use {hint}.")
    return number


def bool_option(opts: dict, key: str, default: bool) -> bool:
    """``opts[key]`` (or ``default``) as a bool: true/false, yes/no, 1/0; anything else is an error."""
    value = opts.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"{key}={value!r}: use true or false.")


def require_checkpoint(opts: dict) -> None:
    if "checkpoint" not in opts:
        raise ValueError("missing checkpoint=PATH (a run dir, its checkpoints/ dir, 'last' or a step dir).")


def error_line(exc: BaseException) -> str:
    """``error: ...`` for one of our one-line errors, or for an ``OSError`` (disk full, read-only,
    permission: ``cannot write PATH: <reason>``, see :func:`immiscible_policy.outputs.os_error_line`)."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        from immiscible_policy.outputs import os_error_line

        return f"error: {os_error_line(exc)}"
    return f"error: {exc}"


def run_kv_cli(doc: str, argv: list[str] | None, work: Callable[[list[str]], str]) -> int:
    """Shared ``main``: ``-h`` prints ``doc``; ``work(argv)`` returns the line to print; our one-line
    errors (ValueError / FileNotFoundError) and OS errors (:func:`error_line`) go to stderr with exit
    code 2, never as a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(doc)
        return 0
    try:
        line = work(argv)
    except (ValueError, OSError) as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    print(line)
    return 0
