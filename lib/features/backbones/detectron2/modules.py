"""detectron2's ResNet + FPN as plain torch modules, with detectron2's own state-dict names
(`bottom_up.stem.conv1.norm.running_var`, `fpn_lateral2.weight`, ...), so a detector's
checkpoint loads into them strictly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lib.features.backbones.detectron2.config import BLOCKS_PER_STAGE, BN_NORMS, STAGES, Arch

LEVELS = ("p2", "p3", "p4", "p5", "p6")
EPS = 1e-5  # FrozenBatchNorm2d, BatchNorm2d, SyncBatchNorm and GroupNorm all use 1e-5


class FrozenBatchNorm2d(nn.Module):
    """detectron2's FrozenBatchNorm2d: fixed affine + statistics, initialised to identity
    (running_var = 1 - eps, as detectron2 does); forward is F.batch_norm(training=False)."""

    def __init__(self, num_features: int, eps: float = EPS):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x):
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class EvalBatchNorm2d(FrozenBatchNorm2d):
    """BatchNorm2d / SyncBatchNorm as they compute in eval mode, whatever the module's
    mode (features never come from batch statistics). Keeps BN's num_batches_tracked."""

    def __init__(self, num_features: int, eps: float = EPS):
        super().__init__(num_features, eps)
        self.running_var.fill_(1.0)  # torch's BatchNorm initialisation
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))


def get_norm(norm: str, channels: int) -> nn.Module | None:
    if norm == "":
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels, eps=EPS)
    if norm in BN_NORMS:
        return EvalBatchNorm2d(channels)
    raise ValueError(norm)  # Arch has refused it already


class Conv2d(nn.Conv2d):
    """detectron2.layers.Conv2d: a conv followed by its optional `norm` submodule."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x):
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        return x


class BottleneckBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bottleneck: int, stride: int, arch: Arch):
        super().__init__()
        norm = arch.norm
        if in_ch != out_ch:
            self.shortcut = Conv2d(
                in_ch, out_ch, 1, stride=stride, bias=False, norm=get_norm(norm, out_ch)
            )
        else:
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if arch.stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_ch, bottleneck, 1, stride=stride_1x1, bias=False, norm=get_norm(norm, bottleneck)
        )
        self.conv2 = Conv2d(
            bottleneck,
            bottleneck,
            3,
            stride=stride_3x3,
            padding=1,
            groups=arch.groups,
            bias=False,
            norm=get_norm(norm, bottleneck),
        )
        self.conv3 = Conv2d(bottleneck, out_ch, 1, bias=False, norm=get_norm(norm, out_ch))

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += shortcut
        return F.relu_(out)


class BasicStem(nn.Module):
    def __init__(self, out_ch: int, norm: str):
        super().__init__()
        self.conv1 = Conv2d(
            3, out_ch, 7, stride=2, padding=3, bias=False, norm=get_norm(norm, out_ch)
        )

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    def __init__(self, arch: Arch):
        super().__init__()
        self.stem = BasicStem(arch.stem_out, arch.norm)
        in_ch, out_ch = arch.stem_out, arch.res2_out
        bottleneck = arch.groups * arch.width_per_group
        for idx, (name, n) in enumerate(zip(STAGES, BLOCKS_PER_STAGE[arch.depth], strict=True)):
            first_stride = 1 if idx == 0 else 2
            blocks = []
            for i in range(n):
                stride = first_stride if i == 0 else 1
                blocks.append(BottleneckBlock(in_ch, out_ch, bottleneck, stride, arch))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            out_ch *= 2
            bottleneck *= 2
        self.out_channels = in_ch

    def forward(self, x) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            out[name] = x
        return out


class Detectron2FPN(nn.Module):
    """detectron2's FPN(bottom_up=ResNet, in_features=res2..res5, top_block=LastLevelMaxPool):
    forward(images) → {p2..p6}."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.bottom_up = ResNet(arch)
        self.fuse_type = arch.fuse_type
        use_bias = arch.fpn_norm == ""
        in_channels = [arch.res2_out * 2**i for i in range(4)]
        for stage, cin in zip((2, 3, 4, 5), in_channels, strict=True):
            lateral = Conv2d(
                cin, arch.fpn_out, 1, bias=use_bias, norm=get_norm(arch.fpn_norm, arch.fpn_out)
            )
            output = Conv2d(
                arch.fpn_out,
                arch.fpn_out,
                3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(arch.fpn_norm, arch.fpn_out),
            )
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)

    def forward(self, x) -> dict[str, torch.Tensor]:
        feats = self.bottom_up(x)
        prev = self.fpn_lateral5(feats["res5"])
        results = {"p5": self.fpn_output5(prev)}
        for stage in (4, 3, 2):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{stage}")(feats[f"res{stage}"]) + top_down
            if self.fuse_type == "avg":
                prev = prev / 2
            results[f"p{stage}"] = getattr(self, f"fpn_output{stage}")(prev)
        results["p6"] = F.max_pool2d(results["p5"], kernel_size=1, stride=2, padding=0)
        return {lv: results[lv] for lv in LEVELS}


def random_init(module: Detectron2FPN, seed: int = 0) -> None:
    """detectron2's initialisation (c2_msra_fill for ResNet convs, c2_xavier_fill for the
    FPN, identity norms), from a fixed seed so random-weight features are reproducible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, nn.Conv2d):
                if name.startswith("bottom_up."):
                    nn.init.kaiming_normal_(
                        m.weight, mode="fan_out", nonlinearity="relu", generator=gen
                    )
                else:
                    nn.init.kaiming_uniform_(m.weight, a=1, generator=gen)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
