"""Checkpoints shared by both trainers: safetensors weights, JSON config, ``weights_only`` training state.

Layout (lerobot-style)::

    run_dir/checkpoints/00001000/{model.safetensors, ema.safetensors?, config.json, normalizer.json?,
                                  training_state.pt}
    run_dir/checkpoints/last -> 00001000      (relative symlink, replaced atomically)

Why this shape: weights in safetensors load without executing code; the config and normaliser are plain
JSON that a human can read; only the optimiser / scheduler / EMA / RNG state goes through ``torch.save`` and
it is loaded back with ``weights_only=True`` (never dill or full pickle, unlike diffusion_policy).

Atomicity: a checkpoint is built in ``checkpoints/.tmp-*`` and renamed to its final name in one
``os.rename``, so a reader (or a resumed run after ``kill -9``) never sees a half-written checkpoint under a
step name. Stale ``.tmp-*`` dirs left by a killed writer are ignored by readers and deleted on the next save.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from immiscible_policy.finite import non_finite
from immiscible_policy.run_log import normal_mode

CHECKPOINTS_DIR = "checkpoints"
LAST = "last"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
NORMALIZER_FILE = "normalizer.json"
TRAINING_STATE_FILE = "training_state.pt"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE, TRAINING_STATE_FILE)
_TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint path is missing, empty, incomplete or unreadable (one-line message)."""


