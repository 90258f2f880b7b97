"""2-process DDP run of ToyNet; each rank saves its final parameters and logged weights.

Usage: python ddp_weights.py OUT_DIR WEIGHTING [NUM_STEPS]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from lightning_multiloss.schedules import Linear
from lightning_multiloss.weighting import Fixed, Learnable, Scheduled, create_weighting
from tests._ddp import save_rank_result
from tests._models import ToyNet, quiet_trainer, toy_loader


def make_weighting(name: str):
    if name == "fixed":
        return Fixed([0.5, 0.3])
    if name == "scheduled":
        return Scheduled(Linear(1.0, 0.0, duration=6))
    if name == "learnable":
        return Learnable()
    return create_weighting(name)


def main() -> None:
    out_dir, name = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    model = ToyNet(make_weighting(name), lr=0.2)
    trainer = quiet_trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=steps)
    # Each rank sees different data (the DistributedSampler splits the dataset).
    trainer.fit(model, toy_loader(n=96, batch_size=8))
    save_rank_result(
        out_dir,
        trainer.global_rank,
        {
            "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "weights": model.weighting.last_weights.clone(),
            "global_step": trainer.global_step,
        },
    )


if __name__ == "__main__":
    main()
