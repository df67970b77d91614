"""Old/new model pairs for the inference tests (importable by the CLI test as `tests.infer_pairs:Class`).

Each pair computes the same function with another layout, except `GeluHead` (computes something else).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn


# ---------------------------------------------------------------- nesting, Sequential -> names, List -> Dict
class OldEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12))

    def forward(self, x):
        return self.body(x)


class OldNested(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.encoder = OldEncoder()
        self.heads = nn.ModuleList([nn.Linear(12, classes), nn.Linear(12, 5)])

    def forward(self, x):
        h = self.encoder(x)
        return torch.cat([self.heads[0](h), self.heads[1](h)], -1)


class MLPComponent(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(OrderedDict(fc_in=nn.Linear(8, 16), act=nn.ReLU(), fc_out=nn.Linear(16, 12)))

    def forward(self, x):
        return self.mlp(x)


class NewNested(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.backbone = MLPComponent()
        self.heads = nn.ModuleDict({"label": nn.Linear(12, classes), "aux": nn.Linear(12, 5)})

    def forward(self, x):
        h = self.backbone(x)
        return torch.cat([self.heads["label"](h), self.heads["aux"](h)], -1)


# ---------------------------------------------------------------- a stack of layers renamed: one rule per move
class OldLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, x):
        x = x + torch.tanh(self.attn(x))
        return x + self.mlp(x)


class NewLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.ffn = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        self.mixer = nn.Linear(8, 8)

    def forward(self, x):
        x = x + torch.tanh(self.mixer(x))
        return x + self.ffn(x)


class OldStack(nn.Module):
    def __init__(self, depth: int = 3):
        super().__init__()
        self.layers = nn.ModuleList([OldLayer() for _ in range(depth)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class NewStack(nn.Module):
    def __init__(self, depth: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList([NewLayer() for _ in range(depth)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


# ---------------------------------------------------------------- same-shaped branches in other roles
class OldBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(4, 6, 3, padding=1), nn.Conv1d(4, 6, 3, padding=1)])
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        a = torch.relu(self.convs[0](x))
        b = torch.tanh(self.convs[1](x))
        return self.head(torch.cat([a, b], 1).mean(-1))


class NewBranches(nn.Module):
    """Declared in the other order; `swap_calls` also runs them in the other order (order misleads)."""

    def __init__(self, swap_calls: bool = False):
        super().__init__()
        self.swap_calls = swap_calls
        self.tanh_branch = nn.Conv1d(4, 6, 3, padding=1)
        self.relu_branch = nn.Conv1d(4, 6, 3, padding=1)
        self.classifier = nn.Linear(12, 2)

    def forward(self, x):
        if self.swap_calls:
            b = torch.tanh(self.tanh_branch(x))
            a = torch.relu(self.relu_branch(x))
        else:
            a = torch.relu(self.relu_branch(x))
            b = torch.tanh(self.tanh_branch(x))
        return self.classifier(torch.cat([a, b], 1).mean(-1))


# ---------------------------------------------------------------- q, k, v
def _attend(q, k, v, heads):
    b, t, e = q.shape
    d = e // heads
    q, k, v = (z.view(b, t, heads, d).transpose(1, 2) for z in (q, k, v))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)
    return (att @ v).transpose(1, 2).reshape(b, t, e)


class OldQKV(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        return self.out(_attend(self.query(x), self.key(x), self.value(x), self.heads))


class NewQKV(nn.Module):
    """Other names, other declaration order, and v computed first: forward order misleads too."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.o_proj, self.v_proj, self.k_proj, self.q_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        v = self.v_proj(x)
        q = self.q_proj(x)
        k = self.k_proj(x)
        return self.o_proj(_attend(q, k, v, self.heads))


