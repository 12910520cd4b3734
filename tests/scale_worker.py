"""Worker for tests/test_scale_distributed.py: run under `accelerate launch` (or alone), unlearn the
tiny lab model saved by the test with a few configurations, write each trajectory from rank 0.

Usage: python scale_worker.py MODEL_DIR OUT_DIR CONFIGS_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unmemorize import distributed
    from unmemorize.thresholds import Band
    from unmemorize.unlearning import UnlearnOptions, unlearn
    from unmemorize.unlearning.methods import MethodSpec
    from unlearning_fixtures import make_set, records

    model_dir, out_dir, configs = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    torch.set_num_threads(1)
    d = distributed.setup()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    forget = make_set(tok, records(8, seed=7))
    for name, cfg in configs.items():
        cfg = dict(cfg)
        method, stop, tau = cfg.pop("method"), cfg.pop("stop", "mean"), cfg.pop("tau")
        result = unlearn(model, forget, tau=tau, method=MethodSpec.model_validate(method), stop=stop, band=Band(0.15, 0.6),
                         options=UnlearnOptions(**cfg))
        if distributed.is_main():
            result.trajectory.to_parquet(out_dir / f"{name}.parquet", index=False)
            weights = {n: p.detach().contiguous() for n, p in result.model.named_parameters()}
            torch.save(weights, out_dir / f"{name}.weights.pt")
            (out_dir / f"{name}.json").write_text(json.dumps(
                {"steps": result.steps, "stop_reason": result.stop_reason, "events": result.events,
                 "world_size": result.world_size}))
    if d is not None:
        d.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
