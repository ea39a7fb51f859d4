"""Learning algorithms, one folder each, registered in ``rlaccel.registry``.

Every algorithm has the same file roles (Brax's layout): ``config.py`` (hyperparameters),
``networks.py`` (modules and distributions), ``losses.py`` (pure maths), ``train.py`` (the
agent's pure functions and ``build``), ``actor.py`` (numpy actor and export spec), and an
``__init__.py`` that declares its ``rlaccel.registry.Algorithm`` (found through the
``rlaccel.algorithms`` entry points in ``pyproject.toml``).
"""
