"""A 2-process DDP run on CPU: the weights and parameters are identical on both ranks."""

import pytest
import torch

from tests._ddp import run_ddp_script


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["fixed", "scheduled", "learnable"])
def test_ddp_ranks_agree(tmp_path, weighting):
    rank0, rank1 = run_ddp_script("ddp_weights.py", tmp_path, weighting, "6")
    assert rank0["global_step"] == rank1["global_step"] == 6
    torch.testing.assert_close(rank0["weights"], rank1["weights"], rtol=0, atol=0)
    for key, value in rank0["params"].items():
        torch.testing.assert_close(value, rank1["params"][key], rtol=0, atol=0, msg=f"{key} differs between ranks")
