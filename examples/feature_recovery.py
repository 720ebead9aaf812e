"""Feature recovery: RFM finds the planted directions of low-rank / sparse targets.

Two synthetic regressions on ``x ~ N(0, I_d)``, ``d = 50`` (default), plus a little noise:

* ``product``: ``y = x0 * x1`` (sparse: depends on the span of ``e0, e1`` only);
* ``cubic``: ``y = (u . x)^3`` for a random unit vector ``u`` (a single index, not axis-aligned).

Each is fitted with :class:`rfmdist.RFMRegressor` (Laplace kernel, ``iters`` rounds, default 5) on
``n`` rows (default 4000). A held-out set of ``n_test`` rows is passed as ``eval_set`` so that every
round's held-out R^2 is reported (and ``M_`` is the M of the best round on that set; for these
tasks it is the last). The script reports, for the feature matrix of every round (``M_history_``,
round 0 = the identity):

* the cosines of the principal angles between the top-k eigenvectors of M and the planted subspace
  (k = 2, span{e0, e1}, for ``product``; k = 1, u, for ``cubic``), where 1 means exact recovery;
* the share of M's trace carried by the planted subspace (``tr(P M P) / tr(M)``);
* the relative change of M from the previous round, ``||M_t - M_{t-1}||_F / ||M_t||_F`` with
  each M scaled to unit trace.

It draws (matplotlib) a 2 x 3 figure, one row per task: the normalised diagonal of M
(diag / max) of every round as a heat map (log colour scale: its change over rounds), the final normalised diagonal
as bars with the planted one for reference (e0, e1 for ``product``; u_i^2 / max u_i^2 for
``cubic``, the diagonal of u u^T), and the per-round gaps ``1 - cosine`` and ``1 - trace share``
on a log scale (``product``) or the top eigenvector of the final M against u (``cubic``; sign
aligned).

Usage::

    python examples/feature_recovery.py --out feature_recovery.png [--d 50] [--n 4000]
        [--n-test 2000] [--iters 5] [--seed 0] [--threads 1]

About 30 s of CPU on one core (d = 50, n = 4000; both fits).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.linalg import subspace_angles
from threadpoolctl import threadpool_limits

from rfmdist import RFMRegressor

NOISE = 0.01


@dataclass
class Task:
    """A planted regression: inputs, targets and an orthonormal basis of the planted subspace."""

    name: str
    formula: str
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    basis: np.ndarray  # (d, k), orthonormal columns


@dataclass
class Recovery:
    """What one fit recovered."""

    task: Task
    model: RFMRegressor
    seconds: float
    cosines: list[np.ndarray] = field(default_factory=list)  # per round, k cosines
    trace_share: list[float] = field(default_factory=list)  # per round
    change: list[float] = field(default_factory=list)  # per round, vs the previous round
    r2: list[float] = field(default_factory=list)  # per round, held-out


def make_tasks(d: int, n: int, n_test: int, seed: int) -> list[Task]:
    """The ``product`` and ``cubic`` tasks (seeded; ``u`` is drawn from the same generator)."""
    gen = np.random.default_rng(seed)
    u = gen.normal(size=d)
    u /= np.linalg.norm(u)

    def draw(f):
        X = gen.normal(size=(n, d))
        X_test = gen.normal(size=(n_test, d))
        return X, f(X) + NOISE * gen.normal(size=n), X_test, f(X_test)

    product = draw(lambda X: X[:, 0] * X[:, 1])
    cubic = draw(lambda X: (X @ u) ** 3)
    return [
        Task("product", "y = x0 * x1", *product, np.eye(d)[:, :2]),
        Task("cubic", "y = (u . x)^3", *cubic, u[:, None]),
    ]


def top_eigenvectors(M: np.ndarray, k: int) -> np.ndarray:
    """The eigenvectors of the k largest eigenvalues of the symmetric M, shape (d, k)."""
    _, vecs = np.linalg.eigh(np.asarray(M, dtype=np.float64))
    return vecs[:, ::-1][:, :k]


def principal_cosines(M: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between M's top-k eigenvectors and ``basis`` (d, k)."""
    return np.sort(np.cos(subspace_angles(top_eigenvectors(M, basis.shape[1]), basis)))[::-1]


def fit_task(task: Task, iters: int, seed: int) -> Recovery:
    """Fit RFMRegressor on the task and measure the recovery round by round."""
    model = RFMRegressor(kernel="laplace", iters=iters, random_state=seed, dtype="float64")
    start = time.perf_counter()
    model.fit(task.X, task.y, eval_set=(task.X_test, task.y_test))
    out = Recovery(task, model, time.perf_counter() - start)
    var = float(np.var(task.y_test))
    P = task.basis @ task.basis.T
    previous = None
    for M, record in zip(model.M_history_, model.history_, strict=True):
        M = np.asarray(M, dtype=np.float64)
        M_unit = M / np.trace(M)
        out.cosines.append(principal_cosines(M, task.basis))
        out.trace_share.append(float(np.trace(P @ M) / np.trace(M)))
        out.change.append(
            np.nan
            if previous is None
            else float(np.linalg.norm(M_unit - previous) / np.linalg.norm(M_unit))
        )
        out.r2.append(1.0 - float(record["val_score"]) / var)
        previous = M_unit
    return out


