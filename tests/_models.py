"""The small models the tests build, and the helpers that build them the same way every time.

One home for the test models: tiny architectures (residual, VGG-style, 1-D and 3-D), the habits
a technique must survive (in-place writes on the input, side effects in ``forward``, NaN on the
way back, a parameter in another dtype), and stand-ins for library classes. A class keeps the
name of the class it copies where netlens reads the kind of a layer from its class name
(``Conv1D``, ``LayerNorm2d``, ``Permute``); the others are named for what they exercise. Only a
model bound to one test stays beside it: one defined inside the test, or one built on that
file's own table or private import.

Building a model under a seed creates its parameters in the order of ``__init__``: a class here
must keep that order, or every number a test derives from its weights changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from netlens.models import LeNet5
from netlens.testing import TinyConvNet

M = TypeVar("M", bound=nn.Module)

# -- building models reproducibly ------------------------------------------------------------------


def seeded(build: Callable[[], M], seed: int = 0) -> M:
    """``build()`` in eval mode, its parameters drawn under ``seed``; the global RNG left alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def seeded_lenet(seed: int = 0, size: int = 16, dtype: torch.dtype = torch.float64) -> LeNet5:
    """LeNet5 on ``size`` x ``size`` inputs in eval mode, built right after ``manual_seed(seed)``.

    The global generator stays seeded: the tests draw their inputs from it next.
    """
    torch.manual_seed(seed)
    return LeNet5(image_size=size).to(dtype).eval()


def randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm2d random statistics and affine parameters, not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(module.num_features, generator=generator))
                module.bias.copy_(torch.randn(module.num_features, generator=generator))
    return model


# -- architectures in miniature --------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN, plus the input (strided 1x1 conv if needed)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)  # traced as an addition
        return self.relu(out)


class ResNetStyle(nn.Module):
    """Stem, three residual blocks (two strided), global average pool, linear classifier."""

    def __init__(self, pool: str = "adaptive") -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = ResidualBlock(6, 6)
        self.layer2 = ResidualBlock(6, 8, 2)
        self.layer3 = ResidualBlock(8, 10, 2)
        self.pool = pool
        self.fc = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self.pool == "adaptive":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        elif self.pool == "mean":
            x = x.mean((2, 3))
        else:  # a global max: no shortcut, the rest of the network runs plainly
            x = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
        return self.fc(x)  # type: ignore[no-any-return]


class VGGStyle(nn.Module):
    """3x3 convolutions and 2x2 max pools, then one linear layer on the flattened map."""

    def __init__(self, widths: tuple[int | str, ...], size: int, cin: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = cin
        for width in widths:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                assert isinstance(width, int)
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * size * size, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))  # type: ignore[no-any-return]


