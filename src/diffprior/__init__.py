"""diffprior: inverse imaging with a pretrained diffusion model as the prior."""

from .models import load_prior
from .operators import LinearOperator, Operator, measure
from .prior import GaussianMixturePrior, GaussianPrior, NetworkPrior, Prior
from .schedule import Schedule
from .solvers import SOLVERS, denoise, dps, sample, scoreald, sdedit, solve
from .tasks import TASKS, make_operator
from .version import __version__

__all__ = [
    "__version__",
    "Schedule", "Prior", "NetworkPrior", "GaussianPrior", "GaussianMixturePrior", "load_prior",
    "Operator", "LinearOperator", "TASKS", "make_operator", "measure",
    "SOLVERS", "solve", "sample", "denoise", "sdedit", "scoreald", "dps",
]
