"""Peak memory of the out-of-core path: the n x m kernel is never held whole.

A fit with 2,000 Nyström centers on n = 200,000 rows, d = 20 (float64) would need 3.2 GB for the
``n x m`` kernel; the fit streams it (``cache_kernel=False``; by default it would be cached where
the memory allows). The fit runs in a fresh subprocess that reports its own peak RSS (VmHWM), as
Falkon's memory checker does; the bound below is a quarter of the kernel's size.
"""

from __future__ import annotations

import json
import subprocess
import sys

N, D, M = 200_000, 20, 2_000
KERNEL_BYTES = N * M * 8
PEAK_RSS_BOUND = KERNEL_BYTES // 4  # 800 MB: data (2 x 32 MB), row blocks and the interpreter

# The child's own high-water mark: VmHWM belongs to the memory map made at exec. ru_maxrss does not
# do here: Linux folds the pre-exec map into it, and a child spawned by vfork shares its parent's
# (the pytest process's), so it reported this process's RSS, not the fit's.
SCRIPT = f"""
import json, resource
import numpy as np
from rfmdist import RFMRegressor

def peak_rss():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

rng = np.random.default_rng(0)
X = rng.normal(size=({N}, {D}))
y = X[:, 0] * X[:, 1]
before = peak_rss()
model = RFMRegressor(iters=0, centers={M}, max_iter=2, random_state=0, solver="pcg",
                     cache_kernel=False)
model.fit(X, y)
peak = peak_rss()
print(json.dumps({{"before": before, "peak": peak, "cached": model.history_[0]["cached_kernel"],
                  "n_centers": model.history_[0]["n_centers"]}}))
"""


def test_peak_rss_of_a_large_nystrom_fit_stays_far_below_the_kernel():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"peak RSS {report['peak'] / 2**20:.0f} MiB (after imports and data: "
        f"{report['before'] / 2**20:.0f} MiB); n x m kernel {KERNEL_BYTES / 2**20:.0f} MiB"
    )
    assert report["n_centers"] == M and report["cached"] is False
    assert report["peak"] < PEAK_RSS_BOUND, report
