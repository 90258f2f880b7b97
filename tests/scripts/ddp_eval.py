"""Validation and test of the digits experiment on 2 DDP processes, splits of odd size.

Each rank saves what ``Trainer.validate`` and ``Trainer.test`` returned; rank 0 also saves the
model's parameters, so that the test can evaluate the whole splits itself in plain PyTorch.

Usage: python ddp_eval.py OUT_DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hydra import compose, initialize_config_dir

from lightning_multiloss.app.config import config_dir
from lightning_multiloss.app.train import build
from tests._ddp import save_rank_result
from tests._models import quiet_trainer

# 1797 digits: 45 test samples and 81 validation samples, both odd. The Trainer is the tests' own
# (pytorch_lightning), so the model and the data module are built for that package too.
OVERRIDES = [
    "data.test_fraction=0.025",
    "data.val_fraction=0.045",
    "data.batch_size=16",
    "seed=3",
    "lightning=pytorch_lightning",
]


def main() -> None:
    out_dir = sys.argv[1]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[*OVERRIDES, f"output_dir={out_dir}"])
    datamodule, model, _ = build(cfg)
    trainer = quiet_trainer(devices=2, strategy="ddp")
    val = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    shares = {"val": len(trainer.val_dataloaders.sampler)}
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    shares["test"] = len(trainer.test_dataloaders.sampler)
    result = {
        "val": {k: float(v) for k, v in val.items()},
        "test": {k: float(v) for k, v in test.items()},
        "shares": shares,
    }
    if trainer.global_rank == 0:
        result["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_rank_result(out_dir, trainer.global_rank, result)


if __name__ == "__main__":
    main()
