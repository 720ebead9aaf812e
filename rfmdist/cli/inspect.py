"""``rfmdist inspect``: what a fitted model holds: parameters, rounds, best round, top features."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from rfmdist.cli.common import feature_names, load_model, require_matplotlib


def register(sub: Any) -> argparse.ArgumentParser:
    """Add the ``inspect`` sub-command."""
    parser = sub.add_parser(
        "inspect",
        help="Show a fitted model: parameters, rounds, best round, top features (optional plot).",
        description=(
            "Print the parameters of a model written by 'rfmdist fit', its rounds (train and "
            "validation scores, seconds), the best round and its most important features (the "
            "normalised diagonal of the learned feature matrix M). A fit still running or "
            "interrupted is shown as far as its committed rounds go; the store is only read."
        ),
    )
    parser.add_argument("model", metavar="MODEL.zarr", help="Model store.")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="Features to list (10).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="Plot the best round's feature importances (bars) and their change over the rounds "
        "(lines); needs matplotlib (pip install 'rfmdist[plot]').",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load, summarise, print and plot; returns the exit code."""
    from rfmdist.cli import tables

    if args.top < 1:
        raise ValueError(f"Expected --top >= 1, found {args.top}.")
    plt = None
    if args.plot is not None:
        plt = require_matplotlib()
        tables.check_output_path(args.plot, what="plot", allow_existing=True)
    estimator = load_model(args.model, incomplete=True)
    info = summary(estimator, args.model, top=args.top)
    info["status"] = _status_line(args.model, len(info["rounds"]), int(estimator.iters))
    if args.json:
        sys.stdout.write(json.dumps(info) + "\n")
    else:
        _print(info)
    if plt is not None:
        plot(plt, estimator, args.model, info, args.plot)
    return 0


def summary(estimator: Any, path: str, *, top: int) -> dict[str, Any]:
    """A JSON-ready description of a fitted model.

    Parameters
    ----------
    estimator : fitted estimator
    path : str
    top : int
        Number of features to list.
    """
    names = feature_names(estimator) or [f"x{j}" for j in range(int(estimator.n_features_in_))]
    importances = np.asarray(estimator.feature_importances_, dtype=np.float64)
    order = np.argsort(importances)[::-1][:top]
    params = {k: _plain(v) for k, v in estimator.get_params(deep=False).items()}
    classes = getattr(estimator, "classes_", None)
    return {
        "model": path,
        "estimator": type(estimator).__name__,
        "task": "classification" if classes is not None else "regression",
        "metric": "accuracy" if classes is not None else "mse",
        "n_features": len(names),
        "classes": None if classes is None else [_plain(c) for c in classes],
        "params": params,
        "rounds": [
            {
                "round": int(h["round"]),
                "train_score": _plain(h.get("train_score")),
                "val_score": _plain(h.get("val_score")),
                "seconds": _plain(h.get("seconds")),
                "solver": h.get("solver"),
            }
            for h in estimator.history_
        ],
        "best_round": int(estimator.best_iter_),
        "top_features": [
            {"name": names[j], "index": int(j), "importance": float(importances[j])} for j in order
        ],
    }


def _status_line(path: str, committed: int, iters: int) -> str:
    """'complete', or how far an unfinished fit got and how to continue it."""
    from rfmdist.store import store_status

    status = store_status(path)
    if status == "complete":
        return "complete"
    return (
        f"not finished ({status!r}: running now, or interrupted): {committed} of {iters + 1} "
        "rounds committed; the best round so far is shown. Continue an interrupted fit with "
        "'rfmdist fit --resume' and the same arguments."
    )


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "shape"):
        return f"array of shape {tuple(value.shape)}"
    return str(value)


def _print(info: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(
        f"{info['estimator']} ({info['task']}) in {info['model']}: {info['n_features']} features"
    )
    if info["classes"] is not None:
        out.write(f", {len(info['classes'])} classes")
    out.write("\nparameters: " + ", ".join(f"{k}={v}" for k, v in info["params"].items()) + "\n")
    out.write(f"status: {info['status']}\n\n")
    metric = info["metric"]
    out.write(f"{'round':>5}  {'train ' + metric:>14}  {'val ' + metric:>12}  {'seconds':>8}\n")
    for r in info["rounds"]:
        val = "-" if r["val_score"] is None else f"{r['val_score']:.6g}"
        best = "  <- best" if r["round"] == info["best_round"] else ""
        out.write(
            f"{r['round']:>5}  {r['train_score']:>14.6g}  {val:>12}  {r['seconds'] or 0:>8.2f}{best}\n"
        )
    out.write(f"\nbest round: {info['best_round']}\ntop features (normalised diagonal of M):\n")
    width = max(len(f["name"]) for f in info["top_features"])
    for f in info["top_features"]:
        bar = "#" * round(30 * f["importance"])
        out.write(f"  {f['name']:>{width}}  {f['importance']:6.3f}  {bar}\n")


def importance_history(estimator: Any, path: str) -> np.ndarray:
    """Feature importances of every round, shape (rounds, d)."""
    from rfmdist.interpret import feature_importance_history

    return np.asarray(feature_importance_history(path), dtype=np.float64)


def plot(plt: Any, estimator: Any, path: str, info: dict[str, Any], out: str) -> None:
    """Bars of the best round's top importances and lines of their change over the rounds.

    Parameters
    ----------
    plt : module
        ``matplotlib.pyplot``.
    estimator : fitted estimator
    path : str
        The model store.
    info : dict
        :func:`summary`.
    out : str
        PNG path.
    """
    history = importance_history(estimator, path)
    top = info["top_features"]
    names = [f["name"] for f in top]
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars.barh(names[::-1], [f["importance"] for f in top][::-1], color="tab:blue")
    bars.set_xlabel("importance (normalised diag M)")
    bars.set_title(f"best round ({info['best_round']}): top {len(top)} features")
    rounds = np.arange(history.shape[0])
    for f in top:
        lines.plot(rounds, history[:, f["index"]], marker="o", label=f["name"])
    lines.axvline(info["best_round"], color="grey", linestyle="--", linewidth=1)
    lines.set_xlabel("round")
    lines.set_ylabel("importance")
    lines.set_xticks(rounds)
    lines.set_title("importances over rounds")
    lines.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
