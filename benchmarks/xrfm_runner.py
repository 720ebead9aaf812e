"""Fit xRFM (the RFM authors' library) on a saved task; run with a Python that has xrfm installed.

Kept out of the project's dependencies: ``python -m venv xrfm-venv && xrfm-venv/bin/pip install
torch==2.13.0 xrfm``, then pass ``--xrfm-python xrfm-venv/bin/python`` to ``synthetic_20k.py``.

Usage: ``python xrfm_runner.py TASK.npz {plain,default} OUT.json``. ``plain``: one RFM (Laplace 'l2'
kernel, L = 10, reg = 1e-3, 5 iterations, best iteration on validation, CPU); ``default``: ``xRFM()``
with its defaults.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def main(path: str, setting: str, out: str) -> None:
    data = np.load(path)
    X, y, Xv, yv, Xt, yt = (
        torch.tensor(data[k], dtype=torch.float32)
        for k in ("X", "y", "X_val", "y_val", "X_test", "y_test")
    )
    start = time.perf_counter()
    if setting == "plain":
        from xrfm import RFM

        model = RFM(kernel="l2", iters=5, bandwidth=10.0, exponent=1.0, device="cpu", verbose=False)
        model.fit((X, y[:, None]), (Xv, yv[:, None]), iters=5, reg=1e-3, early_stop_rfm=False)
    else:
        from xrfm import xRFM

        model = xRFM(device="cpu")
        model.fit(X, y[:, None], Xv, yv[:, None])
    seconds = time.perf_counter() - start
    pred = np.asarray(model.predict(Xt)).reshape(-1)
    mse = float(np.mean((pred - yt.numpy()) ** 2))
    with open(out, "w") as fh:
        json.dump(
            {"seconds": seconds, "test_mse": mse, "torch_threads": torch.get_num_threads()}, fh
        )


if __name__ == "__main__":
    main(*sys.argv[1:4])
