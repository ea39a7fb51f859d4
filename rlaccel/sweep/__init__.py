"""Sweeps: seeds x hyperparameter settings trained by one compiled program per shape.

* ``grid.py`` (no JAX): parse ``--grid`` axes, build and validate settings, split their keys
  into traced (vmapped) and static (one compile each), following each algorithm's
  ``rlaccel.registry.traced_field`` metadata.
* ``program.py``: the group's compiled, member-vmapped and device-sharded program, run
  through the one training loop (``rlaccel.loop``) as a step source.
* ``report.py``: results table, curves, TensorBoard runs, best config.
* ``search.py``: Optuna search over the same programs (several workers share one study).
* ``run.py``: a whole grid sweep (:func:`rlaccel.sweep.run.run_grid`), what ``rlaccel sweep`` runs.

Only the JAX-free grid names are imported here; import the others from their modules.
"""

from __future__ import annotations

from rlaccel.sweep.grid import (
    Setting,
    flatten,
    group_settings,
    is_traceable,
    make_settings,
    parse_grid,
    setting_name,
    split_keys,
    with_values,
)

__all__ = [
    "Setting",
    "flatten",
    "group_settings",
    "is_traceable",
    "make_settings",
    "parse_grid",
    "setting_name",
    "split_keys",
    "with_values",
]

