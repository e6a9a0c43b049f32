"""deqjax: deep equilibrium models in JAX.

The core is pure JAX (no Flax): `fixed_point` finds z* = f(params, z*, x) with
a quasi-Newton solver inside one `lax.while_loop` and differentiates it
implicitly (or with phantom gradients) through a `jax.custom_vjp`.
"""

from deqjax._anderson import Anderson
from deqjax._broyden import Broyden
from deqjax._diagnostics import jacobian_frobenius_sq, spectral_radius
from deqjax._driver import Solver
from deqjax._fixed_point import fixed_point, root_find
from deqjax._info import BackwardStats, SolveInfo, Status, backward_probe
from deqjax._iteration import Iteration
from deqjax._krylov import GMRES, BiCGStab
from deqjax._validation import check_backward_options

__version__ = "0.1.0"

__all__ = [
  "Anderson",
  "BackwardStats",
  "BiCGStab",
  "Broyden",
  "GMRES",
  "Iteration",
  "SolveInfo",
  "Solver",
  "Status",
  "backward_probe",
  "check_backward_options",
  "fixed_point",
  "jacobian_frobenius_sq",
  "root_find",
  "spectral_radius",
]