class Assorted(nn.Module):
    """Strided, dilated, grouped and "same" convs, pooling with padding and ceil mode, a
    concatenation along channels, products of branches, a learned map added everywhere, an
    adaptive pool that is an ordinary one, and a flatten by ``view``. Inputs ``(N, 2, 13, 16)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.strided = nn.Conv2d(2, 6, (3, 5), stride=(2, 1), padding=(1, 2))
        self.dilated = nn.Conv2d(2, 4, 3, dilation=2, padding=2)
        self.grouped = nn.Conv2d(10, 10, 3, groups=2, padding="same")
        self.position = nn.Parameter(torch.randn(1, 10, 7, 16))
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.fc = nn.Linear(10 * 2 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.strided(x)  # (6, 7, 16)
        b = F.max_pool2d(torch.tanh(self.dilated(x)), (2, 1), ceil_mode=True)  # (4, 7, 16)
        y = torch.cat([a, b], dim=1) + self.position
        y = self.grouped(F.leaky_relu(y, 0.1)) * torch.sigmoid(y) + 0.5
        y = F.adaptive_avg_pool2d(self.pool(y), (2, 4))  # (10, 4, 8) -> an ordinary 2x2 pool
        return self.fc(y.view(y.size(0), -1))  # type: ignore[no-any-return]


class SqueezeExcite(nn.Module):
    """A channel gate computed from the global mean multiplies the map (a per-copy operand)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.squeeze = nn.Linear(6, 6)
        self.fc = nn.Linear(6 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        gate = torch.sigmoid(self.squeeze(y.mean((2, 3))))
        y = F.max_pool2d(y * gate[:, :, None, None], 2)
        return self.fc(torch.flatten(y, 1))  # type: ignore[no-any-return]


class Signal(nn.Module):
    """1-D convolutions over ``(N, 3, L)`` and the mean over time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 5, 3, padding=1)
        self.pool = nn.MaxPool1d(2, ceil_mode=True)
        self.conv2 = nn.Conv1d(5, 4, 2, stride=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.pool(F.gelu(self.conv(x)))).mean(-1))  # type: ignore[no-any-return]


class FlatSignal(nn.Module):
    """One 1-D conv and ReLU over ``(N, 2, 10)``, flattened into a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class Volume(nn.Module):
    """3-D convolution and pooling over ``(N, 1, 6, 7, 8)`` volumes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.pool = nn.MaxPool3d(2)
        self.fc = nn.Linear(3 * 3 * 3 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))  # type: ignore[no-any-return]


class Colour(nn.Module):
    """A small RGB classifier on ``(N, 3, 8, 8)``, so that Captum's window spans 3 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.max_pool2d(F.relu(self.conv(x)), 2), 1))


class RGBConvs(nn.Module):
    """conv1 (3 -> 4), ReLU, conv2 (4 -> ``width``) on 8x8 pictures."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv2(self.relu1(self.conv1(x)))
        return out


class RGBClassifier(nn.Module):
    """conv1 (3 -> 4), ReLU, pool, conv2 (4 -> 6), ReLU, pool, fc (-> 5) on 8x8 pictures."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        logits: torch.Tensor = self.fc(x.flatten(1))
        return logits


class MixedNet(nn.Module):
    """Conv, BatchNorm, ReLU, pool, conv, dropout, linear on ``(N, 1, 8, 8)``.

    ``meet``, when set, is called at the start of every forward pass: the thread tests use it to
    hold threads inside their calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6 * 4 * 4, 3)
        self.meet: Callable[[], None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.meet is not None:
            self.meet()
        x = self.pool(self.relu(self.bn(self.conv(x))))
        x = self.drop(torch.relu(self.conv2(x)))
        logits: torch.Tensor = self.fc(torch.flatten(x, 1))
        return logits


class WindowGeometry(nn.Module):
    """Strides, paddings, dilations, groups, ceil mode, adaptive pools, a skip and a product."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.b = nn.Conv2d(4, 6, (2, 3), padding="same", groups=2)
        self.c = nn.Conv2d(6, 6, 1)
        self.avg = nn.AvgPool2d(2, ceil_mode=True)
        self.dilated = nn.MaxPool2d(2, stride=1, dilation=2)
        self.adaptive = nn.AdaptiveMaxPool2d((3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn(self.a(x)), inplace=True))
        y = self.b(x)
        y = y + self.c(y) * torch.sigmoid(y)
        return self.adaptive(self.dilated(self.avg(y)))


class WindowGeometry1d(nn.Module):
    """Strided, padded, grouped and dilated 1-D convs, a max pool and an adaptive pool."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(2, 3, 4, stride=3, padding=1)
        self.b = nn.Conv1d(3, 3, 3, groups=3, dilation=2)
        self.pool = nn.AdaptiveAvgPool1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.b(F.max_pool1d(self.a(x), 2)))


# -- what incremental inference must refuse or handle with care ------------------------------------


class Recurrent(nn.Module):
    """A GRU over ``(N, T, 6)`` and a linear head on its last step: no window to occlude inside."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(6, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])  # type: ignore[no-any-return]


class ConvHead(nn.Module):
    """A 3x3 conv (1 -> 2) and a linear head on ``(N, 1, 8, 8)``; subclasses add one habit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))  # type: ignore[no-any-return]


class DataDependent(ConvHead):
    """Control flow on values: torch.fx cannot follow it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return super().forward(x)


class CountsItsCalls(ConvHead):
    """Counts its forward passes: a side effect a traced graph would not repeat."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        self.calls += 1
        return super().forward(x)


class InPlaceSine(ConvHead):
    """An in-place operation that incremental inference does not know (``Tensor.sin_``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.sin_()
        return self.fc(torch.flatten(y, 1))  # type: ignore[no-any-return]


class AliasedInPlace(ConvHead):
    """Adds in place to a tensor it also returns under another name: eager and traced differ."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        kept = y
        y += 1.0  # torch.fx records y = y + 1; eager Python changes `kept` as well
        return self.fc(torch.flatten(kept, 1))  # type: ignore[no-any-return]


class TensorMadeInForward(ConvHead):
    """Adds a tensor made in ``forward``: traced as a constant, never left on the model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = torch.tensor([0.5, -0.5])[None, :, None, None]
        return self.fc(torch.flatten(F.relu(self.conv(x) + shift), 1))  # type: ignore[no-any-return]


class WritesIntoItsInput(nn.Module):
    """Clamps its ``(N, 1, 8, 8)`` input in place, then a conv, an in-place ReLU and a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.clamp_(min=-0.3)  # in place, on the input: later reads see the clamped values
        return self.fc(torch.flatten(F.relu_(self.conv(x)), 1))  # type: ignore[no-any-return]


class WritesIntoItsInputLinear(nn.Module):
    """Clamps its ``(N, 1, 8, 8)`` input in place before one linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.clamp_(min=-0.3)  # the occluded copies must be rebuilt after each pass
        return self.fc(torch.flatten(x, 1))


class CountsBatches(nn.Module):
    """Runs ``inner``, noting the batch size of every forward pass in ``batches``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.inner(x)  # type: ignore[no-any-return]


class StdConv2d(nn.Conv2d):
    """Weight standardisation (BiT's ResNets): its own ``forward`` over a transformed weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.weight.mean((1, 2, 3), keepdim=True)
        var = self.weight.var((1, 2, 3), keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class HalvedConv2d(nn.Conv2d):
    """Overrides only ``_conv_forward``, the hook that ``nn.Conv2d.forward`` calls."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return super()._conv_forward(input, weight * 0.5, bias)


class UnitNorm(nn.Module):
    """A parametrization: each filter scaled to norm 1."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight / weight.flatten(1).norm(dim=1)[:, None, None, None]


class FlattenDropout(nn.Module):
    """``nn.Dropout(inplace=True)`` on ``flatten``'s view of a map; inputs ``(N, 3, 12, 12)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.dropout = nn.Dropout(inplace=True)
        self.fc = nn.Linear(4 * 12 * 12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(F.relu(self.conv(x)).flatten(1)))  # type: ignore[no-any-return]


# -- layers and what they return -------------------------------------------------------------------


class EveryRelu(nn.Module):
    """Each spelling of ReLU once, with and without in place."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(6))
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.convs[0](x))
        x = F.relu(self.convs[1](x), inplace=self.inplace)
        y = self.convs[2](x)
        x = torch.relu_(y) if self.inplace else torch.relu(y)
        y = self.convs[3](x)
        if self.inplace:
            y.relu_()
            x = y
        else:
            x = y.relu()
        x = F.relu_(self.convs[4](x)) if self.inplace else F.relu(self.convs[4](x))
        return self.convs[5](x)


class WithExtras(TinyConvNet):
    """TinyConvNet with a layer it never calls and a layer fed only with a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Conv2d(1, 2, 3)
        self.constant = nn.Linear(2, 2)
        self.register_buffer("fixed", torch.ones(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.constant(self.fixed)[:, :1]


class WithUnusedLayer(nn.Module):
    """Two linear layers on ``(N, 3)``, of which ``forward`` calls only ``used``."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


class SpareConv(nn.Module):
    """A conv on ``(N, 3, H, W)`` and a 1x1 conv ``spare`` that ``forward`` never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.spare = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class Squashed(nn.Module):
    """Tanh (``where="module"``) or sigmoid of GELU (``"function"``) between two convs.

    After ``conv2``, a ReLU and a tanh lie off the path back from it: only the nonlinearity
    between the convs is one the deconvnet does not cover.
    """

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.where == "module":
            x = self.act(x)
        elif self.where == "function":
            x = torch.sigmoid(F.gelu(x))
        x = F.relu(self.conv2(x))
        return self.head(torch.tanh(x).flatten(1))


class TanhBetweenConvs(nn.Module):
    """conv1 (1 -> 3), an ``nn.Tanh`` module, conv2 (3 -> 3), all padded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


class TokenBlock(nn.Module):
    """BERT-style: token features (N, T, 32) through nn.Linear(32, 64), GELU, a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.intermediate = nn.Linear(32, 64)
        self.act = nn.GELU()
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.intermediate(x)).mean(dim=1))


class DictFeatures(nn.Module):
    """Conv and ReLU returning ``{"features": (N, 4, 6, 6), "pooled": (N, 4)}``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.relu(self.conv(x))
        return {"features": features, "pooled": features.mean(dim=(2, 3))}


class DictNet(nn.Module):
    """A ``block`` returning a dict (:class:`DictFeatures`), a linear head on its ``"pooled"``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = DictFeatures()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x)["pooled"])


class ConvPair(nn.Module):
    """A conv whose output is returned twice, as ``(y, 2 * y)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, 2 * y


class ConvPairNet(nn.Module):
    """A ``pair`` layer returning a tuple (:class:`ConvPair`), a linear head on its first."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = ConvPair()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, _ = self.pair(x)
        logits: torch.Tensor = self.fc(torch.relu(first).flatten(1))
        return logits


class PackedOnly(nn.Module):
    """A layer whose output is a bare PackedSequence of a time-first LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        packed = nn.utils.rnn.pack_padded_sequence(x.transpose(0, 1), lengths)
        output, _ = self.rnn(packed)
        padded, _ = nn.utils.rnn.pad_packed_sequence(output)
        return self.fc(padded[-1])  # type: ignore[no-any-return]


class TimeFirst(nn.Module):
    """Takes ``(N, T, D)``, runs a ``batch_first=False`` encoder layer on ``(T, N, D)``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=False
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layer(x.transpose(0, 1)).transpose(0, 1)
        return self.head(out.mean(1))


class ToChannelsLast(nn.Module):
    """Moves the channels of an ``(N, C, H, W)`` map last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class FixedFilter(nn.Module):
    """A conv with a plain float32 tensor as weight (no parameter, no buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.randn(2, 1, 3, 3)
        self.conv = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(F.conv2d(x, self.weight)))


class CountsInputs(nn.Module):
    """The identity, counting in ``seen`` the inputs that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return x


class RegisteredTwice(nn.Module):
    """One Linear registered under two names, ``a`` and ``b``, then a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = self.a  # the same module under a second name
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.b(x))


class Owned(nn.Module):
    """A model registered as a submodule of its own ReLU: the module tree loops."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.act = nn.ReLU()
        self.act.owner = self  # registered as a submodule: the tree loops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class ListWithParent(nn.Module):
    """A model that appends itself to its own ModuleList: the module tree loops."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(3, 3), nn.ReLU()])
        self.blocks.append(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[1](self.blocks[0](x))


# -- stand-ins for library classes: the channel axis read from the class and the data's path -------


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 projection: weight stored (in, out)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class Permute(nn.Module):
    """torchvision.ops.misc.Permute."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)


class Scale(nn.Module):
    """A block of a kind netlens does not know: a learned scale per channel of the last dim."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class GPTMLP(nn.Module):
    """GPT-2's MLP: the activation is registered after c_proj but consumes c_fc's output."""

    def __init__(self, dim: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.c_fc = Conv1D(dim, hidden)
        self.c_proj = Conv1D(hidden, dim)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.c_fc(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.c_proj(hidden_states)
        return self.dropout(hidden_states)


class ActivationFirstMLP(nn.Module):
    """Hugging Face's ViTMLP and CLIPMLP: the activation is registered before both Linears."""

    def __init__(self, dim: int = 8, hidden: int = 24) -> None:
        super().__init__()
        self.activation_fn = nn.GELU()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class ConvThenProjection(nn.Module):
    """Sizes cannot tell: the ReLU consumes the conv's (N, 8, 5, 8) map, and the Linear(8, 8)
    registered right before it would explain its last dim as well."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.proj = nn.Linear(8, 8)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        return self.proj(self.act(features))


class GatedBlock(nn.Module):
    """A block whose last registered module (a Linear gate) does not make its output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.gate = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        gate = torch.sigmoid(self.gate(features.mean(dim=(2, 3))))
        return features * gate[:, :, None, None]


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: a LayerNorm of the channels of (N, C, H, W) maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ChannelsFirstNorm(nn.LayerNorm):
    """Hugging Face's ConvNextLayerNorm: says its layout in ``data_format``."""

    def __init__(self, width: int, data_format: str) -> None:
        super().__init__(width)
        self.data_format = data_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_first":
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(x)


# -- hostile values and dtypes ---------------------------------------------------------------------


class PoisonFromCall(nn.Module):
    """Multiplies by ``value`` from its ``at``-th call on."""

    def __init__(self, at: int, value: float) -> None:
        super().__init__()
        self.at = at
        self.value = value
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * self.value if self.calls >= self.at else x


class PoisonedChannels(nn.Module):
    """A conv on ``(N, 1, 8, 8)`` whose channel 1 is NaN and channel 2 is +inf on some inputs.

    Channel 1 is NaN over the whole map of an input whose first pixel is above 1.5, channel 2
    is +inf where it is below -1.5; channel 0 is always finite.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        first = x[:, 0, :1, :1]
        nan = torch.where(first > 1.5, math.nan, y[:, 1])
        inf = torch.where(first < -1.5, math.inf, y[:, 2])
        return torch.stack([y[:, 0], nan, inf], dim=1)


class NaNWhereOccluded(nn.Module):
    """Divides by the input's top-left value: an occluder with baseline 0 there gives inf."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x / x[:, :, :1, :1]
        return self.fc(self.conv(scaled).flatten(1))


class _NanGradient(torch.autograd.Function):
    """The identity on the way forward; NaN on the way back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        return gradient * float("nan")


class NanBackward(nn.Module):
    """A conv (3 -> 4) whose input's gradient is NaN: finite forward, NaN backward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(_NanGradient.apply(x))  # type: ignore[no-untyped-call]
        return out


class SqrtOfZero(nn.Module):
    """Finite outputs; sqrt of zero has an infinite derivative, so the way back is NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv0(x)
        out: torch.Tensor = self.conv1(features + torch.sqrt(features * 0))
        return out


class Log(nn.Module):
    """``torch.log``: NaN for negative inputs, -inf for zeros."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class TemperedConvs(nn.Module):
    """A float32 conv net with one float64 temperature, registered first; takes float32."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32, x.dtype  # what this model takes
        out: torch.Tensor = self.conv2(torch.relu(self.conv1(x))) / self.temperature.float()
        return out


class TemperedClassifier(nn.Module):
    """A conv classifier with a temperature of its own (float64 by default), registered first."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.tensor(2.0, dtype=dtype))
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv(x)))
        logits: torch.Tensor = self.fc(x.flatten(1)) / self.t.float()
        return logits


class Standardise(nn.Module):
    """Normalisation constants as float64 buffers: ``(x - mean) / std``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.5, dtype=torch.float64))
        self.register_buffer("std", torch.tensor(0.25, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).to(x.dtype)
