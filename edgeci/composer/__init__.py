"""Image Builder backends behind one protocol (base.Composer); `backend(cfg)` picks one lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeci.composer.base import Composer
    from edgeci.config import Config

BACKENDS = {
    "local": ("edgeci.composer.local", "LocalComposer"),
    "weldr": ("edgeci.composer.weldr", "WeldrComposer"),
    "cloud": ("edgeci.composer.cloud", "CloudComposer"),
}


def backend(cfg: Config, name: str | None = None) -> Composer:
    """The configured backend (cfg.composer.backend), constructed as Cls(cfg)."""
    import importlib

    from edgeci.errors import ConfigError

    name = name or cfg.composer.backend
    if name not in BACKENDS:
        raise ConfigError(f"unknown composer backend '{name}'", where="composer.backend",
                          fix=f"use one of: {', '.join(BACKENDS)}")
    module_name, cls_name = BACKENDS[name]
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(cfg)
