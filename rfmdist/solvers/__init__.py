"""Linear solvers for kernel systems: direct Cholesky and preconditioned conjugate gradient.

Solvers know nothing about kernels: the direct solver takes a matrix, the conjugate gradient takes a
mat-vec callable, a preconditioner and a callback.
"""

from rfmdist.solvers.cg import CGResult, conjugate_gradient
from rfmdist.solvers.direct import DirectResult, solve_direct

__all__ = ["CGResult", "DirectResult", "conjugate_gradient", "solve_direct"]
