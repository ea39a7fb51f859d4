"""Deep Q-Networks: ``config`` (hyperparameters), ``networks``, ``losses``, ``train``."""
