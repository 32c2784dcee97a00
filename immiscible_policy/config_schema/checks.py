"""Checks of one value that need another module's knowledge (the objectives' registry, the video writers,
the FID resize modes, the loggers), and the plain-name rule for names that become paths."""

from __future__ import annotations

import re
from typing import Any

from immiscible_policy.config_schema.fields import RESUME_CHOICES, Rule, bad_value, show, suggest

# ------------------------------------------------------------------------------------- checks of one value
# Imports inside these functions: the modules that know the answer (the objectives' registry, the video
# writers, the FID resize modes, the loggers) are heavier than this schema and not needed to read it.


def _check_objective(key: str, value: Any) -> None:
    """Any objective the noising core accepts (built-in, registered plugin or ``module:Class``), asked
    of :func:`~immiscible_policy.noising.trainer_objective`; the list in the error is the registry's."""
    from immiscible_policy.noising import trainer_objective

    try:
        trainer_objective({"objective": value})
    except ValueError:
        from immiscible_policy.objectives import available

        names = tuple(available())
        rule = Rule("", "choice", example="epsilon", choices=names, note="or module.path:ClassName")
        near = suggest(str(value), list(names))
        hint = f" (did you mean {near}?)" if near else ""
        raise bad_value(key, value, f"is not supported{hint}", rule) from None


def _check_objective_params(key: str, value: Any) -> None:
    """null or a mapping of setting names (the objective checks the values when it is built)."""
    from collections.abc import Mapping

    if value is None or (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)):
        return
    raise ValueError(
        f"{key}={show(value)} is not a mapping of the objective's settings; use e.g. "
        f"'{key}={{sigma_max: 80}}', or null for none."
    )


def _check_video(key: str, value: Any) -> None:
    from immiscible_policy.video import check_format

    check_format(value, key)  # mp4 needs imageio-ffmpeg installed


def _check_resize(key: str, value: Any) -> None:
    try:
        from immiscible_policy.metrics.fid import check_resize
    except ImportError:  # the FID module is optional; the evaluation reports its absence itself
        return
    check_resize(value, key)


def resume_value(value: Any) -> str:
    """``resume`` as ``"false"``, ``"true"`` or ``"auto"``; a one-line error for anything else."""
    if value is None or value is False:
        return "false"
    if value is True:
        return "true"
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        return value.lower()
    raise ValueError(
        f"resume={show(value)} is not supported; use {RESUME_CHOICES} (auto: continue when run_dir has a "
        "checkpoint, else start a new run there)."
    )


def _check_resume(key: str, value: Any) -> None:
    resume_value(value)


def _check_run_dir(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"run_dir={show(value)} is not a path; set run_dir=runs/<name>.")


def _check_logger(key: str, value: Any) -> None:
    from immiscible_policy.loggers import check_logger

    check_logger(value)  # the dashboards' packages, before any data is loaded


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def check_plain_name(
    key: str, value: Any, used_in: str = "run directory names", example: str = "pusht_small"
) -> None:
    """A name that becomes part of a path (``task.name`` in ``runs/<task>-<assigner>-<time>``) is a plain
    name: letters, digits, ``_ . + -``, no ``/`` and no ``..``; ``task.name=../../../outside`` used to
    write the run outside ``runs/``."""
    if not isinstance(value, str) or not _PLAIN_NAME.match(value) or ".." in value:
        raise ValueError(
            f"{key}={show(value)} is used in {used_in}; use a plain name (letters, digits, '_', '.', '-'; "
            f"no '/' and no '..'), e.g. {key}={example}."
        )
