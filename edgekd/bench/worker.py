"""One measurement process of `edgekd.bench.compare.compare_models` (`python -m edgekd.bench.worker`).

Reads a JSON spec on stdin: {a, b: build_runner keyword arguments with `path`; batch_sizes; rounds;
block_s; min_block; warmup: LatencySettings fields; b_first; out: result path}. Loads the two
models (B first when `b_first`, so load order alternates between processes), measures interleaved
rounds at each batch size on the same fixed input, and writes {batches: {bs: measure_rounds output}}
to `out`, or {error: one line} for an edgekd error. A fresh process per call is the point: each
draws its own process-level offset, which the interval in `compare_models` then measures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from edgekd.errors import EdgekdError, first_line


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Build both runners, then measure every batch size; returns {batches: {str(bs): rounds}}."""
    from edgekd.bench.compare import measure_rounds
    from edgekd.bench.latency import LatencySettings, make_input
    from edgekd.bench.runners import build_runner

    order = ("b", "a") if spec["b_first"] else ("a", "b")
    runners = {}
    try:
        for side in order:
            runners[side] = build_runner(**spec[side])
        a, b = runners["a"], runners["b"]
        if tuple(a.info.input_shape) != tuple(b.info.input_shape):
            raise EdgekdError(f"compare: {a.info.path} takes {a.info.input_shape} but {b.info.path} takes "
                              f"{b.info.input_shape}")
        warmup = LatencySettings(**spec["warmup"])
        batches = {}
        for bs in spec["batch_sizes"]:
            x = make_input(a.info.input_shape, int(bs))
            batches[str(bs)] = measure_rounds(a, b, x, int(spec["rounds"]), float(spec["block_s"]),
                                              int(spec["min_block"]), warmup, b_first=bool(spec["b_first"]))
        return {"batches": batches}
    finally:
        for r in runners.values():
            r.close()


def main() -> None:
    spec = json.loads(sys.stdin.read())
    try:
        result = measure(spec)
    except EdgekdError as exc:
        result = {"error": first_line(exc)}
    Path(spec["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
