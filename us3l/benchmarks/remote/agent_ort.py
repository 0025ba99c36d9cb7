"""Self-contained ONNX Runtime timing agent, shipped to a device and run there.

Uses only the standard library, numpy and onnxruntime (nothing from us3l-deploy), so any device
with ``pip install numpy onnxruntime`` can run it. Usage on the device::

    python3 agent_ort.py spec.json

``spec.json``: ``{"models": [{"id": 0, "path": "m0.onnx"}, ...], "batches": [1, 8],
"warmup_ms": 200, "rewarm_ms": 20, "round_seconds": 0.2, "round_iterations": null, "rounds": 5,
"idle_gap_ms": 0, "min_runs": 3, "threads": null}``. The agent warms up each (model, batch) by
time the first time it is seen, then times runs in interleaved rounds across models and prints
one JSON line: ``{"agent": 1, "env": {...}, "times": {"<id>:<batch>": [ms, ...]}}``.
Errors: one line on stderr starting with ``agent error:`` and exit code 3.
"""

import json
import os
import platform
import socket
import sys
import time

AGENT_VERSION = 1
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8"}


def fail(message):
    """Print one error line and exit with code 3."""
    sys.stderr.write("agent error: %s\n" % message)
    sys.exit(3)


def make_session(ort, path, threads):
    """A CPU session with full graph optimisation and ``threads`` intra-op threads."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def make_feed(np, sess, batch):
    """Random inputs at ``batch`` (other dynamic dims = 1)."""
    rng = np.random.default_rng(0)
    feed = {}
    for inp in sess.get_inputs():
        dims = [batch if i == 0 else (d if isinstance(d, int) else 1) for i, d in enumerate(inp.shape)]
        feed[inp.name] = rng.standard_normal(dims).astype(_DTYPES.get(inp.type, "float32"))
    return feed


def time_round(sess, feed, seconds, iterations, min_runs, gap_s):
    """One round of timed runs (ms), by duration or iteration count, optional idle gap."""
    run, clock = sess.run, time.perf_counter
    times = []
    deadline = clock() + seconds
    while True:
        t0 = clock()
        run(None, feed)
        t1 = clock()
        times.append((t1 - t0) * 1e3)
        if iterations:
            if len(times) >= iterations:
                break
        elif t1 >= deadline and len(times) >= min_runs:
            break
        if gap_s:
            time.sleep(gap_s)
    return times


def spin(sess, feed, ms):
    """Time-based warm-up."""
    deadline = time.perf_counter() + ms / 1e3
    while time.perf_counter() < deadline:
        sess.run(None, feed)


def main(argv):
    """Run the spec given on the command line and print the JSON result line."""
    if len(argv) != 2:
        fail("usage: agent_ort.py spec.json")
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as exc:
        fail("missing package on the device (%s); pip install numpy onnxruntime" % exc)
    try:
        with open(argv[1]) as f:
            spec = json.load(f)
    except (OSError, ValueError) as exc:
        fail("cannot read spec %s: %s" % (argv[1], exc))
    try:
        sessions = [(m["id"], make_session(ort, m["path"], spec.get("threads"))) for m in spec["models"]]
    except Exception as exc:  # onnxruntime raises several exception types for bad models
        fail("cannot load a model: %s" % str(exc).splitlines()[0])
    batches = spec["batches"]
    feeds = {}
    times = {}
    gap = float(spec.get("idle_gap_ms") or 0) / 1e3
    n = len(sessions)
    for r in range(int(spec["rounds"])):
        for batch in batches:
            for k in range(n):
                mid, sess = sessions[(r + k) % n]
                key = "%s:%d" % (mid, batch)
                if key not in feeds:
                    feeds[key] = make_feed(np, sess, batch)
                    sess.run(None, feeds[key])
                    spin(sess, feeds[key], float(spec["warmup_ms"]))
                else:
                    spin(sess, feeds[key], float(spec.get("rewarm_ms") or 0))
                times.setdefault(key, []).extend(time_round(
                    sess, feeds[key], float(spec["round_seconds"]), spec.get("round_iterations"),
                    int(spec.get("min_runs") or 1), gap))
    env = {"hostname": socket.gethostname(), "machine": platform.machine(), "platform": platform.platform(),
           "processor": platform.processor(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "onnxruntime": ort.__version__, "numpy": np.__version__}
    sys.stdout.write(json.dumps({"agent": AGENT_VERSION, "env": env, "times": times}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
