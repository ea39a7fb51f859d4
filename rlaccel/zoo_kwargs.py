"""The RL Zoo's Python-call strings (``policy_kwargs: "dict(net_arch=[256, 256])"``, ``normalize:
"dict(norm_obs=True, norm_reward=False)"``) read as plain data, without ``eval``.

The string is parsed with :mod:`ast` and its tree walked; only literal data is accepted:

* ``dict(key=value, ...)`` calls (keywords only) and ``{"key": value}`` literals -> ``dict``
* ``[...]`` and ``(...)`` -> ``list``
* numbers (``-3.29``, ``1e-5``, ``+2``), booleans, ``None`` and string literals
* torch activation classes: ``nn.ReLU``, ``th.nn.Tanh``, ``torch.nn.ELU`` -> the string
  ``"nn.ReLU"`` etc., which the config then checks like any other ``activation_fn`` spelling

Anything else (another call such as ``__import__('os').system('x')``, a bare name, an
operator, a lambda, a subscript, ``**kwargs``) is a :class:`rlaccel.schema.ConfigError` naming
the key and what was found. Nothing here imports JAX.
"""

from __future__ import annotations

import ast
from typing import Any

from rlaccel.schema import ConfigError

__all__ = ["parse_call_string"]

MAX_CHARS = 10_000
"""Longer strings are refused before parsing (a zoo kwargs string is a few hundred characters)."""
MAX_DEPTH = 16
"""Deeper nesting is refused (``dict(net_arch=dict(pi=[..]))`` is depth 4)."""
_TORCH_MODULES = (("nn",), ("th", "nn"), ("torch", "nn"))


def parse_call_string(text: str, key: str) -> Any:
    """``"dict(log_std_init=-2, net_arch=dict(pi=[256], vf=[256]))"`` -> plain data.

    Args:
      text: the zoo's string (may span lines, as the zoo's YAML folds it).
      key: the config key it came from, for error messages (``ppo.policy_kwargs``).

    Returns:
      dicts, lists, numbers, booleans, ``None``, strings; torch activations as ``"nn.<Name>"``.

    Raises:
      ConfigError: malformed, too long or too deep, or containing anything but literal data.
    """
    if len(text) > MAX_CHARS:
        raise ConfigError(f"{key}: the Python-call string is longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        where = f" at column {e.offset}" if e.offset else ""
        raise ConfigError(f"{key}: malformed Python-call string{where}: {e.msg} ({_short(text)})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ConfigError(f"{key}: malformed Python-call string ({_short(text)})") from None
    return _value(tree.body, key, 0)


def _short(text: str, limit: int = 60) -> str:
    """One-line, bounded rendering of ``text`` for a message."""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _refuse(node: ast.AST, key: str) -> ConfigError:
    try:
        found = ast.unparse(node)
    except Exception:  # pragma: no cover - unparse handles every node ast.parse makes
        found = type(node).__name__
    return ConfigError(
        f"{key}: {_short(found)} is not allowed in a zoo kwargs string "
        "(only dict(...), {...}, lists, numbers, booleans, strings and nn.ReLU / nn.Tanh / nn.ELU)"
    )


def _dotted(node: ast.AST) -> tuple[str, ...] | None:
    """``th.nn.ReLU`` -> ``("th", "nn", "ReLU")``; ``None`` unless a chain of plain names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return (node.id, *reversed(parts))


def _value(node: ast.AST, key: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ConfigError(f"{key.split('[', 1)[0]}: the Python-call string nests deeper than {MAX_DEPTH} levels")
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float, str))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = node.operand
        if isinstance(operand, ast.Constant) and isinstance(operand.value, (int, float)) and not isinstance(operand.value, bool):
            return -operand.value if isinstance(node.op, ast.USub) else operand.value
        raise _refuse(node, key)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(item, f"{key}[{i}]", depth + 1) for i, item in enumerate(node.elts)]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            if not (isinstance(k, ast.Constant) and isinstance(k.value, str)):
                raise _refuse(v if k is None else k, key)  # k is None for {**x}
            if k.value in out:
                raise ConfigError(f"{key}: key {k.value!r} is given twice")
            out[k.value] = _value(v, f"{key}.{k.value}", depth + 1)
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args:
            raise _refuse(node.args[0], key)
        out = {}
        for kw in node.keywords:
            if kw.arg is None:  # dict(**x)
                raise _refuse(kw.value, key)
            if kw.arg in out:
                raise ConfigError(f"{key}: keyword {kw.arg!r} is given twice")
            out[kw.arg] = _value(kw.value, f"{key}.{kw.arg}", depth + 1)
        return out
    dotted = _dotted(node)
    if dotted is not None and len(dotted) >= 2 and dotted[:-1] in _TORCH_MODULES:
        return f"nn.{dotted[-1]}"
    raise _refuse(node, key)
