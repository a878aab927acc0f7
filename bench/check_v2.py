"""Correctness check of a KServe v2 endpoint against the peers' numpy reference (as check_correct.py does).

python check_v2.py URL [N] [CONCURRENCY]: N distinct inputs (rng seed 2), CONCURRENCY in flight so batching
servers really batch; prints one CORRECT_JSON line in the peers' format.
"""

import json
import os
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, os.environ.get("PEERS_DIR", str(Path(__file__).resolve().parents[2] / "shared/bench/peers")))
from model import correctness_inputs, forward

url = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 256
conc = int(sys.argv[3]) if len(sys.argv) > 3 else 32
X = correctness_inputs(n)
ref = forward(X)


def one(i):
    tensor = {"name": "input", "shape": [1, 784], "datatype": "FP32", "data": [float(v) for v in X[i]]}
    req = urllib.request.Request(
        url, data=json.dumps({"inputs": [tensor]}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return i, r.status, json.loads(r.read())


got = np.full((n, 10), np.nan)
bad = 0
with ThreadPoolExecutor(conc) as ex:
    for i, status, d in ex.map(one, range(n)):
        try:
            got[i] = d["outputs"][0]["data"]
        except (KeyError, IndexError, ValueError):
            bad += 1
        bad += status != 200
ok = ~np.isnan(got).any(1)
agree = int((got[ok].argmax(1) == ref[ok].argmax(1)).sum())
maxdiff = float(np.abs(got[ok] - ref[ok]).max()) if ok.any() else float("nan")
print(
    "CORRECT_JSON "
    + json.dumps(
        {
            "url": url,
            "n": n,
            "concurrency": conc,
            "bad_responses": bad,
            "argmax_agree": agree,
            "argmax_total": int(ok.sum()),
            "max_abs_diff": maxdiff,
        }
    )
)
