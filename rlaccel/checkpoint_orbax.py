"""Checkpoints through orbax-checkpoint: sharded, multi-host and asynchronous saves, verified restores.

The public API is ``rlaccel.checkpoint``; this is its JAX / orbax half, imported on the
first save or restore (the layout and the header are ``rlaccel.checkpoint_format``).

* Saving: orbax's ``CheckpointManager`` writes the state (``StandardSave``) and the header
  (``JsonSave``) into a temp directory and commits the step by renaming it into place;
  :class:`_DurableRename` fsyncs every file first and the parent directory after, as
  ``rlaccel.fileio.atomic_write`` does. ``LatestN(keep)`` deletes the oldest only after the
  new step is committed. Arrays every process holds whole (one process, or replicated
  across hosts) are handed to orbax as host copies, which process 0 writes; an array split
  over hosts is handed over as the ``jax.Array``, each process writing its own shards.
* Restoring: the header is checked against the template (same array paths, shapes, dtypes)
  before orbax reads anything, and every restored array against its sha256 after.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from rlaccel import checkpoint_format as fmt
from rlaccel.checkpoint_format import CheckpointError, DamagedCheckpointError
from rlaccel.fileio import fsync

__all__ = ["make_manager", "read_arrays", "restore", "save"]


def make_manager(directory: Path, keep: int, asynchronous: bool) -> ocp.CheckpointManager:
    """An orbax manager of ``directory`` (created if missing; stale temp directories removed)."""
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=asynchronous,
        step_prefix=fmt.PREFIX,
        step_format_fixed_length=fmt.DIGITS,
        cleanup_tmp_directories=True,  # what a process killed mid-save left
        save_root_metadata=False,
        # (deprecated for atomicity_options, which takes a mode, not a class: the only way in
        # for the fsyncs and the test pause below; orbax 0.12.8 still honours it)
        temporary_path_class=_DurableRename,
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=(fmt.STATE, "meta"))


def save(manager: ocp.CheckpointManager, update: int, state: Any, meta: dict[str, Any]) -> None:
    """Start writing ``state`` (any pytree of arrays) as the checkpoint of ``update``.

    Returns once the arrays are copied to the host (the caller may then donate or change
    ``state``); an asynchronous manager commits in the background (``wait_until_finished``).
    A multi-process run calls this in every process with its part of the same state.
    """
    paths, leaves, treedef = _flatten(state)
    host = _host_values(leaves)
    header = fmt.make_header(meta, {p: _facts(h) for p, h in zip(paths, host)})
    item = [h if _whole_here(x) else x for x, h in zip(leaves, host)]
    if update in manager.all_steps():  # re-saving an update (the old format overwrote it too)
        manager.delete(update)
    args = ocp.args.Composite(**{fmt.STATE: ocp.args.StandardSave(jax.tree.unflatten(treedef, item)), "meta": ocp.args.JsonSave(header)})
    manager.save(update, args=args, force=True)


def restore(path: Path, target: Any) -> tuple[Any, dict[str, Any]]:
    """The checkpoint at ``path`` in ``target``'s structure, and its meta (``rlaccel.checkpoint.restore``).

    A leaf of ``target`` that is a ``jax.Array`` (or a ``ShapeDtypeStruct`` with a sharding)
    is restored onto its sharding, each process reading its own shards; any other leaf
    (numpy, ``jax.eval_shape``'s output) as a numpy array.
    """
    header = fmt.read_header(path)
    paths, leaves, treedef = _flatten(target)
    _check_compatible(path, header["leaves"], dict(zip(paths, leaves)))
    abstract = [jax.ShapeDtypeStruct(np.shape(x), _dtype(x), sharding=_sharding(x)) for x in leaves]
    restore_args = [
        ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype) if a.sharding is not None else ocp.RestoreArgs(restore_type=np.ndarray)
        for a in abstract
    ]
    restored = _orbax_restore(path, jax.tree.unflatten(treedef, abstract), jax.tree.unflatten(treedef, restore_args))
    _verify(path, dict(zip(paths, jax.tree.leaves(restored))), header)
    return restored, header["meta"]


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the checkpoint at ``path`` as ``{"/agent/params/...": array}``, verified,
    without a template (inspection, tests)."""
    header = fmt.read_header(path)
    try:
        tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(_state_dir(path))).tree
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise many types for damaged files
        raise DamagedCheckpointError(f"{path}: checkpoint is damaged ({fmt.STATE}/ metadata is unreadable: {_one_line(e)})") from None
    restored = _orbax_restore(path, None, jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))
    paths, leaves, _ = _flatten(restored)
    arrays = dict(zip(paths, leaves))
    if set(arrays) != set(header["leaves"]):
        raise DamagedCheckpointError(f"{path}: checkpoint is damaged ({fmt.STATE}/ holds other arrays than {fmt.HEADER} lists)")
    _verify(path, arrays, header)
    return arrays


# --------------------------------------------------------------------------------------------


class _DurableRename(ocp.path.atomicity.AtomicRenameTemporaryPath):
    """orbax's commit by rename, made durable: every file of the temp directory is fsynced
    before the rename and the parent directory after it (a power cut keeps the old step or
    the new one). Also the place of the ``PAUSE_ENV`` test hook: all written, nothing committed."""

    async def finalize(self) -> None:
        tmp, final = Path(self.get()), Path(self.get_final())
        if not final.name.startswith(f"{fmt.PREFIX}_"):  # an item (state/, meta/) inside the step
            return await super().finalize()
        await asyncio.to_thread(_fsync_tree, tmp)
        pause = os.environ.get(fmt.PAUSE_ENV, "").strip()
        if pause.isdigit() and final.name == fmt.name(int(pause)):
            (tmp / fmt.PAUSED).touch()
            while True:  # until killed
                time.sleep(1.0)
        await super().finalize()
        await asyncio.to_thread(fsync, final.parent)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for f in files:
            fsync(Path(folder) / f)
        fsync(Path(folder))




