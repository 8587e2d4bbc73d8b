"""Task handlers: ``async def handler(ctx: TaskContext) -> str`` and where the worker finds them.

Sources, later ones overriding earlier ones:

1. the built-ins (``demo``, ``llm``);
2. the entry point group ``sraq.handlers`` of any installed distribution
   (``[project.entry-points."sraq.handlers"] mine = "my_pkg.handlers:research"``);
3. settings paths ``name=module:function`` (``SRAQ_HANDLER_PATHS``);
4. the worker's ``--handler`` may itself be a ``module:function`` path.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import entry_points

from workers.context import TaskContext

Handler = Callable[[TaskContext], Awaitable[str]]
ENTRY_POINT_GROUP = "sraq.handlers"
BUILTIN = {
    "demo": "workers.handlers.demo:demo",
    "llm": "workers.handlers.llm:llm",
}


class HandlerError(LookupError):
    """A handler name or path that cannot be resolved; the message says why."""


def load_path(path: str) -> Handler:
    """Import ``module:function`` and check it is an async function."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"handler path {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"cannot import {module_name!r} for handler {path!r}: {exc}") from None
    target: object = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise HandlerError(f"{module_name!r} has no attribute {attr!r}")
    if not inspect.iscoroutinefunction(target):
        raise HandlerError(f"handler {path!r} must be an async function taking a TaskContext")
    handler: Handler = target
    return handler


class HandlerRegistry:
    """Name -> handler (imported lazily, on first use)."""

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}
        self._loaded: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        self._loaded[name] = handler
        self._paths.pop(name, None)

    def register_path(self, name: str, path: str) -> None:
        if not name:
            raise HandlerError(f"handler registration {path!r} needs a name")
        self._paths[name] = path
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        return sorted({*self._paths, *self._loaded})

    def resolve(self, name_or_path: str) -> Handler:
        """A registered name, else a ``module:function`` path."""
        if name_or_path in self._loaded:
            return self._loaded[name_or_path]
        if name_or_path in self._paths:
            handler = load_path(self._paths[name_or_path])
            self._loaded[name_or_path] = handler
            return handler
        if ":" in name_or_path:
            return load_path(name_or_path)
        raise HandlerError(f"unknown handler {name_or_path!r}; registered: {', '.join(self.names())}")

    @classmethod
    def discover(cls, paths: Iterable[str] = ()) -> HandlerRegistry:
        """Built-ins, then the ``sraq.handlers`` entry points, then ``name=module:function`` paths."""
        registry = cls()
        for name, path in BUILTIN.items():
            registry.register_path(name, path)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            registry.register_path(ep.name, ep.value)
        for item in paths:
            name, sep, path = item.partition("=")
            if not sep:
                raise HandlerError(f"handler setting {item!r} must look like 'name=package.module:function'")
            registry.register_path(name.strip(), path.strip())
        return registry
