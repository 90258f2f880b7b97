"""Every registered weighting in one 2-process DDP launch: one ``Trainer.fit`` per strategy.

Each rank saves, per strategy, the weights of every training step, the final parameters and
buffers, and the step count. The reg task is unlabelled in rank 0's first batch (rank 0 reads
the even samples), so that rank's reg loss is exactly 0 there while rank 1's is not.

Usage: python ddp_all_weightings.py OUT_DIR [NAME ...]   (default: every registered strategy)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from lightning_multiloss.callback import LossWeightingCallback
from lightning_multiloss.weighting import WEIGHTINGS
from tests._ddp import save_rank_result
from tests._models import quiet_trainer
from tests.test_weighting_properties import PropNet, RecordWeights, loader, make_weighting


def main() -> None:
    out_dir = sys.argv[1]
    results = {}
    rank = 0
    for name in sys.argv[2:] or sorted(WEIGHTINGS):
        model = PropNet(make_weighting(name))
        record = RecordWeights()
        # 32 samples, 2 processes, batches of 8: 2 steps per epoch, 3 epochs (DWA's weights move in
        # the third, STCH's Tchebycheff phase starts there). Rank 0 reads samples 0, 2, 4, ...: its
        # first batch (0..14) has no reg label, rank 1's has all of them.
        trainer = quiet_trainer(
            devices=2, strategy="ddp", max_epochs=3, callbacks=[record, LossWeightingCallback(plot=False)]
        )
        trainer.fit(model, loader(n=32, batch_size=8, unlabelled=range(0, 16, 2)))
        rank = trainer.global_rank
        results[name] = {
            "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "weights": torch.stack(record.weights),
            "losses": [float(v) for v in record.losses],
            "global_step": trainer.global_step,
        }
    save_rank_result(out_dir, rank, results)


if __name__ == "__main__":
    main()
