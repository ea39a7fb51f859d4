"""Proximal Policy Optimisation: ``config`` (hyperparameters), ``networks``, ``losses``, ``train``."""
