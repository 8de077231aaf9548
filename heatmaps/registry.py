"""Backends by name: declared by their classes, registered at run time, or from entry points.

A :class:`heatmaps.Heatmap` subclass that sets ``name`` in its own class body
registers itself under that name when the class is created, so a backend is
written down in one place, its class::

    class MyHeatmap(heatmaps.Heatmap):
        name = "mine"                 # heatmaps.get("mine", model) works from here on
        ...

A subclass that only inherits ``name`` (an intermediate base class, or a
variant of a built-in backend) does not register; ``class X(Heatmap,
register=False)`` opts out explicitly. Importing :mod:`heatmaps` imports every
built-in backend, so :func:`available` lists them all.

Names are unique. A class that declares a name already held by a different
class or factory raises ``ValueError`` when it is defined; only a class of the
same module and qualified name replaces the entry (the same class defined
again: a reloaded module, a re-run notebook cell). To put a different backend
under a taken name, say so with :func:`register`, which always replaces;
:func:`unregister` removes a name again (tests use it to clean up after
themselves).

Other packages add backends through the entry-point group
``heatmaps.backends``, e.g. in their ``setup.cfg``::

    [options.entry_points]
    heatmaps.backends =
        mymethod = mypackage.module:MyHeatmap

where ``MyHeatmap`` is a :class:`heatmaps.Heatmap` subclass (or any callable
``(model, **options) -> Heatmap``). Entry points are loaded only when
:func:`get` asks for their name; a name registered in the process takes
precedence over an entry point of the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:  # heatmaps.base imports this module to declare its subclasses
    from .base import Heatmap

__all__ = ["ENTRY_POINT_GROUP", "available", "get", "register", "unregister"]

ENTRY_POINT_GROUP = "heatmaps.backends"

#: every backend registered in this process: declared classes and factories given to :func:`register`
_BACKENDS: dict[str, Callable[..., Heatmap]] = {}


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"backend name: expected a non-empty str, got {name!r}")
    return name


def _qualified(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def declare(cls: type[Heatmap]) -> None:
    """Register a :class:`~heatmaps.Heatmap` subclass under its own ``name``.

    Called by ``Heatmap.__init_subclass__`` for every subclass whose class body
    sets ``name``.

    Raises:
        ValueError: the name is held by a different class or factory (one of
            another module or qualified name).
    """
    name = _check_name(cls.__dict__["name"])
    held = _BACKENDS.get(name)
    if held is not None and held is not cls and _qualified(held) != _qualified(cls):
        raise ValueError(
            f"heatmap backend {_qualified(cls)} declares name {name!r}, which "
            f"{_qualified(held)} already holds; choose another name, define the class with "
            "register=False, or replace the backend explicitly with "
            f"heatmaps.register({name!r}, ...)"
        )
    _BACKENDS[name] = cls


def register(name: str, factory: Callable[..., Heatmap]) -> None:
    """Register a backend factory ``(model, **options) -> Heatmap`` under ``name``.

    Replaces whatever the process had under ``name`` (a built-in too), and
    takes precedence over an entry point of that name.
    """
    _check_name(name)
    if not callable(factory):
        raise TypeError(f"register: factory for {name!r} is not callable")
    _BACKENDS[name] = factory


def unregister(name: str) -> Callable[..., Heatmap]:
    """Remove the backend registered under ``name`` in this process and return it.

    ``register(name, unregister(name))`` puts it back. Entry points are not
    affected (they live in the installed packages' metadata).

    Raises:
        KeyError: nothing is registered under ``name`` in this process.
    """
    try:
        return _BACKENDS.pop(name)
    except KeyError:
        raise KeyError(f"unregister: no backend {name!r} is registered in this process") from None


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of every backend: built-in, declared or registered at run time, and from entry points."""
    return sorted(set(_BACKENDS) | set(_entry_points()))


def get(name: str, model: nn.Module, **options: Any) -> Heatmap:
    """Build the backend ``name`` around ``model`` with backend-specific ``options``.

    Looks ``name`` up among the backends registered in this process, then
    among the entry points.

    Raises:
        ValueError: unknown name (the message lists the available ones).
        TypeError: the factory did not return a :class:`heatmaps.Heatmap`.
    """
    from .base import Heatmap

    factory = _BACKENDS.get(name)
    if factory is None:
        points = _entry_points()
        if name not in points:
            raise ValueError(
                f"heatmaps.get: unknown backend {name!r}; available: {', '.join(available())}"
            )
        factory = points[name].load()
    heatmap = factory(model, **options)
    if not isinstance(heatmap, Heatmap):
        raise TypeError(f"backend {name!r} did not return a heatmaps.Heatmap")
    return heatmap
