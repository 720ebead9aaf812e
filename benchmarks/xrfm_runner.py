"""Fit xRFM (the RFM authors' library) on a saved task; run with a Python that has xrfm installed.

Kept out of the project's dependencies: ``python -m venv xrfm-venv && xrfm-venv/bin/pip install
torch==2.13.0 xrfm==0.4.5``, then pass ``--xrfm-python xrfm-venv/bin/python`` to ``synthetic_20k.py``
or ``vs_xrfm.py``.

Usage: ``python xrfm_runner.py TASK.npz {plain,default} OUT.json``. The task holds ``X, y, X_val, y_val,
X_test, y_test`` and optionally ``task`` ('regression', the default, or 'classification' with integer
class labels). ``plain``: one RFM (Laplace 'l2' kernel, L = 10, reg = 1e-3, 5 iterations, best
iteration on validation, CPU; regression only); ``default``: ``xRFM()`` with its defaults. Regression
targets are standardised with the training statistics before the fit (as rfmdist does) and the
predictions mapped back. Writes the fit seconds, the test score (MSE or accuracy) and torch's threads.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def main(path: str, setting: str, out: str) -> None:
    data = np.load(path, allow_pickle=False)
    task = str(data["task"]) if "task" in data else "regression"
    X, Xv, Xt = (torch.tensor(data[k], dtype=torch.float32) for k in ("X", "X_val", "X_test"))
    y, yv, yt = data["y"], data["y_val"], data["y_test"]
    if task == "classification":
        target = torch.tensor(y, dtype=torch.long)[:, None]
        target_val = torch.tensor(yv, dtype=torch.long)[:, None]
        mean, scale = 0.0, 1.0
    else:
        mean, scale = float(y.mean()), float(y.std()) or 1.0
        target = torch.tensor((y - mean) / scale, dtype=torch.float32)[:, None]
        target_val = torch.tensor((yv - mean) / scale, dtype=torch.float32)[:, None]
    start = time.perf_counter()
    if setting == "plain":
        from xrfm import RFM

        model = RFM(kernel="l2", iters=5, bandwidth=10.0, exponent=1.0, device="cpu", verbose=False)
        model.fit((X, target), (Xv, target_val), iters=5, reg=1e-3, early_stop_rfm=False)
    else:
        from xrfm import xRFM

        model = xRFM(device="cpu", verbose=False)
        model.fit(X, target, Xv, target_val)
    seconds = time.perf_counter() - start
    pred = np.asarray(model.predict(Xt)).reshape(len(yt), -1)[:, 0]
    if task == "classification":
        score = float(np.mean(pred == yt))
    else:
        score = float(np.mean((pred * scale + mean - yt) ** 2))
    with open(out, "w") as fh:
        json.dump(
            {
                "seconds": seconds,
                "test_score": score,
                "test_mse": score if task == "regression" else None,
                "torch_threads": torch.get_num_threads(),
            },
            fh,
        )


if __name__ == "__main__":
    main(*sys.argv[1:4])
