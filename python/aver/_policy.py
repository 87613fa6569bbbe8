"""Policy arguments: a path to a policy file, the policy's YAML or JSON
text, or the policy as a mapping."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Union

from .errors import PolicyError

PolicyArg = Union[str, "os.PathLike[str]", Mapping[str, Any]]
"""A policy file path, YAML/JSON text, or a mapping of the policy."""


def policy_text(policy: PolicyArg) -> tuple[str, str]:
    """``(text, source)`` for a policy argument; ``source`` names it in
    errors. A ``str`` is a path if such a file exists, and policy text if it
    looks like a document (several lines, or JSON); anything else is a
    missing file."""
    if isinstance(policy, Mapping):
        return json.dumps(policy), "policy mapping"
    if isinstance(policy, os.PathLike):
        return _read(os.fspath(policy)), f"policy {os.fspath(policy)}"
    if not isinstance(policy, str):
        raise PolicyError(
            f"policy must be a path, YAML/JSON text or a mapping, not {type(policy).__name__}"
        )
    if "\n" in policy or policy.lstrip().startswith("{"):
        return policy, "policy text"
    return _read(policy), f"policy {policy}"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise PolicyError(f"cannot read policy {path}: {e.strerror or e}") from e