def _state_dir(path: Path) -> Path:
    """The checkpoint's orbax directory, absolute: orbax reads absolute paths only, and
    ``rlaccel export --run runs/x`` names a relative one."""
    return Path(path).absolute() / fmt.STATE


def _orbax_restore(path: Path, item: Any, restore_args: Any) -> Any:
    try:
        return ocp.PyTreeCheckpointer().restore(_state_dir(path), args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args))
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise many types for damaged files
        reason = _one_line(e)
    quiet_abandoned_reads()  # the reads orbax abandoned mid-flight report nothing when collected
    raise DamagedCheckpointError(f"{path}: checkpoint is damaged ({fmt.STATE}/ is unreadable: {reason})")


ABANDONED_READ = "_read_array_index_and_device_put"  # orbax's coroutine reading one array's shard


def quiet_abandoned_reads() -> None:
    """Wrap ``sys.unraisablehook`` once so that it drops the reports of orbax's abandoned shard
    reads (:data:`ABANDONED_READ` coroutines) and passes every other report on unchanged.

    When one array of a damaged checkpoint fails to read, orbax abandons the reads of the
    others mid-flight; each such coroutine reports its ``GeneratorExit`` ("Exception ignored
    in: <coroutine object _read_array_index_and_device_put ...>", a traceback each) whenever
    the garbage collector meets it, which can be long after the restore failed. The error is
    already the one line :class:`DamagedCheckpointError` carries."""
    previous = sys.unraisablehook
    if getattr(previous, "_rlaccel_quiet_reads", False):
        return

    def hook(unraisable: Any) -> None:
        if getattr(getattr(unraisable.object, "cr_code", None), "co_name", None) != ABANDONED_READ:
            previous(unraisable)

    hook._rlaccel_quiet_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _one_line(e: BaseException) -> str:
    while e.__cause__ is not None:  # orbax wraps tensorstore's error, which says what failed
        e = e.__cause__
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _flatten(tree: Any) -> tuple[list[str], list[Any], Any]:
    """``(paths, leaves, treedef)``; a path names the keys from the root: ``/agent/opt_state/1/0/mu``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return ["/" + "/".join(_key_name(k) for k in keys) for keys, _ in flat], [x for _, x in flat], treedef


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _whole_here(x: Any) -> bool:
    """Whether this process holds all of ``x`` (then it is written from a host copy)."""
    return not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated


def _host_values(leaves: list[Any]) -> list[np.ndarray]:
    """Each leaf's full value as a numpy array this module owns (the caller may donate or
    change its buffers while an asynchronous save writes). An array split over hosts is
    all-gathered, a collective: every process calls this with the same state."""
    local = [x.addressable_data(0) if isinstance(x, jax.Array) and not x.is_fully_addressable else x for x in leaves if _whole_here(x)]
    fetched = iter(jax.device_get(local))  # one batched transfer
    out = []
    for x in leaves:
        value = next(fetched) if _whole_here(x) else multihost_utils.process_allgather(x, tiled=True)
        out.append(np.array(value, copy=True))
    return out


def _facts(value: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(value.dtype), "shape": list(value.shape), "sha256": _sha256(value)}


def _sha256(value: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(value).reshape(-1).view(np.uint8)).hexdigest()


def _dtype(x: Any) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _sharding(x: Any) -> Any:
    return x.sharding if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) else None


def _verify(path: Path, arrays: dict[str, Any], header: dict[str, Any]) -> None:
    names = list(arrays)
    for name, value in zip(names, _host_values([arrays[n] for n in names])):
        if _sha256(value) != header["leaves"][name]["sha256"]:
            raise DamagedCheckpointError(f"{path}: checkpoint is damaged ('{name}' fails its checksum)")


def _check_compatible(path: Path, saved: dict[str, dict[str, Any]], expected: dict[str, Any]) -> None:
    """Raise a one-line :class:`CheckpointError` naming the first array (or subtree) whose
    path, shape or dtype differs between the checkpoint's header and the template."""
    _compare_nested(path, _nest({p: tuple(f["shape"]) for p, f in saved.items()}), _nest({p: tuple(np.shape(x)) for p, x in expected.items()}), "")
    for p, x in expected.items():
        if saved[p]["dtype"] != str(_dtype(x)):
            raise CheckpointError(f"{path}: incompatible with this config: '{p}' has dtype {saved[p]['dtype']} in the checkpoint, {_dtype(x)} here")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for p, v in flat.items():
        *parents, last = p.strip("/").split("/")
        node = root
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = v
    return root


def _compare_nested(path: Path, saved: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict) or isinstance(saved, dict):
        if not isinstance(saved, dict) or not isinstance(expected, dict) or set(saved) != set(expected):
            missing = sorted(set(expected) - set(saved)) if isinstance(saved, dict) and isinstance(expected, dict) else []
            extra = sorted(set(saved) - set(expected)) if isinstance(saved, dict) and isinstance(expected, dict) else []
            raise CheckpointError(f"{path}: incompatible with this config at '{where or '/'}' (missing {missing}, unexpected {extra})")
        for k in expected:
            _compare_nested(path, saved[k], expected[k], f"{where}/{k}")
        return
    if saved != expected:
        raise CheckpointError(f"{path}: incompatible with this config: '{where}' has shape {saved} in the checkpoint, {expected} here")
