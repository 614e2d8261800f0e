"""Run by ``accelerate launch`` (two CPU processes, gloo) from ``test_accelerate.py``:
``python -m tests.adapters._accelerate_script MODE OUT`` with MODE one of

- ``loop``: a training loop through ``accelerator.prepare`` (DDP or FSDP2, as the launch
  config says), then the adapter saved from ``accelerator.unwrap_model(model)`` and the
  trained model's outputs on a probe batch (``reference.safetensors``, from rank 0);
- ``trainer``: ``AdapterTrainer`` under the launch config's FSDP2: 4 steps with a
  checkpoint at step 2, then a second trainer resumed from that checkpoint; both save
  their final adapter (``uninterrupted/final``, ``resumed/final``).

Accelerate 1.16 turns FSDP on only for accelerator devices (its state maps a CPU process
group to ``MULTI_CPU`` whatever the config says): with ``CPTENSOR_FORCE_FSDP_ON_CPU=1``
the script sets the state to FSDP with the plugin the launch config describes, so that
Accelerate's own FSDP2 preparation (``fsdp2_prepare_model``) runs on gloo.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import cptensor_adapters as cpa

from ._fsdp_worker import STEPS, batch, config, probe
from ._models import VOCAB, build_tiny, llama_config


def _accelerator():
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True)
    if os.environ.get("CPTENSOR_FORCE_FSDP_ON_CPU") == "1":
        state = accelerator.state
        state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launch config
        state.distributed_type = DistributedType.FSDP
        from accelerate.state import PartialState

        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator


def loop(out: Path) -> None:
    accelerator = _accelerator()
    model = cpa.attach(build_tiny("llama"), config())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model, opt = accelerator.prepare(model, opt)
    ids = batch().chunk(accelerator.num_processes)[accelerator.process_index]
    for _ in range(STEPS):
        loss = model(input_ids=ids).last_hidden_state.pow(2).mean()
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        got = model(input_ids=probe()).last_hidden_state.detach().clone()
    unwrapped = accelerator.unwrap_model(model)
    kind = "fsdp2" if cpa.sharding.sharded_units(unwrapped, unwrapped.parameters()) else "plain"
    if kind == "fsdp2":  # collective: every rank gathers, rank 0 writes
        cpa.save_adapter(unwrapped, out / "adapter")
    elif accelerator.is_main_process:  # the PEFT habit under DDP: must not wait for rank 1
        cpa.save_adapter(unwrapped, out / "adapter")
    if accelerator.is_main_process:
        save_file({"output": got.contiguous()}, str(out / "reference.safetensors"))
        (out / "sharding.txt").write_text(f"{accelerator.distributed_type} {kind}\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _lm() -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = llama_config()
    return cpa.attach(transformers.LlamaForCausalLM(cfg), config())


def trainer(out: Path) -> None:
    from transformers import TrainingArguments

    from cptensor_adapters.trainer import AdapterTrainer

    _accelerator()  # the shared state the Trainer's own Accelerator takes up
    ids = torch.randint(1, VOCAB, (32, 6), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in ids]

    def args(directory: Path) -> TrainingArguments:
        return TrainingArguments(
            str(directory),
            max_steps=4,
            save_steps=2,
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            report_to=[],
            use_cpu=True,
            seed=0,
            logging_steps=100,
            disable_tqdm=True,
            # the Trainer's Accelerator takes up the state set above (FSDP forced on CPU)
            accelerator_config={"use_configured_state": True},
        )

    first = AdapterTrainer(model=_lm(), args=args(out / "uninterrupted"), train_dataset=data)
    assert first.is_fsdp_enabled, "the Trainer did not take up FSDP"
    first.train()
    first.save_model(str(out / "uninterrupted" / "final"))
    second = AdapterTrainer(model=_lm(), args=args(out / "resumed"), train_dataset=data)
    second.train(resume_from_checkpoint=str(out / "uninterrupted" / "checkpoint-2"))
    second.save_model(str(out / "resumed" / "final"))
    second.accelerator.wait_for_everyone()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    mode, directory = sys.argv[1], Path(sys.argv[2])
    {"loop": loop, "trainer": trainer}[mode](directory)
