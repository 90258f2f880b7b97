"""A user's Hydra app with the ``RunResultCallback``, trained by 2 DDP processes on CPU (Lightning starts rank 1).

Rank 0 also saves the plain single-process metrics of the final model on the whole validation and
test sets, and its process id (``plain.json``), which the run's ``result.json`` must hold.

Usage: python hydra_result_ddp.py hydra.run.dir=RUN_DIR
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lightning_multiloss.weighting import Fixed
from tests._models import ToyNet, quiet_trainer, toy_loader
from tests.test_run_result import plain_metrics


@hydra.main(version_base="1.3", config_path=None, config_name="ddp_result_app")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(cfg.seed)
    model = ToyNet(Fixed([0.25, 2.0]), metrics=True, seed=cfg.seed)
    trainer = quiet_trainer(max_epochs=2, strategy="ddp", devices=2)
    # 32 validation and 32 test samples: one batch of 16 per process, no sample padded or repeated.
    trainer.fit(model, toy_loader(64), toy_loader(32, seed=1))
    trainer.test(model, toy_loader(32, seed=2))
    if trainer.is_global_zero:
        plain = {"val": plain_metrics(model, 32, 1), "test": plain_metrics(model, 32, 2), "pid": os.getpid()}
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        (run_dir / "plain.json").write_text(json.dumps(plain))


if __name__ == "__main__":
    # Stored here, not on import: pytest imports this file to look for doctests.
    ConfigStore.instance().store(
        name="ddp_result_app",
        node={
            "seed": 5,
            "hydra": {
                "job": {"name": "ddp_app"},
                "callbacks": {"run_result": {"_target_": "lightning_multiloss.hydra_callbacks.RunResultCallback"}},
            },
        },
    )
    main()
