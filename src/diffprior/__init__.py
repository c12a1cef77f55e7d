"""diffprior: inverse imaging with a pretrained diffusion model as the prior.

The names below are imported on first use (PEP 562), so that `import diffprior` and the command line start
without waiting for torch until they need it."""

from importlib import import_module as _import_module
from importlib.util import find_spec as _find_spec

from .version import __version__

_EXPORTS = {  # name: the module that defines it
    "Schedule": "schedule", "Prior": "prior", "NetworkPrior": "prior", "GaussianPrior": "prior",
    "GaussianMixturePrior": "prior", "load_prior": "models",
    "Operator": "operators", "LinearOperator": "operators", "measure": "operators", "TASKS": "tasks",
    "make_operator": "tasks",
    "SOLVERS": "solvers", "solve": "solvers", "sample": "solvers", "denoise": "solvers", "sdedit": "solvers",
    "scoreald": "solvers", "dps": "solvers", "DivergenceError": "solvers",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    if not name.startswith("_") and _find_spec(f"{__name__}.{name}"):
        return _import_module(f".{name}", __name__)  # a submodule (`dp.io`, `dp.solvers`), on first use too
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
