"""Gate blocks of a recurrent weight's heatmap are told apart by drawn lines, not white pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import netlens as nl


@pytest.mark.parametrize(("module", "blocks"), [(nn.LSTM(5, 7), 4), (nn.GRU(5, 7), 3)])
def test_one_line_between_each_pair_of_gate_blocks(module: nn.Module, blocks: int) -> None:
    grid = nl.FilterGrid(module, weight="weight_hh_l0", normalize="symmetric")
    _, ax = grid.plot()
    lines = [line for line in ax.lines if len(set(line.get_ydata())) == 1]
    assert len(lines) == blocks - 1
    # Each line lies on the white pixel row that separates two blocks in the picture.
    array = grid.to_array(scale=1)
    white_rows = np.flatnonzero((array == 255).all(axis=(1, 2)))
    assert sorted(float(line.get_ydata()[0]) for line in lines) == [float(r) for r in white_rows]


def test_no_lines_on_a_plain_heatmap_or_a_filter_grid() -> None:
    _, ax = nl.FilterGrid(torch.randn(6, 4)).plot()
    assert not ax.lines
    _, ax = nl.FilterGrid(nn.Conv2d(1, 4, 3)).plot()
    assert not ax.lines
