"""What each solver declares about itself, beside its function: the operators it accepts, whether it
differentiates the network, how many network evaluations (NFE) a run costs, the settings that fit a budget of
evaluations, and its per-task defaults. `SOLVERS`, the CLI, `eval`, `reproduce` and the posterior benchmark
read these facts; none of them keeps its own list."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from ..operators import Inpaint, Operator, implements
from ..schedule import Schedule

PLUMBING = ("generator", "progress", "init")  # keyword arguments of every solver that are not settings
OPERATORS = ("any", "linear", "adjoint", "svd", "inpaint")  # what a solver may require of its operator


def chain_nfe(schedule: Schedule, settings: dict) -> int:
    """One network evaluation per step of the respaced chain (the default)."""
    return len(schedule.timesteps(settings["steps"]))


def steps_budget(nfe: int, T: int) -> dict:
    """As many steps as evaluations (the default)."""
    return {"steps": nfe}


@dataclass(frozen=True)
class SolverSpec:
    run: Callable[..., Tensor]           # the solver: run(prior, op, y, *, settings, generator, progress)
    operators: str = "any"  # "any", "linear", "adjoint" (linear with A_adjoint), "svd" (a closed-form SVD), "inpaint"
    backprop: bool = False               # differentiates through the network at every step
    nfe: Callable[[Schedule, dict], int] = chain_nfe     # evaluations of a run, from its full settings
    budget: Callable[[int, int], dict] = steps_budget    # settings spending at most nfe evaluations, prior of T
    task_settings: dict[str, dict] = field(default_factory=dict)  # per-task defaults, under the user's settings
    requires: Callable[[Operator, float, dict], str | None] | None = None  # a further condition: why not (op,
                                                                         # sigma_y, the run's full settings)
    random: bool = True                  # draws noise: another seed, another result (a sample of a posterior)

    def __post_init__(self):
        if self.operators not in OPERATORS:
            raise ValueError(f"{self.name}: operators must be one of {OPERATORS}, not {self.operators!r}")

    @property
    def name(self) -> str:
        return self.run.__name__

    @property
    def settings(self) -> dict:
        """The solver's settings (its keyword-only arguments but the plumbing) with their defaults."""
        params = inspect.signature(self.run).parameters.items()
        return {k: p.default for k, p in params if p.kind == p.KEYWORD_ONLY and k not in PLUMBING}

    @property
    def takes_init(self) -> bool:
        """Whether the solver starts from a given image, `init` (SDEdit, RED-diff)."""
        return "init" in inspect.signature(self.run).parameters

    @property
    def needs_prior(self) -> bool:
        """Whether the solver runs a prior: False where its `prior` may be None (the classical TV baseline)."""
        return type(None) not in typing.get_args(typing.get_type_hints(self.run)["prior"])

    def accepts(self, key: str, kind: type) -> bool:
        """Whether setting `key` takes values of `kind` (None, bool, ...): by its annotation, or a None default."""
        hint = typing.get_type_hints(self.run).get(key)
        kinds = {typing.get_origin(h) or h for h in (hint, *typing.get_args(hint))}  # dict[int, float] -> dict
        return kind in kinds or (kind is type(None) and self.settings[key] is None)

    def choices(self, key: str) -> tuple[str, ...]:
        """The names a setting annotated `Literal[...]` takes."""
        return typing.get_args(typing.get_type_hints(self.run)[key])

    def evaluations(self, schedule: Schedule, **settings) -> int:
        """Network evaluations of a run with these settings (the rest at their defaults)."""
        return self.nfe(schedule, {**self.settings, **{k: v for k, v in settings.items() if k not in PLUMBING}})

    def why_not(self, op: Operator, sigma_y: float = 0.0, settings: dict | None = None) -> str | None:
        """Why this solver does not apply to `op` with measurement noise sigma_y and these settings (the rest at
        their defaults), or None when it does."""
        if self.operators == "inpaint" and not isinstance(op, Inpaint):
            return f"inpainting only ({self.name} needs an Inpaint operator, a pixel mask)"
        if self.operators in ("linear", "adjoint", "svd") and not op.linear:
            return "linear operators only"
        if self.operators == "adjoint" and not implements(op, "A_adjoint"):
            return "needs the operator's adjoint A_adjoint"
        if self.operators == "svd" and not op.has_svd:
            return "needs a closed-form SVD of the operator"
        return self.requires(op, sigma_y, {**self.settings, **(settings or {})}) if self.requires else None
