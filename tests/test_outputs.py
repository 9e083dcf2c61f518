"""The one rule for a layer's output: selection, batch and channel axes (netlens._core.outputs)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import pytest
import torch
from _models import (
    GPTMLP,
    ActivationFirstMLP,
    ChannelsFirstNorm,
    Conv1D,
    ConvThenProjection,
    GatedBlock,
    LayerNorm2d,
    Permute,
    Scale,
)
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import netlens as nl
from netlens._core.checks import check_channels, check_int, prepare_inputs
from netlens._core.hooks import Hooks
from netlens._core.model import batched_inputs
from netlens._core.outputs import default_channel_dim, layer_view


def resnet_like() -> nn.Module:
    block = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(4, 4, 3, padding=1),
            bn1=nn.BatchNorm2d(4),
            relu=nn.ReLU(),
            conv2=nn.Conv2d(4, 4, 3, padding=1),
            bn2=nn.BatchNorm2d(4),
        )
    )
    return nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 3), layer1=block, act=nn.ReLU()))


def bert_like() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            dense=nn.Linear(8, 16),
            act=nn.GELU(),
            output=nn.Linear(16, 8),
            LayerNorm=nn.LayerNorm(8),
            dropout=nn.Dropout(0.1),
        )
    )


def gpt_like() -> nn.Module:
    return nn.Sequential(OrderedDict(c_fc=Conv1D(8, 32), act=nn.GELU(), drop=nn.Dropout()))


def convnext_like() -> nn.Module:
    block = nn.Sequential(
        nn.Conv2d(4, 4, 7, padding=3, groups=4),
        Permute([0, 2, 3, 1]),
        nn.LayerNorm(4),
        nn.Linear(4, 16),
        nn.GELU(),
        nn.Linear(16, 4),
        Permute([0, 3, 1, 2]),
    )
    return nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 1), block=block))


def swin_like() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            embed=nn.Conv2d(3, 6, 2, stride=2),
            to_last=Permute([0, 2, 3, 1]),
            stage=Scale(6),
        )
    )


@pytest.mark.parametrize(
    ("build", "name", "expected"),
    [
        (resnet_like, "stem", 1),
        (resnet_like, "layer1", 1),  # a block: its last definite module is a BatchNorm
        (resnet_like, "layer1.relu", 1),  # neutral: inherits from bn1
        (resnet_like, "act", 1),  # neutral, after a block of convolutions
        (bert_like, "dense", -1),
        (bert_like, "act", -1),  # GELU after a Linear
        (bert_like, "dropout", -1),
        (bert_like, "", -1),  # the whole block
        (gpt_like, "c_fc", -1),  # transformers' Conv1D by class name
        (gpt_like, "act", -1),
        (convnext_like, "block", 1),  # Linear, then permuted back to (N, C, H, W)
        (convnext_like, "block.2", -1),
        (swin_like, "to_last", 3),  # a permute module moved the conv's channels last
        (swin_like, "stage", 3),  # unknown kind: inherits from the permuted conv before it
    ],
)
def test_default_channel_dim_follows_the_module_kind(build, name, expected):
    assert default_channel_dim(build(), name) == expected


def test_permute_module_maps_the_channel_axis():
    # torchvision's Permute right after a conv: the conv's channels now sit last
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 6, 1), block=nn.Sequential(nn.Conv2d(6, 6, 1), Permute([0, 2, 3, 1]))
        )
    )
    assert default_channel_dim(model, "block") == 3
    x = torch.randn(2, 3, 5, 7)
    with nl.record(model, "block") as rec:
        model(x)
    view = layer_view(model, "block")
    assert view.channels(rec["block"]) == 6


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.LSTM(3, 5), -1),
        (nn.GRU(3, 5, batch_first=True), -1),
        (nn.MultiheadAttention(8, 2), -1),
        (nn.TransformerEncoderLayer(8, 2, 16), -1),
        (nn.Embedding(10, 4), -1),
        (nn.BatchNorm1d(4), 1),
        (nn.MaxPool2d(2), 1),
        (nn.AdaptiveAvgPool2d(1), 1),
    ],
)
def test_kinds(module, expected):
    assert default_channel_dim(nn.Sequential(module), "0") == expected


def test_time_first_recurrent_batch_axis_never_from_sizes():
    torch.manual_seed(0)
    gru = nn.GRU(3, 5)  # batch_first=False
    model = nn.Sequential(gru)
    x = torch.randn(4, 4, 3)  # T == N: sizes cannot tell the axes apart
    view = layer_view(model, "0")
    output, _ = gru(x)
    arranged = view.arrange(view.tensor((output, None)), 4)
    # arranged is (N, H, T): sample n is column n of the time-first output
    assert arranged.shape == (4, 5, 4)
    torch.testing.assert_close(arranged[2], output[:, 2].T)
    torch.testing.assert_close(view.unarrange(arranged, output), output)


def test_state_of_a_recurrent_layer_has_its_batch_on_dim_1():
    lstm = nn.LSTM(3, 5, batch_first=True)
    view = layer_view(nn.Sequential(lstm), "0", select=1)
    _, (h, _) = lstm(torch.randn(2, 7, 3))
    tensor = view.tensor(lstm(torch.randn(2, 7, 3)))
    assert tensor.shape == h.shape
    assert view.arrange(tensor, 2).shape == (2, 5, 1)


def test_selection_rules():
    view = layer_view(nn.Sequential(nn.Linear(2, 2)), "0")
    a, b = torch.randn(2, 3), torch.randn(2, 4)
    assert view.tensor(a) is a
    assert view.tensor((None, a, b)) is a
    assert view.tensor([a, b]) is a
    assert view.tensor({"x": "text", "y": b, "z": a}) is b
    assert view.tensor(((a,), b)) is a
    with pytest.raises(nl.NetlensTypeError, match="select="):
        view.tensor("text")
    assert layer_view(nn.Sequential(nn.Linear(2, 2)), "0", select=1).tensor((a, b)) is b
    assert layer_view(nn.Sequential(nn.Linear(2, 2)), "0", select="z").tensor({"y": b, "z": a}) is a
    assert (
        layer_view(nn.Sequential(nn.Linear(2, 2)), "0", select=lambda out: out[1]).tensor((a, b))
        is b
    )
    with pytest.raises(nl.NetlensValueError, match="select=5"):
        layer_view(nn.Sequential(nn.Linear(2, 2)), "0", select=5).tensor((a, b))
    with pytest.raises(nl.NetlensValueError, match="'w'"):
        layer_view(nn.Sequential(nn.Linear(2, 2)), "0", select="w").tensor({"y": b})
    with pytest.raises(nl.NetlensTypeError, match="select"):
        layer_view(nn.Sequential(nn.Linear(2, 2)), "0", select=2.5)


def test_model_output_attribute_selection():
    class Output(OrderedDict):
        pass

    out = Output(last_hidden_state=torch.randn(2, 3, 4), pooler_output=torch.randn(2, 4))
    view = layer_view(nn.Sequential(nn.Linear(2, 2)), "0", select="pooler_output")
    assert view.tensor(out) is out["pooler_output"]


@pytest.mark.parametrize("batch_first", [True, False])
def test_packed_sequence_gives_the_padded_tensor(batch_first):
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, batch_first=batch_first)
    x = torch.randn(4, 6, 3) if batch_first else torch.randn(6, 4, 3)
    lengths = torch.tensor([6, 3, 5, 2])
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    view = layer_view(nn.Sequential(lstm), "0")
    tensor = view.tensor(lstm(packed))
    arranged = view.arrange(tensor, 4)
    assert arranged.shape == (4, 5, 6)
    # sample 1 alone, unpadded, gives the same outputs on its valid steps
    single = x[1, :3] if batch_first else x[:3, 1]
    alone, _ = lstm(single.unsqueeze(0 if batch_first else 1))
    expected = alone[0] if batch_first else alone[:, 0]
    torch.testing.assert_close(arranged[1, :, :3], expected.T)
    assert bool((arranged[1, :, 3:] == 0).all())


def test_channel_dim_checks():
    view = layer_view(nn.Sequential(nn.Linear(2, 2)), "0", channel_dim=0)
    with pytest.raises(nl.NetlensValueError, match="batch axis"):
        view.arrange(torch.randn(2, 3))
    view = layer_view(nn.Sequential(nn.Linear(2, 2)), "0", channel_dim=5)
    with pytest.raises(nl.NetlensValueError, match="channel_dim"):
        view.arrange(torch.randn(2, 3))
    with pytest.raises(nl.NetlensTypeError, match="channel_dim"):
        layer_view(nn.Sequential(nn.Linear(2, 2)), "0", channel_dim="last")
    view = layer_view(nn.Sequential(nn.Linear(2, 2)), "0")
    with pytest.raises(nl.NetlensValueError, match="at least 2 dims"):
        view.arrange(torch.randn(3))
    with pytest.raises(nl.NetlensValueError, match="batch of 5"):
        view.arrange(torch.randn(2, 3), 5)


def test_arrange_round_trip_channels_last():
    view = layer_view(swin_like(), "stage", channel_dim=-1)
    tensor = torch.randn(2, 4, 4, 6)
    arranged = view.arrange(tensor, 2)
    assert arranged.shape == (2, 6, 4, 4)
    torch.testing.assert_close(arranged[1, 3], tensor[1, :, :, 3])
    torch.testing.assert_close(view.unarrange(arranged, tensor), tensor)


def test_batched_inputs_guard_names_the_missing_batch_dim():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    image = torch.randn(3, 8, 8)
    with model_guard(model), pytest.raises(nl.NetlensValueError, match=r"unsqueeze\(0\)"):
        with batched_inputs(model, tuple(image.shape)):
            model(image)
    with batched_inputs(model, (1, 3, 8, 8)):
        model(image.unsqueeze(0))
    assert not model[0]._forward_pre_hooks


def model_guard(model: nn.Module):
    from netlens.testing import model_unchanged

    return model_unchanged(model)


def test_hooks_removed_also_on_error():
    net = nn.Linear(2, 2)
    with pytest.raises(RuntimeError), Hooks() as hooks:
        hooks.add(net.register_forward_hook(lambda m, i, o: None))
        hooks.add(net.register_forward_pre_hook(lambda m, i: None))
        raise RuntimeError
    assert not net._forward_hooks and not net._forward_pre_hooks


def test_checks_raise_the_right_types():
    with pytest.raises(nl.NetlensTypeError, match="int"):
        check_int("steps", 2.0)
    with pytest.raises(nl.NetlensValueError, match=">= 1"):
        check_int("steps", 0)
    assert check_channels("channel", 3) == ([3], False)
    assert check_channels("channel", torch.tensor([1, 2])) == ([1, 2], True)
    with pytest.raises(nl.NetlensTypeError):
        check_channels("channel", [1.5])
    with pytest.raises(nl.NetlensValueError):
        check_channels("channel", [])


def test_prepare_inputs_device_and_dtype_policy():
    model = nn.Linear(3, 2)  # float32
    inputs = torch.randn(4, 3, dtype=torch.float64)
    moved, info = prepare_inputs(inputs, model)
    assert moved.dtype == torch.float32
    assert info.restore(moved).dtype == torch.float64
    with pytest.raises(nl.NetlensTypeError, match="floating-point"):
        prepare_inputs(torch.ones(2, 3, dtype=torch.long), model)
    ids, _ = prepare_inputs(torch.ones(2, 3, dtype=torch.long), model, floating=False)
    assert ids.dtype == torch.long
    with pytest.raises(nl.NetlensValueError, match="batch"):
        prepare_inputs(torch.tensor(1.0), model)


def test_same_channels_in_every_thread():
    # layer_view is pure: resolving in threads gives the same answer
    results = []

    def work():
        results.append(layer_view(bert_like(), "act").channel_dim)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [-1] * 4


def test_a_block_returning_something_else_than_its_last_module_reads_dim_1():
    # The block's last module is a Linear(5 -> 3) gate, but its (first) output is the conv's map:
    # the inherited kind (-1, width 3) does not explain a (N, 5, 8, 8) tensor.
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 5, 3, padding=1)
            self.gate = nn.Linear(5, 3)

        def forward(self, x):
            hidden = self.conv(x)
            return {"hidden": hidden, "gate": self.gate(hidden.mean(dim=(2, 3)))}

    model = nn.Sequential(OrderedDict(block=Block()))
    x = torch.randn(2, 1, 8, 8)
    out = model(x)
    view = layer_view(model, "block")
    assert view.channels(view.tensor(out)) == 5
    gate = layer_view(model, "block", select="gate")
    assert gate.channels(gate.tensor(out)) == 3


# -- the data's path, not the order of registration ----------------------------------------------


def _stats_over(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    return tensor.double().movedim(dim, 0).flatten(1).mean(1)


@pytest.mark.parametrize(
    ("build", "inputs", "layer", "dim", "units"),
    [
        (GPTMLP, (2, 5, 8), "act", -1, 32),
        (ActivationFirstMLP, (2, 5, 8), "activation_fn", -1, 24),
        (ConvThenProjection, (2, 8, 5, 8), "act", 1, 8),
        (lambda: nn.Sequential(OrderedDict(block=GatedBlock())), (2, 3, 6, 6), "block", 1, 6),
    ],
    ids=["gpt2-mlp", "activation-first", "conv-then-projection", "gated-block"],
)
@pytest.mark.filterwarnings("ignore:The path from the inputs:UserWarning")
def test_an_inherited_axis_follows_the_data(build, inputs, layer, dim, units):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(*inputs)
    with nl.record(model, layer) as rec:
        model(x)
    output = rec[layer]
    view = layer_view(model, layer)
    assert view.channels(output) == units
    assert view.dims(output)[1] == dim % output.dim()
    stats = nl.activation_stats(model, x, layer)[layer]
    torch.testing.assert_close(stats.mean, _stats_over(output, dim))
    top = nl.top_activations(model, [x], layer, channels=[units - 1], k=2)
    assert top.channels.tolist() == [units - 1]
    with pytest.raises(nl.NetlensValueError):
        nl.occlusion(
            model, x, window=(1, 2), layer=layer, channel=units, scores=lambda o: o.flatten(1)
        )


def test_registration_order_stands_in_where_the_forward_cannot_be_read():
    # A class defined by exec has no source to read: the module registered before the activation
    # is taken for the one it consumes.
    namespace: dict[str, object] = {"nn": nn}
    exec(
        "class Hidden(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(4, 6)\n"
        "        self.act = nn.ReLU()\n"
        "    def forward(self, x):\n"
        "        return self.act(self.fc(x))\n",
        namespace,
    )
    model = namespace["Hidden"]().eval()  # type: ignore[operator]
    assert default_channel_dim(model, "act") == -1
    assert nl.activation_stats(model, torch.randn(2, 3, 4), "act")["act"].num_channels == 6


def test_a_module_called_through_a_helper_method_or_an_alias_is_followed():
    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()  # registered first
            self.norm = nn.LayerNorm(8)
            self.up = nn.Linear(8, 16)

        def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
            act = self.act
            return act(self.up(x))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._feed_forward(self.norm(x))

    model = Layer().eval()
    assert nl.activation_stats(model, torch.randn(2, 5, 8), "act")["act"].num_channels == 16
    assert default_channel_dim(model, "") == -1  # what _feed_forward returns: the activation's


def _chunked(function, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([function(part) for part in x.chunk(2, dim=1)], dim=1)


def test_a_method_handed_to_a_function_is_read_too():
    # DistilBERT's FFN: forward hands self.ff_chunk to a chunking helper; the activation is
    # registered last
    class FFN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dropout = nn.Dropout(0.1)
            self.lin1 = nn.Linear(8, 12)
            self.lin2 = nn.Linear(12, 8)
            self.activation = nn.GELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return _chunked(self.ff_chunk, x)

        def ff_chunk(self, x: torch.Tensor) -> torch.Tensor:
            return self.dropout(self.lin2(self.activation(self.lin1(x))))

    model = nn.Sequential(OrderedDict(ffn=FFN())).eval()
    x = torch.randn(2, 6, 8)
    assert nl.activation_stats(model, x, "ffn.activation")["ffn.activation"].num_channels == 12
    # what forward returns cannot be read: the block's last module of a kind, lin2
    assert nl.activation_stats(model, x, "ffn")["ffn"].num_channels == 8


def test_a_permute_in_the_forward_moves_the_inherited_axis():
    # Hugging Face's ConvNextLayer: permutes written in the forward, no permute modules
    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dwconv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.pwconv = nn.Linear(4, 4)
            self.drop_path = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.pwconv(self.dwconv(x).permute(0, 2, 3, 1))
            return x + self.drop_path(features.permute(0, 3, 1, 2))

    model = nn.Sequential(OrderedDict(layer=Layer())).eval()
    x = torch.randn(2, 4, 4, 4)  # square: sizes alone cannot tell C from W
    for name in ("layer", "layer.drop_path"):
        assert default_channel_dim(model, name) == 1
        stats = nl.activation_stats(model, x, name)[name]
        with nl.record(model, name) as rec:
            model(x)
        torch.testing.assert_close(stats.mean, _stats_over(rec[name], 1))


# -- channel_dim= as a dict is honoured whatever the default came from ----------------------------


def _gate_returning_block() -> nn.Module:
    # the first tensor of the dict is the conv's map, the last registered module a Linear gate
    from netlens.testing import DictBlock

    return nn.Sequential(OrderedDict(block=DictBlock(1, 5, 3))).eval()


def test_a_per_layer_channel_dim_overrides_an_inherited_default():
    torch.manual_seed(0)
    model = _gate_returning_block()
    x = torch.randn(2, 1, 8, 8)
    plain = nl.activation_stats(model, x, "block", channel_dim=-1)["block"]
    per_layer = nl.activation_stats(model, x, "block", channel_dim={"block": -1})["block"]
    assert plain.num_channels == per_layer.num_channels == 8
    torch.testing.assert_close(per_layer.mean, plain.mean)


def test_a_replaced_channel_dim_drops_the_inherited_width():
    from dataclasses import replace

    namespace: dict[str, object] = {"nn": nn, "Conv1D": Conv1D}
    # no source: registration order, then the sizes disagree
    exec(
        "class MLP(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.c_fc = Conv1D(4, 16)\n"
        "        self.c_proj = Conv1D(16, 4)\n"
        "        self.act = nn.GELU()\n"
        "    def forward(self, x):\n"
        "        return self.c_proj(self.act(self.c_fc(x)))\n",
        namespace,
    )
    model = namespace["MLP"]()  # type: ignore[operator]
    view = layer_view(model, "act")
    assert view.inherited_width == 4  # from c_proj, registered before it
    tokens = torch.randn(2, 7, 16)
    assert view.channels(tokens) == 7  # the sizes disagree: dim 1
    stated = replace(view, channel_dim=-1)
    assert stated.inherited_width is None
    assert stated.channels(tokens) == 16
    x = torch.randn(2, 7, 4)
    stats = nl.activation_stats(model, x, "act", channel_dim={"act": -1})["act"]
    assert stats.num_channels == 16


# -- attention, embedding and normalisation kinds; subclasses by what they compute -----------------


@pytest.mark.parametrize(
    ("norm", "dim"),
    [
        (LayerNorm2d(6), 1),
        (ChannelsFirstNorm(6, "channels_first"), 1),
    ],
    ids=["LayerNorm2d", "data_format"],
)
def test_a_layernorm_subclass_of_channels_first_maps_reads_dim_1(norm, dim):
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 6, 1), norm=norm)).eval()
    x = torch.randn(2, 3, 6, 6)  # square maps of 6 channels: sizes cannot tell
    assert default_channel_dim(model, "norm") == dim
    with nl.record(model, "norm") as rec:
        model(x)
    stats = nl.activation_stats(model, x, "norm")["norm"]
    torch.testing.assert_close(stats.mean, _stats_over(rec["norm"], 1))


def test_a_channels_last_data_format_reads_the_last_dim():
    norm = ChannelsFirstNorm(6, "channels_last")
    assert default_channel_dim(nn.Sequential(nn.Linear(3, 6), norm), "1") == -1


def test_kinds_by_class_name_suffix():
    class BertSelfAttention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    class LlamaRMSNorm(BertSelfAttention):
        pass

    class ViTEmbeddings(BertSelfAttention):
        pass

    for module in (BertSelfAttention(), LlamaRMSNorm(), ViTEmbeddings()):
        assert default_channel_dim(nn.Sequential(nn.Conv2d(1, 1, 1), module), "1") == -1


def test_a_block_named_like_an_embedding_follows_its_output():
    # Hugging Face's ConvNextEmbeddings: a conv stem and a channels-first norm, (N, C, H, W)
    class ConvNextEmbeddings(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embeddings = nn.Conv2d(3, 6, 2, stride=2)
            self.layernorm = ChannelsFirstNorm(6, "channels_first")

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.layernorm(self.patch_embeddings(pixels))

    model = nn.Sequential(OrderedDict(embeddings=ConvNextEmbeddings()))
    assert default_channel_dim(model, "embeddings") == 1


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("wrap", ["encoder", "layer"])
def test_transformer_encoder_batch_axis_comes_from_its_layers(batch_first, wrap):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
    module: nn.Module = (
        nn.TransformerEncoder(layer, 2, enable_nested_tensor=False) if wrap == "encoder" else layer
    )

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, E)
            return self.body(x if batch_first else x.transpose(0, 1))

    net = Net().eval()
    view = layer_view(net, "body")
    assert view.batch_dim == (0 if batch_first else 1)
    x = torch.randn(3, 5, 8)  # 3 sequences of 5 tokens
    with nl.record(net, "body") as rec:
        net(x)
    arranged = view.arrange(rec["body"], 3)
    assert arranged.shape == (3, 8, 5)
    expected = net(x) if batch_first else net(x).transpose(0, 1)
    torch.testing.assert_close(arranged, expected.transpose(1, 2))
    stats = nl.activation_stats(net, x, "body")["body"]
    torch.testing.assert_close(stats.mean, _stats_over(expected, -1))
