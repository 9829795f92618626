"""fusion_bench's TSV-M as one whole process, for the peer column of ``merge_speed.py``.

    PYTHON benchmarks/_peer_fusion_bench.py '{"pretrained": P, "finetuned": [F1, ...], "out": O, "alpha": 1.0}'

Reads the safetensors files, forms the task vectors ``theta_t - theta_0``, merges them with
``fusion_bench.method.task_singular_vector.utils.TSVM_utils.compute_and_sum_svd_mem_reduction``
on the CPU (``"device"`` in the spec to change it) and writes ``theta_0 + alpha * tau`` to O.
Needs only torch, safetensors and fusion_bench (not pactmerge), so it can run in a venv of
its own. fusion_bench's progress prints go to stderr; the last stdout line is JSON
(``import_s``, ``merge_s``: seconds of the import and of the merge call alone). Exit code 3:
fusion_bench could not be imported.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

MISSING = 3  # exit code when fusion_bench (or one of its imports) is missing: the caller skips the comparison


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    from safetensors.torch import load_file, save_file

    try:
        from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction
    except ImportError as exc:
        print(f"fusion_bench cannot be imported: {type(exc).__name__}: {exc}", file=sys.stderr)
        return MISSING
    import_s = time.perf_counter() - t0

    spec = json.loads(argv[0])
    pre = load_file(spec["pretrained"])
    task_vectors = []
    for path in spec["finetuned"]:
        ft = load_file(path)
        task_vectors.append({k: ft[k] - pre[k] for k in pre})
        del ft
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        tau = compute_and_sum_svd_mem_reduction(task_vectors, exclude_keys=None, accelerator=spec.get("device", "cpu"))
    merge_s = time.perf_counter() - t0
    alpha = float(spec.get("alpha", 1.0))
    save_file({k: (pre[k] + alpha * tau[k].to(pre[k].dtype)).contiguous() for k in pre}, spec["out"])
    print(json.dumps({"import_s": import_s, "merge_s": merge_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
