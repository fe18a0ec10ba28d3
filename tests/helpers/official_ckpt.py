"""A checkpoint with the CAL authors' layout, saved the way Lightning saves one (random weights).

`CAL/algorithm/sl.py` holds `CAL_Classifier` in the LightningModule attribute `encoder`;
`CAL/encoder/models.py` names its parts. Used by the import tests and `bench/official.py`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import timm
import torch

BACKBONE = "test_resnet"


def official_state(rows: int, seed: int = 0, backbone: str = BACKBONE) -> OrderedDict[str, torch.Tensor]:
    """CAL_Classifier's state dict under the LightningModule's `encoder.` prefix, random weights.

    timm builds the backbone with its default 1000-way head (`fc`), as `MODEL_DICTS[encoder](pretrained=...)`
    does; FFE is `fft_attn_module.freq_attn_net` = Conv(3->16), ReLU, Conv(16->1), Sigmoid; BNNeck is
    `bottleneck`; the prototypes are the bare parameter `fc2`.
    """
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    net = timm.create_model(backbone, pretrained=False)
    dim = net.num_features
    state["encoder.fc2"] = torch.randn(rows, dim, generator=gen)  # registered on CAL_Classifier itself
    for name, tensor in net.state_dict().items():
        if name.endswith("num_batches_tracked"):
            value = torch.tensor(1234)
        elif name.endswith("running_var"):
            value = torch.rand(tensor.shape, generator=gen) + 0.5
        elif name.endswith(("running_mean", ".bias")):
            value = torch.randn(tensor.shape, generator=gen) * 0.1
        elif tensor.ndim == 1:  # BN weights
            value = 1 + torch.randn(tensor.shape, generator=gen) * 0.1
        else:
            value = torch.randn(tensor.shape, generator=gen) * (2.0 / tensor[0].numel()) ** 0.5
        state[f"encoder.encoder.{name}"] = value
    state["encoder.fft_attn_module.freq_attn_net.0.weight"] = torch.randn(16, 3, 3, 3, generator=gen) * 0.05
    state["encoder.fft_attn_module.freq_attn_net.0.bias"] = torch.randn(16, generator=gen) * 0.1
    state["encoder.fft_attn_module.freq_attn_net.2.weight"] = torch.randn(1, 16, 3, 3, generator=gen) * 0.05
    state["encoder.fft_attn_module.freq_attn_net.2.bias"] = torch.randn(1, generator=gen) * 0.1
    state["encoder.bottleneck.weight"] = 1 + torch.randn(dim, generator=gen) * 0.1
    state["encoder.bottleneck.bias"] = torch.zeros(dim)  # frozen at its init
    state["encoder.bottleneck.running_mean"] = torch.randn(dim, generator=gen) * 0.1
    state["encoder.bottleneck.running_var"] = torch.rand(dim, generator=gen) + 0.5
    state["encoder.bottleneck.num_batches_tracked"] = torch.tensor(1234)
    return state


def lightning_checkpoint(state: OrderedDict[str, torch.Tensor], **extra: Any) -> dict[str, Any]:
    """What Lightning 2.2's checkpoint connector dumps for CAL (no hyper_parameters: CAL never saves them)."""
    trainable = [
        torch.nn.Parameter(v.clone()) for k, v in state.items() if v.is_floating_point() and "running" not in k
    ]
    optimizer = torch.optim.Adam(trainable, lr=2e-4, weight_decay=1e-3)
    for param in trainable:
        param.grad = torch.ones_like(param)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.05)
    monitor = "ModelCheckpoint{'monitor': 'all_acc', 'mode': 'max', 'every_n_train_steps': 0, 'every_n_epochs': 1, 'train_time_interval': None}"  # noqa: E501
    progress = {"total": {"ready": 557, "completed": 557}, "current": {"ready": 557, "completed": 557}}
    return {
        "epoch": 37,
        "global_step": 21166,
        "pytorch-lightning_version": "2.2.5",
        "state_dict": state,
        "loops": {
            "fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 21166}},
            "validate_loop": {"state_dict": {}, "batch_progress": progress},
            "test_loop": {"state_dict": {}},
            "predict_loop": {"state_dict": {}},
        },
        "callbacks": {
            monitor: {
                "monitor": "all_acc",
                "best_model_score": torch.tensor(0.8798),
                "best_model_path": "/exp/OWDFA_CAL/models/best_1_2025.ckpt",
                "current_score": torch.tensor(0.8712),
                "dirpath": "/exp/OWDFA_CAL/models",
                "best_k_models": {"/exp/OWDFA_CAL/models/best_1_2025.ckpt": torch.tensor(0.8798)},
                "kth_best_model_path": "/exp/OWDFA_CAL/models/best_1_2025.ckpt",
                "kth_value": torch.tensor(0.8798),
                "last_model_path": "",
            }
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        **extra,
    }


def save_checkpoint(path: Path, checkpoint: Any, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path, pickle_protocol=protocol)
    return path


class Hostile:
    """Runs `action(*args)` when unpickled by the default unpickler."""

    def __init__(self, action: Any, *args: Any) -> None:
        self.action, self.args = action, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.action, self.args
