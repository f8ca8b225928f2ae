"""vramplan: will this fine-tuning job fit, on which GPUs, how fast and at what cost.

    from vramplan import estimate, plan, fit        # the CLI commands, keyword arguments named like the flags
    from vramplan import preflight, PreflightCallback  # check a live transformers / TRL trainer before step 1

Attributes load on first use, so `import vramplan` imports neither torch nor the planner.
"""

__version__ = "0.1.0"

#: public name -> module that defines it (loaded on first access)
_LAZY = {
    "estimate": ".python_api",
    "plan": ".python_api",
    "fit": ".python_api",
    "to_dict": ".python_api",
    "preflight": ".trainer.preflight",
    "PreflightCallback": ".trainer.preflight",
    "PreflightError": ".trainer.preflight",
    "VramplanError": ".errors",
}

__all__ = ["PreflightCallback", "PreflightError", "VramplanError", "__version__", "estimate", "fit", "plan",
           "preflight", "to_dict"]  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
