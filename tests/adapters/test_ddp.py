"""DistributedDataParallel with two CPU processes (gloo) gives the factor gradients of one
process on the whole batch, for every architecture × layout."""

from __future__ import annotations

import itertools
import sys

import pytest
import torch
from safetensors.torch import load_file

from ._ddp_worker import adapted, batch, factor_grads, run
from ._models import ARCHS, LAYOUTS


@pytest.mark.skipif(sys.platform == "win32", reason="gloo file rendezvous")
def test_ddp_two_processes_match_one(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo unavailable")
    combos = list(itertools.product(ARCHS, LAYOUTS))
    torch.multiprocessing.spawn(run, args=(2, str(tmp_path), combos), nprocs=2, join=True)
    for arch, layout in combos:
        single = factor_grads(adapted(arch, layout), batch(), ddp=False)
        ranks = [load_file(str(tmp_path / f"{arch}-{layout}-rank{r}.safetensors")) for r in (0, 1)]
        assert set(ranks[0]) == set(single) and single
        for name, g in single.items():
            assert g.abs().max() > 0, f"{arch}/{layout}: {name} has no gradient"
            for r in (0, 1):
                torch.testing.assert_close(
                    ranks[r][name], g, atol=1e-6, rtol=1e-5, msg=f"{arch}/{layout} rank {r}: {name}"
                )