def report(results: list[Recovery]) -> str:
    """The per-round table of every task and the final cosines, as text."""
    lines = []
    for res in results:
        t = res.task
        d = t.X.shape[1]
        lines += [
            "",
            f"{t.name}: {t.formula}, d = {d}, n = {len(t.y)}, held-out n = {len(t.y_test)}, "
            f"iters = {res.model.iters}, fit {res.seconds:.1f} s, best_iter_ = "
            f"{res.model.best_iter_}",
            "round  principal-angle cosines  planted trace share  change of M  held-out R^2",
        ]
        rows = zip(res.cosines, res.trace_share, res.change, res.r2, strict=True)
        for r, (cos, share, change, r2) in enumerate(rows):
            # round 0 is M = I: every direction is an eigenvector, the cosines mean nothing
            cos_text = "n/a (M = I)" if r == 0 else ", ".join(f"{c:.5f}" for c in cos)
            change_text = "" if np.isnan(change) else f"{change:.4f}"
            lines.append(f"{r:>5}  {cos_text:<23}  {share:>19.4f}  {change_text:>11}  {r2:>12.4f}")
        final = principal_cosines(res.model.M_, t.basis)
        lines.append(
            f"M_ (round {res.model.best_iter_}): cosines "
            + ", ".join(f"{c:.5f}" for c in final)
            + f"; top features by feature_importances_: "
            f"{np.argsort(res.model.feature_importances_)[::-1][:4].tolist()}"
        )
    return "\n".join(lines)


def plot(results: list[Recovery], out: str) -> None:
    """The 2 x 3 figure described in the module docstring, written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), gridspec_kw={"width_ratios": [1.3, 1.3, 1]})
    for row, res in enumerate(results):
        t = res.task
        d = t.X.shape[1]
        diag = np.array(
            [
                np.diagonal(np.asarray(M)) / np.diagonal(np.asarray(M)).max()
                for M in res.model.M_history_
            ]
        )
        ax = axes[row, 0]
        im = ax.imshow(
            np.maximum(diag, 1e-4),
            aspect="auto",
            cmap="viridis",
            norm=LogNorm(vmin=1e-4, vmax=1),
            interpolation="nearest",
        )
        ax.set_yticks(range(len(diag)))
        ax.set_ylabel("round (0: M = I)")
        ax.set_xlabel("feature index")
        ax.set_title(f"{t.formula}: normalised diag(M) per round (log colour)")
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)

        ax = axes[row, 1]
        final = np.diagonal(np.asarray(res.model.M_))
        final = final / final.max()
        planted = np.diagonal(t.basis @ t.basis.T)
        planted = planted / planted.max()
        idx = np.arange(d)
        ax.bar(idx, final, color="tab:blue", label=f"RFM, round {res.model.best_iter_}")
        ax.plot(idx, planted, "r_", markersize=9, mew=2, label="planted (diag of P)")
        ax.set_xlabel("feature index")
        ax.set_ylabel("diag / max")
        ax.set_ylim(0, 1.08)
        ax.set_title(f"{t.formula}: final normalised diag(M)")
        ax.legend(loc="upper right", fontsize=8)

        ax = axes[row, 2]
        if t.basis.shape[1] == 1:
            v = top_eigenvectors(res.model.M_, 1)[:, 0]
            u = t.basis[:, 0]
            v = v * np.sign(v @ u)
            lim = 1.1 * max(np.abs(u).max(), np.abs(v).max())
            ax.plot([-lim, lim], [-lim, lim], color="0.7", lw=1, zorder=0)
            ax.scatter(u, v, s=18, color="tab:purple")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xlabel("planted u (entries)")
            ax.set_ylabel("top eigenvector of M (entries)")
            ax.set_title(f"top eigenvector vs u: |cos| = {abs(v @ u):.5f}")
        else:
            rounds = np.arange(1, len(res.cosines))
            for j in range(t.basis.shape[1]):
                ax.semilogy(
                    rounds,
                    [max(1.0 - c[j], 1e-12) for c in res.cosines[1:]],
                    "o-",
                    label=f"1 - principal cosine {j + 1}",
                )
            ax.semilogy(
                rounds,
                [max(1.0 - v, 1e-12) for v in res.trace_share[1:]],
                "s--",
                color="0.4",
                label="1 - planted trace share",
            )
            ax.set_xticks(rounds)
            ax.set_xlabel("round")
            ax.set_title("top-2 eigenvectors vs span{e0, e1} (log scale)")
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(
        f"RFM feature recovery (Laplace kernel, d = {results[0].task.X.shape[1]}, "
        f"n = {len(results[0].task.y)})",
        fontsize=13,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"\nwrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="feature_recovery.png", help="PNG to write")
    parser.add_argument("--d", type=int, default=50, help="input dimension (>= 2)")
    parser.add_argument("--n", type=int, default=4000, help="training rows")
    parser.add_argument("--n-test", type=int, default=2000, help="held-out rows")
    parser.add_argument("--iters", type=int, default=5, help="RFM rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (0: default)")
    parser.add_argument(
        "--results-md", default=None, help="also write the table into this RESULTS.md section"
    )
    args = parser.parse_args(argv)
    if args.d < 2:
        parser.error(f"--d: expected an integer >= 2, found {args.d}.")
    tasks = make_tasks(args.d, args.n, args.n_test, args.seed)
    limits = threadpool_limits(limits=args.threads) if args.threads > 0 else None
    try:
        results = [fit_task(t, args.iters, args.seed) for t in tasks]
    finally:
        if limits is not None:
            limits.restore_original_limits()
    text = report(results)
    print(text)
    plot(results, args.out)
    if args.results_md:
        _write_results(args.results_md, text, argv)


def _write_results(path: str, text: str, argv: list[str] | None) -> None:
    """Regenerate the ``feature_recovery`` section of the results page with ``text``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import write_text_section

    write_text_section(
        path,
        "feature_recovery",
        "Feature recovery (planted directions, d = 50)",
        "examples/feature_recovery.py",
        argv,
        text,
    )


if __name__ == "__main__":
    main()
