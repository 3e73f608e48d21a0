"""Helper for the kill -9 test: opens (creates) a workspace, stores one finished variant with a
metric, starts a "measure" job, prints `READY <variant_id> <job_id> <pid>` and sleeps until the
test kills it with SIGKILL. Usage: python -m tests.core.workspace_killer WS.studio MODEL.onnx"""

from __future__ import annotations

import os
import sys
import time


def main(ws_path: str, model_path: str) -> None:
    from studio.core.metrics import Metric
    from studio.core.model import load_model
    from studio.core.pipeline import Variant
    from studio.core.recipe import Recipe
    from studio.core.workspace import Workspace

    handle = load_model(model_path)
    ws = Workspace.create(ws_path, handle)
    recipe = Recipe.loads("name: killed-run\ndefaults:\n  quantize: int8_dynamic\n")
    vid = ws.add_variant(
        Variant(handle.proto, recipe, {"id": "killer"}),
        metrics=[Metric("top1", 0.5, "measured", "killer.npz", n_samples=7)],
    )
    job = ws.start_job("measure", {"recipe": recipe, "variant": vid, "data": "killer.npz"}, variant_id=vid)
    ws.set_state("selection", [vid])
    print(f"READY {vid} {job} {os.getpid()}", flush=True)
    time.sleep(120)  # the test kills us long before this ends


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
