"""Small hand-checkable networks of shared/reference/receptive_fields.json, in plain PyTorch.

Shared by the oracle's self-check (tests/test_oracle_selfcheck.py) and rflens's reference tests
(tests/test_reference.py): one definition, checked by both methods.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class GoogleTest1(nn.Module):
    """(a) 1x1 conv stride 4 VALID; (b) pad top/left 1 -> 3x3 conv s2 VALID -> 1x1 conv s2; added."""

    def __init__(self, c=1):
        super().__init__()
        self.a = nn.Conv2d(c, 2, 1, stride=4)
        self.b1 = nn.Conv2d(c, 2, 3, stride=2)
        self.b2 = nn.Conv2d(2, 2, 1, stride=2)

    def forward(self, x):
        return self.a(x) + self.b2(self.b1(F.pad(x, [1, 0, 1, 0])))


class GoogleTest8(nn.Module):
    """Test 1, then (a) 1x1 conv stride 2; (b) pad top/left 1 -> 3x3 conv stride 2; add."""

    def __init__(self):
        super().__init__()
        self.t1 = GoogleTest1()
        self.a = nn.Conv2d(2, 2, 1, stride=2)
        self.b = nn.Conv2d(2, 2, 3, stride=2)

    def forward(self, x):
        y = self.t1(x)
        return self.a(y) + self.b(F.pad(y, [1, 0, 1, 0]))


def patchgan(c=4):
    """pix2pix NLayerDiscriminator(n_layers=3) with ndf=c: 4x4 convs, padding 1, strides 2, 2, 2, 1, 1."""
    layers = [nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2)]
    for cin, cout in [(c, 2 * c), (2 * c, 4 * c)]:
        layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)]
    layers += [nn.Conv2d(4 * c, 8 * c, 4, 1, 1, bias=False), nn.BatchNorm2d(8 * c), nn.LeakyReLU(0.2)]
    layers += [nn.Conv2d(8 * c, 1, 4, 1, 1)]
    return nn.Sequential(*layers)


def google5():
    """Google test 5: conv (3 high, 5 wide) stride 2 VALID -> conv (3 high, 1 wide) stride 2 VALID."""
    return nn.Sequential(nn.Conv2d(1, 1, (3, 5), 2), nn.Conv2d(1, 1, (3, 1), 2))


def dilated():
    return nn.Sequential(*(nn.Conv2d(1, 1, 3, padding=d, dilation=d) for d in (1, 2, 4)))
