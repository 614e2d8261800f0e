"""Accelerate: ``accelerate launch`` with two CPU processes (gloo) runs
``_accelerate_script.py``, once with DDP and once with FSDP2 (``fsdp_version: 2``); the
adapter it saves loads in this process and computes what the trained model computed,
which is what one process trains on the whole batch. And ``AdapterTrainer`` under
Accelerate's FSDP2 writes checkpoints that hold the adapter (not the model) and resume
exactly.

How the processes are started (see docs/tutorials/fsdp.md): ``accelerate launch
--config_file CONFIG -m tests.adapters._accelerate_script ...`` with
``ACCELERATE_USE_CPU=true``. A config with ``use_cpu: true`` (or ``--cpu``) would start
one process (Accelerate's CPU launcher needs MPI for more), so the config asks for
``MULTI_GPU`` or ``FSDP`` — which start ``torchrun`` — and ``ACCELERATE_USE_CPU`` makes
the processes a gloo ``MULTI_CPU`` group. Accelerate 1.16 turns FSDP on only on
accelerator devices; ``CPTENSOR_FORCE_FSDP_ON_CPU=1`` makes the script set its state to
FSDP with the plugin the config describes (see the script).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cptensor_adapters as cpa

from ._fsdp_worker import batch, config, output, train
from ._models import build_tiny

pytest.importorskip(
    "accelerate", reason="Accelerate is not installed (pip install 'cptensor[dev]')"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on POSIX only"),
]

ROOT = Path(__file__).resolve().parents[2]

COMMON = """\
compute_environment: LOCAL_MACHINE
num_processes: 2
num_machines: 1
machine_rank: 0
mixed_precision: 'no'
main_process_port: 0
"""
DDP = COMMON + "distributed_type: MULTI_GPU\n"
FSDP2 = (
    COMMON
    + """\
distributed_type: FSDP
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_reshard_after_forward: true
  fsdp_cpu_ram_efficient_loading: false
  fsdp_offload_params: false
"""
)


def _launch(tmp: Path, config_text: str, mode: str, *, fsdp: bool) -> Path:
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo unavailable")
    cfg = tmp / "accelerate.yaml"
    cfg.write_text(config_text)
    out = tmp / "out"
    out.mkdir()
    env = os.environ | {
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    if fsdp:
        env["CPTENSOR_FORCE_FSDP_ON_CPU"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(cfg),
        "-m",
        "tests.adapters._accelerate_script",
        mode,
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return out


@pytest.mark.parametrize(
    ("config_text", "fsdp"), [(DDP, False), (FSDP2, True)], ids=["ddp", "fsdp2"]
)
def test_launch_trains_and_saves_the_adapter(tmp_path: Path, config_text: str, fsdp: bool) -> None:
    out = _launch(tmp_path, config_text, "loop", fsdp=fsdp)
    kind = (out / "sharding.txt").read_text().split()
    assert kind == (
        ["DistributedType.FSDP", "fsdp2"] if fsdp else ["DistributedType.MULTI_CPU", "plain"]
    )
    reference = load_file(str(out / "reference.safetensors"))["output"]
    # the saved adapter, loaded in a plain process, computes what the trained model computed
    plain = cpa.load_adapter(build_tiny("llama"), out / "adapter")
    torch.testing.assert_close(output(plain), reference, atol=1e-5, rtol=1e-4)
    # and that is what one process trains on the whole batch
    single = cpa.attach(build_tiny("llama"), config())
    before = output(single)
    train(single, batch())
    torch.testing.assert_close(reference, output(single), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(reference, before, atol=1e-3)  # training moved the outputs


def test_trainer_under_fsdp2_saves_the_adapter_and_resumes_exactly(tmp_path: Path) -> None:
    out = _launch(tmp_path, FSDP2, "trainer", fsdp=True)
    for run in ("uninterrupted", "resumed"):
        for ckpt in sorted((out / run).glob("checkpoint-*")):
            files = {p.name for p in ckpt.iterdir()}
            assert {"adapter_config.json", "adapter_model.safetensors", "scheduler.pt"} <= files
            assert "optimizer_0" in files  # the sharded optimizer state, for resuming
            assert not any(f.startswith(("pytorch_model", "model")) for f in files), files
            stored = load_file(str(ckpt / "adapter_model.safetensors"))
            assert stored and all(k.startswith("groups.") for k in stored)
    want = load_file(str(out / "uninterrupted" / "final" / "adapter_model.safetensors"))
    got = load_file(str(out / "resumed" / "final" / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=0, rtol=0, msg=k)
    # the resumed run did train past its checkpoint
    mid = load_file(str(out / "uninterrupted" / "checkpoint-2" / "adapter_model.safetensors"))
    assert any(not torch.equal(mid[k], got[k]) for k in got)