@dataclass
class Checkpoint:
    """Everything a checkpoint holds, loaded on the CPU. ``path`` is the resolved step directory."""

    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    config: dict[str, Any]
    normalizer: dict[str, Any] | None
    training_state: dict[str, Any]
    path: Path

    @property
    def step(self) -> int:
        """The step number this checkpoint was saved at (its directory name, else its config's ``step``)."""
        return step_of(self.path, self.config)

    def select_weights(self, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
        """(state dict, where it came from for messages): the EMA weights when asked for and present."""
        if use_ema and self.ema_state is not None:
            return self.ema_state, f"checkpoint {self.path} ({EMA_FILE})"
        return self.model_state, f"checkpoint {self.path} ({MODEL_FILE})"


# ----------------------------------------------------------------------------------------------- writing


def _tensor_dict(state: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Detached, contiguous, CPU, un-shared copies: safetensors refuses views and tied storage."""
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what} must map str -> Tensor; key {key!r} has {type(value).__name__}")
        out[key] = value.detach().to("cpu").contiguous().clone()
    return out


def _to_json(value: Any) -> Any:
    """Tensors and numpy arrays/scalars become (nested) lists/numbers, so a normaliser can be JSON."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


def _write_json(path: Path, value: Mapping[str, Any], what: str) -> None:
    try:
        text = json.dumps(_to_json(value), indent=2)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{what} is not JSON-serialisable: {err}") from err
    path.write_text(text + "\n")


def _write_bytes(path: Path, data: bytes) -> None:
    """Write through Python's own file I/O: a full disk or a read-only folder is then an ``OSError``
    naming ``path`` (safetensors and ``torch.save`` report it as their own exception types)."""
    with open(path, "wb") as f:
        f.write(data)


def _save_tensors(path: Path, state: Mapping[str, torch.Tensor], what: str) -> None:
    _write_bytes(path, save_safetensors(_tensor_dict(state, what), metadata={"format": "pt"}))


def _save_torch(path: Path, value: Any) -> None:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    _write_bytes(path, buffer.getvalue())


def _non_finite_part(parts: Mapping[str, Any]) -> str | None:
    """``'<part>: <entry> holds nan'`` for the first part (absent ones skipped) holding NaN or inf; None."""
    for what, value in parts.items():
        found = non_finite(value) if value is not None else None
        if found:
            return f"{what}: {found}"
    return None


def _refuse_non_finite(step: int, parts: Mapping[str, Any]) -> None:
    """Never save a diverged state: ``keep_last`` prunes only after a save, so the newest checkpoint (the
    one pruning keeps) is then always a finite one."""
    found = _non_finite_part(parts)
    if found:
        raise CheckpointError(
            f"refusing to save checkpoint {step}: {found} (a diverged run); the checkpoints "
            "already saved stay as they are."
        )


def _fsync(path: Path) -> None:
    """Flush a file or directory to disk (so a power loss after the rename cannot leave empty files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clean_stale_temp(ckpt_dir: Path) -> None:
    for entry in ckpt_dir.iterdir():
        if entry.name.startswith(_TMP_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    ema_state: Mapping[str, torch.Tensor] | None = None,
    config: Mapping[str, Any],
    normalizer: Mapping[str, Any] | None = None,
    training_state: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/<step:08d>/`` atomically, point ``last`` at it, prune; return its path.

    ``training_state`` (optimiser, scheduler, EMA, RNG, counters) must hold only types that
    ``torch.load(weights_only=True)`` accepts; it is re-read that way before the rename, so a bad type fails
    here at save time rather than at resume. ``keep_last=N`` keeps this checkpoint plus the N-1 others with
    the highest steps. Saving a step that already exists replaces it.
    """
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise CheckpointError(f"step must be a non-negative int, got {step!r}")
    if keep_last is not None and keep_last < 1:
        raise CheckpointError(f"keep_last must be >= 1 or None, got {keep_last}")
    _refuse_non_finite(
        int(step),
        {
            "model_state": model_state,
            "ema_state": ema_state,
            "normalizer": normalizer,
            "training_state": training_state,
        },
    )
    ckpt_dir = Path(run_dir) / CHECKPOINTS_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_temp(ckpt_dir)
    name = f"{int(step):08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=ckpt_dir))
    try:
        _save_tensors(tmp / MODEL_FILE, model_state, "model_state")
        if ema_state is not None:
            _save_tensors(tmp / EMA_FILE, ema_state, "ema_state")
        _write_json(tmp / CONFIG_FILE, config, "config")
        if normalizer is not None:
            _write_json(tmp / NORMALIZER_FILE, normalizer, "normalizer")
        _save_torch(tmp / TRAINING_STATE_FILE, dict(training_state))
        try:
            torch.load(tmp / TRAINING_STATE_FILE, weights_only=True, map_location="cpu", mmap=True)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"training_state cannot be loaded with weights_only=True: {first}") from err
        # mkdtemp makes the dir 0o700 and safetensors writes 0o600 files: give them the modes any new
        # file / dir gets under the umask, so that the group can read results as usual
        for file in tmp.iterdir():
            os.chmod(file, normal_mode())
            _fsync(file)
        os.chmod(tmp, normal_mode(directory=True))
        _fsync(tmp)
        final = ckpt_dir / name
        if final.exists():  # re-saving a step: move the old one aside first (rename onto a dir fails)
            old = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-{name}-", dir=ckpt_dir))
            os.replace(final, old / name)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_last_at(ckpt_dir, name)
    _fsync(ckpt_dir)
    _clean_stale_temp(ckpt_dir)
    if keep_last is not None:
        _prune(ckpt_dir, keep=name, keep_last=keep_last)
    return final


def _point_last_at(ckpt_dir: Path, name: str) -> None:
    """Replace ``last`` by a relative symlink to ``name`` in one ``os.replace`` (no moment without it).

    A ``last`` that is a real directory (a run copied with ``cp -rL``, which copies the link's target)
    is a copy of a step dir: it is moved aside as a temp dir (removed by the next clean-up) first."""
    last = ckpt_dir / LAST
    if last.is_dir() and not last.is_symlink():
        os.rename(last, Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}copied-last-", dir=ckpt_dir)) / LAST)
    tmp_link = ckpt_dir / f"{_TMP_PREFIX}last-{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    os.symlink(name, tmp_link)
    os.replace(tmp_link, last)


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    """Step-named directories (all digits), sorted by step; temp dirs and ``last`` are excluded."""
    dirs = [p for p in ckpt_dir.iterdir() if p.name.isdigit() and p.is_dir() and not p.is_symlink()]
    return sorted(dirs, key=lambda p: int(p.name))


def _prune(ckpt_dir: Path, *, keep: str, keep_last: int) -> None:
    others = [p for p in _step_dirs(ckpt_dir) if p.name != keep]
    for path in others[: max(0, len(others) - (keep_last - 1))]:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- reading


def _missing_files(step_dir: Path) -> list[str]:
    return [f for f in REQUIRED_FILES if not (step_dir / f).is_file()]


def step_of(step_dir: Path, config: Mapping[str, Any]) -> int:
    """A checkpoint's step: its directory's name, or (a directory not named by its step, e.g. a ``last``
    copied as a real directory by ``cp -rL``) the ``step`` its config.json records; one line otherwise."""
    if step_dir.name.isdigit():
        return int(step_dir.name)
    step = config.get("step")
    if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
        return step
    raise CheckpointError(
        f"checkpoint {step_dir}: cannot tell its step (the folder is not named by a step number and "
        f"{CONFIG_FILE} records none); pass its step folder, {CHECKPOINTS_DIR}/<step>."
    )


def _copied_last(last: Path) -> Path:
    """The step dir a real-directory ``last`` (a ``cp -rL`` copy) stands for, by its config's step: that
    step dir when present and complete, else the copy itself."""
    try:
        step = json.loads((last / CONFIG_FILE).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return last.resolve()
    twin = last.parent / f"{step:08d}" if isinstance(step, int) else None
    return (
        twin.resolve() if twin is not None and twin.is_dir() and not _missing_files(twin) else last.resolve()
    )


def _latest_in(ckpt_dir: Path) -> Path | None:
    """``last``'s target when it is complete, else the highest complete step dir, else None."""
    last = ckpt_dir / LAST
    if last.is_dir() and not _missing_files(last):
        return last.resolve() if last.is_symlink() else _copied_last(last)
    for path in reversed(_step_dirs(ckpt_dir)):
        if not _missing_files(path):
            return path.resolve()
        warnings.warn(f"skipping incomplete checkpoint {path} (missing {_missing_files(path)})", stacklevel=3)
    return None


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint (resolved step dir) of a run dir or a checkpoints dir; None if none."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    if ckpt_dir.is_dir():
        return _latest_in(ckpt_dir)
    return _latest_in(run_dir) if run_dir.is_dir() else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Map a run dir, a checkpoints dir, ``last`` or a step dir to a complete step dir (or raise)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path does not exist: {path}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path is not a directory: {path}")
    # A run dir may hold its own config.json: only weight / state files mark a step dir.
    if not (path / CHECKPOINTS_DIR).is_dir() and any(
        (path / f).exists() for f in (MODEL_FILE, EMA_FILE, TRAINING_STATE_FILE)
    ):
        missing = _missing_files(path)
        if missing:
            raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
        return path.resolve()
    found = find_latest(path)
    if found is None:
        raise CheckpointError(
            f"no checkpoint in {path}: expected {CHECKPOINTS_DIR}/<step>/ with {', '.join(REQUIRED_FILES)}"
        )
    return found


def _read(path: Path, loader, what: str):
    try:
        return loader(path)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read {what} {path}: {first}") from err


def _read_json(p: Path) -> Any:
    return json.loads(p.read_text())


def _read_config(step_dir: Path) -> dict[str, Any]:
    config = _read(step_dir / CONFIG_FILE, _read_json, "config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"checkpoint {step_dir}: {CONFIG_FILE} must hold a JSON object, got {type(config).__name__}; "
            "the file is damaged or was not written by a trainer"
        )
    return config


def read_config(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(step dir, its config.json) without loading any weights (for checks before a full load)."""
    step_dir = resolve_checkpoint(path)
    return step_dir, _read_config(step_dir)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint on the CPU; ``path`` may be a run dir, its checkpoints dir, ``last`` or a step dir."""
    step_dir = resolve_checkpoint(path)
    ema_path, norm_path = step_dir / EMA_FILE, step_dir / NORMALIZER_FILE

    def read_state(p: Path) -> Any:
        return torch.load(p, weights_only=True, map_location="cpu")

    ck = Checkpoint(
        model_state=_read(step_dir / MODEL_FILE, load_file, "model weights"),
        ema_state=_read(ema_path, load_file, "EMA weights") if ema_path.exists() else None,
        config=_read_config(step_dir),
        normalizer=_read(norm_path, _read_json, "normalizer") if norm_path.exists() else None,
        training_state=_read(step_dir / TRAINING_STATE_FILE, read_state, "training state"),
        path=step_dir,
    )
    step_of(step_dir, ck.config)  # a copied `last` without a recorded step fails here, before any use
    _check_finite(ck)
    return ck


def _check_finite(ck: Checkpoint) -> None:
    """Refuse NaN / inf weights, normaliser or optimiser state at load time (resume, eval, sample,
    analyze), before they become a run that trains on nan or a rollout that scores 0."""
    parts = {
        MODEL_FILE: ck.model_state,
        EMA_FILE: ck.ema_state,
        NORMALIZER_FILE: ck.normalizer,
        TRAINING_STATE_FILE: ck.training_state,
    }
    found = _non_finite_part(parts)
    if found:
        raise CheckpointError(
            f"checkpoint {ck.path} holds non-finite numbers ({found}); it comes from a diverged "
            f"run or is damaged: use an earlier checkpoint ({ck.path.parent}/<step>) or train again."
        )


# ------------------------------------------------------------------------------------- checks before use

#: What each trainer's config.json must hold for a checkpoint to be rebuilt: section -> required keys.
CONFIG_SCHEMAS: dict[str, dict[str, tuple[str, ...]]] = {
    "policy": {"cfg": ("assigner", "model", "trainer", "task"), "policy": ("obs_dim", "action_dim")},
    "image": {"cfg": ("assigner", "model", "trainer"), "image": ("image_size", "channels", "num_classes")},
}


def check_config(config: Mapping[str, Any], where: str | os.PathLike, writer: str) -> None:
    """One-line :class:`CheckpointError` when ``config`` lacks what the ``writer`` trainer
    (``policy`` / ``image``) records, instead of a ``KeyError`` deep in the rebuild."""
    missing = []
    for section, keys in CONFIG_SCHEMAS[writer].items():
        value = config.get(section)
        if not isinstance(value, Mapping):
            missing.append(section)
        else:
            missing += [f"{section}.{k}" for k in keys if k not in value]
    if missing:
        raise CheckpointError(
            f"checkpoint {where}: {CONFIG_FILE} lacks {', '.join(missing)}; it was not written by the "
            f"{writer} trainer (or the file is damaged)"
        )


ALLOW_IMPORT_ENV = "IMMISCIBLE_ALLOW_IMPORT"


def import_allowed(allow_import: bool | None = None) -> bool:
    """An explicit ``allow_import`` wins; ``None`` reads ``IMMISCIBLE_ALLOW_IMPORT`` (1/true/yes)."""
    if allow_import is not None:
        return bool(allow_import)
    return os.environ.get(ALLOW_IMPORT_ENV, "").strip().lower() in ("1", "true", "yes")


def check_assigner(
    config: Mapping[str, Any], where: str | os.PathLike, allow_import: bool | None = None
) -> None:
    """Refuse a checkpoint whose assigner is not a registered strategy (built-in, entry-point plugin or
    in-process registration) unless the user opted in.

    Why: rebuilding the model creates the assigner from config.json, and a ``module:Class`` name there
    is imported, so a downloaded checkpoint could run any installed module. On the training command line
    ``module:Class`` stays allowed (the user typed it); from a file it needs ``allow_import``.
    """
    from immiscible_policy import objectives, registry

    cfg = config.get("cfg")
    cfg = cfg if isinstance(cfg, Mapping) else {}
    section, trainer = cfg.get("assigner"), cfg.get("trainer")
    names = [("assigner", section.get("name") if isinstance(section, Mapping) else None, registry.available)]
    if isinstance(trainer, Mapping):  # the objective is a strategy too (objectives/), imported the same way
        for key in ("objective", "prediction_type"):
            names.append((f"objective (trainer.{key})", trainer.get(key), objectives.available))
    for what, name, registered in names:
        if (
            not isinstance(name, str)
            or ":" not in name
            or import_allowed(allow_import)
            or name in registered()
        ):
            continue  # a missing / unknown plain name fails later in its registry without importing anything
        raise CheckpointError(
            f"checkpoint {where}: {what} {name!r} is not a registered strategy, and loading it would "
            f"import module {name.partition(':')[0]!r}; if you trust this checkpoint, pass allow_import=true "
            f"(or set {ALLOW_IMPORT_ENV}=1), or install the plugin that registers it"
        )


def weights_mismatch_message(err: BaseException, where: str) -> str:
    """One line from ``load_state_dict``'s multi-line RuntimeError: the first problem and how many more."""
    lines = [ln.strip() for ln in str(err).strip().splitlines()[1:] if ln.strip()] or [str(err).strip()]
    first = lines[0]
    size = re.match(
        r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[.*?\])\)",
        first,
    )
    if size:
        first = f"size mismatch for {size[1]} (checkpoint {size[2]}, model {size[3]})"
    elif len(first) > 200:
        first = first[:200] + "..."
    more = f" and {len(lines) - 1} more" if len(lines) > 1 else ""
    return (
        f"{where}: the weights do not fit the model its {CONFIG_FILE} describes: {first}{more}; "
        "was it written by a different model config (or code version)?"
    )


def load_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``model.load_state_dict(state)`` (strict), with a mismatch as one-line :class:`CheckpointError`."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(weights_mismatch_message(err, where)) from None


# ----------------------------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, numpy, python) as ``weights_only``-loadable tensors/ints/lists.

    Per-rank ``torch.Generator`` objects are not global: store ``generator.get_state()`` (a uint8 tensor)
    next to this dict and restore it with ``generator.set_state``.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured; CUDA states are restored only when CUDA is available."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    keys = np.asarray(npst["keys"].numpy() if isinstance(npst["keys"], torch.Tensor) else npst["keys"])
    np.random.set_state(
        (npst["name"], keys.astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) != torch.cuda.device_count():
            warnings.warn(
                f"checkpoint has {len(cuda_states)} CUDA RNG states, this machine has "
                f"{torch.cuda.device_count()} devices; restoring the first ones",
                stacklevel=2,
            )
        for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