# ---------------------------------------------------------------- fused in_proj vs separate projections
class FusedAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class SplitAttentionBlock(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        return self.o(_attend(self.q(x), self.k(x), self.v(x), self.heads))


class SplitAttention(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.attn = SplitAttentionBlock(dim, heads)

    def forward(self, x):
        return self.attn(x)


# ---------------------------------------------------------------- layouts and renamed parameters
class XW(nn.Module):
    """`x @ W + b` with W square: only the activations tell rename from transpose."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.W = nn.Parameter(torch.randn(dim, dim))
        self.b = nn.Parameter(torch.randn(dim))

    def forward(self, x):
        return x @ self.W + self.b


class FlatScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(24))

    def forward(self, x):
        return x.unsqueeze(-1) * self.scale.view(8, 3)


class ShapedScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(8, 3))

    def forward(self, x):
        return x.unsqueeze(-1) * self.scale


class GammaBetaNorm(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.gamma = nn.Parameter(torch.randn(dim))
        self.beta = nn.Parameter(torch.randn(dim))

    def forward(self, x):
        return nn.functional.layer_norm(x, x.shape[-1:], self.gamma, self.beta, 1e-5)


class OldLayout(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = GammaBetaNorm()
        self.dense = XW()
        self.scale = FlatScale()

    def forward(self, x):
        return self.scale(self.dense(self.norm(x)))


class NewLayout(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 8)
        self.rescale = ShapedScale()

    def forward(self, x):
        return self.rescale(self.proj(self.ln(x)))


# ---------------------------------------------------------------- keys the forward never reads
class OldWithExtras(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.fc = nn.Linear(4, 2)
        self.register_buffer("class_weights", torch.tensor([1.0, 3.0]))
        self.register_buffer("loss_weights", torch.tensor([1.0, 3.0]))  # a copy: restorable from class_weights
        self.register_buffer("positions", torch.arange(6))  # an arange: restorable from emb's size
        self.register_buffer("stale_stats", torch.randn(5))  # nothing to rebuild it from

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


class NewWithoutExtras(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(6, 4)
        self.out = nn.Linear(4, 2)
        self.register_buffer("class_weights", torch.tensor([1.0, 3.0]))

    def forward(self, ids):
        return self.out(self.embedding(ids).mean(1))


class OldUsesBias(OldWithExtras):
    """Reads `stale_stats` in its forward: it cannot be dropped, and the new model has no place for it."""

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1)) + self.stale_stats[:2]


# ---------------------------------------------------------------- refusals
class ReluHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)


class GeluHead(nn.Module):
    """Same tensors as ReluHead under other names, but GELU: no exact mapping exists."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        return self.out(self.act(self.hidden(x)))


class WiderHead(nn.Module):
    """Has a tensor nothing in ReluHead can fill."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        self.extra = nn.Linear(2, 7)

    def forward(self, x):
        return self.extra(self.net(x))


# ---------------------------------------------------------------- docs/rules.md walk-through: PyTorch's own layer
class LayerNorm(nn.Module):
    """A hand-written layer norm with the older gamma/beta names."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        return nn.functional.layer_norm(x, x.shape[-1:], self.gamma, self.beta, self.eps)


class Block(nn.Module):
    """What nn.TransformerEncoderLayer(d, h, ff, dropout=0, batch_first=True) computes, written out."""

    def __init__(self, d_model=16, nhead=2, dim_feedforward=32):
        super().__init__()
        self.h = nhead
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d_model, d_model) for _ in range(4))
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(), nn.Linear(dim_feedforward, d_model))
        self.norm_attn, self.norm_ffn = LayerNorm(d_model), LayerNorm(d_model)

    def attend(self, x):
        b, t, e = x.shape
        d = e // self.h
        q, k, v = (p(x).view(b, t, self.h, d).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(b, t, e))

    def forward(self, x):
        x = self.norm_attn(x + self.attend(x))
        return self.norm_ffn(x + self.ffn(x))


def torch_layer(d_model=16, nhead=2, dim_feedforward=32):
    return nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0.0, batch_first=True)


class AbsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(x.abs())


class ReluInput(nn.Module):
    """Equals AbsInput on non-negative inputs only: a proof on other inputs must catch it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.relu(x))


class ScaleInPlace(nn.Module):
    """Scales its input in place: the recorded arguments must be the ones it received."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8))

    def forward(self, x):
        return x.mul_(self.weight)


class OldInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(8, 8)
        self.scale = ScaleInPlace()

    def forward(self, x):
        return self.scale(self.pre(x))


class NewInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.gain = ScaleInPlace()

    def forward(self, x):
        return self.gain(self.inp(x))


class Float64Offset(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("offset", torch.randn(8, dtype=torch.float64))

    def forward(self, x):
        return x + self.offset.float()


class Float32Offset(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.randn(8))

    def forward(self, x):
        return x + self.shift
