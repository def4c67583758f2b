"""Registers this package's attention with transformers the moment transformers' modeling code loads.

``import asr`` installs the hook (microseconds) instead of importing transformers' modeling code
itself (about 3 s), so the package stays cheap to import while any Hugging Face model built after
``import asr`` accepts ``attn_implementation="unique_softmask"`` (``asr.attention.hf_softmask``).
If that code is already loaded, registration happens at once.
"""

from __future__ import annotations

import sys

TRIGGER = "transformers.modeling_utils"  # defines AttentionInterface; every model class imports it


def register_attention() -> None:
    """Register now; a failure is logged, never raised into the import that triggered it."""
    try:
        from asr.attention.hf_softmask import register

        register()
    except Exception as error:  # a transformers release without these registries must still import
        import logging

        logging.getLogger(__name__).warning("attn_implementation 'unique_softmask' is unavailable: %s", error)


class _RegisteringLoader:
    """The trigger module's own loader, followed by ``register_attention`` (a loader by protocol:
    importlib.abc is not imported, it costs more than the rest of ``import asr``)."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        register_attention()

    def __getattr__(self, name: str):  # get_source, get_filename, ... of the wrapped loader
        return getattr(self.loader, name)


class _TriggerFinder:
    """A meta path finder: finds the trigger module through the other finders and wraps its loader
    (once)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TRIGGER:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    if TRIGGER in sys.modules:
        register_attention()
    elif not any(isinstance(finder, _TriggerFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TriggerFinder())
