"""Tuning methods are found through the entry-point group ``bench.methods``; the
built-ins register the same way (see pyproject.toml)."""

from __future__ import annotations

import functools
import inspect
import sys
from importlib.metadata import entry_points

from bench.contract.errors import BenchError
from bench.contract.method import Method

GROUP = "bench.methods"


def available_methods() -> dict[str, object]:
    """Entry points by name, not yet imported. Reading them scans every installed
    distribution (milliseconds each time, and a suite builds a method per campaign): kept
    for as long as the import path is the same."""
    return dict(_entry_points(tuple(sys.path)))


@functools.lru_cache(maxsize=4)
def _entry_points(path: tuple[str, ...]) -> tuple:
    return tuple((ep.name, ep) for ep in entry_points(group=GROUP))


def method_class(name: str) -> type[Method]:
    eps = available_methods()
    if name not in eps:
        raise BenchError(f"unknown method {name!r}; installed: {', '.join(sorted(eps))}")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise BenchError(f"entry point {name!r} is not a bench.contract.method.Method subclass")
    return cls


def build_method(name: str, options: dict) -> Method:
    """Instantiate a method with its options; a wrong option is a one-line error."""
    cls = method_class(name)
    try:
        known = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the constructor say
        known = None
    if known is not None and not any(p.kind is p.VAR_KEYWORD for p in known):
        names = [p.name for p in known if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in options:
            if key not in names:
                raise BenchError(f"method {name!r} has no option {key!r}; it has: "
                                 f"{', '.join(names) or 'none'}")
    try:
        return cls(**options)
    except TypeError as err:
        raise BenchError(f"method {name!r}: {err}".replace("__init__() ", "")) from None
