"""A plain PyTorch forward pass of RWKV-7 "Goose", written from the equations, on a BlinkDL-named state dict.

It is the yardstick the converter is judged against: no fla, no Triton, one token at a time through the wkv
recurrence, in float64 by default. Names are RWKV-LM's canonical ones (no `_orig_mod.`/`module.` prefix); vectors
may be `[1, 1, C]` or `[C]`, `r_k` `[H, N]` or flat (then pass `head_size`).

`l2_eps`, `norm_eps` and `ln_x_eps` select the variant of the function: BlinkDL's by default, or the one an fla
config.json configures (proof/variant.py), so that fla can be proven exactly against the function it runs.

Per head the wkv state S is N x N indexed [value, key], as in BlinkDL's code:
    S_t = S_{t-1} diag(w_t) + (S_{t-1} (-kk_t)) (kk_t * a_t)^T + v_t k_t^T,    y_t = S_t r_t
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ['RWKV7Reference', 'RWKV7State']

# exp(-0.5): the decay is exp(-e^-0.5 * sigmoid(w)), i.e. BlinkDL's exp(-exp(-softplus(-w) - 0.5))
_DECAY_SCALE = math.exp(-0.5)

_VECTORS = ('x_r', 'x_w', 'x_k', 'x_v', 'x_a', 'x_g', 'w0', 'a0', 'v0', 'k_k', 'k_a')
_ATT = _VECTORS + ('w1', 'w2', 'a1', 'a2', 'v1', 'v2', 'g1', 'g2', 'r_k', 'receptance.weight', 'key.weight',
                   'value.weight', 'output.weight', 'ln_x.weight', 'ln_x.bias')
_LAYER0_UNUSED = ('v0', 'v1', 'v2')


@dataclass
class RWKV7State:
    """Recurrent state after a prefix, one entry per layer.

    att_x_prev / ffn_x_prev: the last token's LayerNorm output seen by the time / channel mix (token shift), [B, C].
    wkv: [B, H, N, N] indexed [value, key], float32 at least (float64 when the reference runs in float64).
    """

    att_x_prev: list[torch.Tensor]
    wkv: list[torch.Tensor]
    ffn_x_prev: list[torch.Tensor]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.att_x_prev[i], self.wkv[i], self.ffn_x_prev[i]

    def append(self, layer_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        self.att_x_prev.append(layer_state[0])
        self.wkv.append(layer_state[1])
        self.ffn_x_prev.append(layer_state[2])

    def clone(self) -> RWKV7State:
        return RWKV7State([t.clone() for t in self.att_x_prev], [t.clone() for t in self.wkv],
                          [t.clone() for t in self.ffn_x_prev])


class RWKV7Reference:
    """RWKV-7 language model evaluated straight from BlinkDL tensors; see the module docstring."""

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        dtype: torch.dtype = torch.float64,
        head_size: int | None = None,
        ln_x_eps: float = 64e-5,
        norm_eps: float = 1e-5,
        l2_eps: float | None = None,
    ):
        self.dtype = dtype
        self.l2_eps = l2_eps
        # BlinkDL keeps the wkv state in fp32 when the weights are fp16/bf16
        self.state_dtype = torch.promote_types(dtype, torch.float32)
        self.ln_x_eps = ln_x_eps
        self.norm_eps = norm_eps

        self.vocab, self.hidden = weights['emb.weight'].shape
        C = self.hidden
        layer_ids = {int(m.group(1)) for k in weights if (m := re.match(r'blocks\.(\d+)\.', k))}
        if not layer_ids or layer_ids != set(range(max(layer_ids) + 1)):
            raise ValueError(f'blocks must be numbered 0..L-1, found {sorted(layer_ids)}')
        self.layers = len(layer_ids)

        r_k = weights['blocks.0.att.r_k']
        if r_k.dim() == 2:
            if head_size is not None and head_size != r_k.shape[1]:
                raise ValueError(f'head_size={head_size} contradicts r_k of shape {tuple(r_k.shape)}')
            head_size = r_k.shape[1]
        elif head_size is None:
            raise ValueError('r_k is flat: pass head_size=')
        if C % head_size:
            raise ValueError(f'hidden size {C} is not a multiple of head_size {head_size}')
        self.head_size, self.heads = head_size, C // head_size

        used = set()

        def take(name: str) -> torch.Tensor:
            if name not in weights:
                raise KeyError(f'missing tensor {name!r}')
            used.add(name)
            return self.shaped(name, weights[name])

        self.emb = take('emb.weight')
        self.ln0 = (take('blocks.0.ln0.weight'), take('blocks.0.ln0.bias'))
        self.blocks: list[dict[str, torch.Tensor]] = []
        for i in range(self.layers):
            for n in _LAYER0_UNUSED if i == 0 else ():
                used.add(f'blocks.0.att.{n}')  # created by RWKV-LM training, never read: v_first is layer 0's own v
            self.blocks.append({n: take(f'blocks.{i}.{n}') for n in self.block_names(i)})
        self.ln_out = (take('ln_out.weight'), take('ln_out.bias'))
        self.head = take('head.weight')

        # A tensor we would not read means another architecture (RWKV-7a/7b, RWKV-8...): refuse, never ignore it
        unknown = sorted(set(weights) - used)
        if unknown:
            raise ValueError(f'not a plain RWKV-7 state dict; unexpected tensors: {unknown[:8]}')

    @classmethod
    def empty(cls, *, vocab: int, hidden: int, layers: int, head_size: int, dtype: torch.dtype = torch.float64,
              ln_x_eps: float = 64e-5, norm_eps: float = 1e-5, l2_eps: float | None = None) -> RWKV7Reference:
        """The reference's arithmetic without weights, for running one layer at a time (`embed`, `block`, `final`):
        a caller that streams a checkpoint holds one layer's tensors, never the whole model."""
        self = cls.__new__(cls)
        self.dtype, self.state_dtype = dtype, torch.promote_types(dtype, torch.float32)
        self.ln_x_eps, self.norm_eps, self.l2_eps = ln_x_eps, norm_eps, l2_eps
        self.vocab, self.hidden, self.layers = vocab, hidden, layers
        if hidden % head_size:
            raise ValueError(f'hidden size {hidden} is not a multiple of head_size {head_size}')
        self.head_size, self.heads = head_size, hidden // head_size
        self.emb = self.ln0 = self.ln_out = self.head = None
        self.blocks = []
        return self

    @staticmethod
    def block_names(layer: int) -> list[str]:
        """The tensors block `layer` reads, relative to `blocks.{layer}.` (layer 0 also its ln0, never its v0/v1/v2)."""
        att = [n for n in _ATT if layer > 0 or n not in _LAYER0_UNUSED]
        return ['ln1.weight', 'ln1.bias', 'ln2.weight', 'ln2.bias', 'ffn.x_k', 'ffn.key.weight',
                'ffn.value.weight'] + ['att.' + n for n in att]

    def shaped(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """`t` in this reference's dtype, vectors as [C] and r_k as [H, N] whatever their stored shape."""
        t = t.detach().to(self.dtype)
        last = name.rsplit('.', 1)[-1]
        if last in _VECTORS:
            t = t.reshape(self.hidden)
        elif last == 'r_k':
            t = t.reshape(self.heads, self.head_size)
        return t

    def zero_state(self, batch: int) -> RWKV7State:
        C, H, N = self.hidden, self.heads, self.head_size
        return RWKV7State(
            att_x_prev=[torch.zeros(batch, C, dtype=self.dtype) for _ in range(self.layers)],
            wkv=[torch.zeros(batch, H, N, N, dtype=self.state_dtype) for _ in range(self.layers)],
            ffn_x_prev=[torch.zeros(batch, C, dtype=self.dtype) for _ in range(self.layers)],
        )

    def tuned_state(self, wkv: Sequence[torch.Tensor], batch: int, device=None) -> RWKV7State:
        """The state a state-tuned model starts from, for each of `batch` sequences: layer i's wkv state is `wkv[i]`
        ([H, N, N] indexed [head, value, key], as RWKV-PEFT's `blocks.N.att.time_state` and BlinkDL's rwkv package
        hold it: JL-er/RWKV-PEFT @5b8aac9c rwkvt/operator/rwkvop.py transposes it to fla's [K, V] before
        chunk_rwkv7; BlinkDL/ChatRWKV @965e40b8 rwkv_pip_package/src/rwkv/model.py RWKV_x070_TMix_one computes
        `state @ r` on it as is), in this reference's state dtype, on `device` (default: the tensors'); both token
        shifts zero (no previous token)."""
        C, H, N = self.hidden, self.heads, self.head_size
        layers = list(wkv)
        if len(layers) != self.layers or any(tuple(t.shape) != (H, N, N) for t in layers):
            shapes = sorted({tuple(t.shape) for t in layers})
            raise ValueError(f'tuned state: {len(layers)} layer(s) of {[list(s) for s in shapes]}, expected '
                             f'{self.layers} of [H={H}, N={N}, N={N}]')
        device = layers[0].device if device is None else device
        return RWKV7State(
            att_x_prev=[torch.zeros(batch, C, dtype=self.dtype, device=device) for _ in range(self.layers)],
            wkv=[t.detach().to(device, self.state_dtype).expand(batch, H, N, N).clone() for t in layers],
            ffn_x_prev=[torch.zeros(batch, C, dtype=self.dtype, device=device) for _ in range(self.layers)],
        )

    @torch.no_grad()
    def forward(
        self,
        tokens: torch.LongTensor,
        state: RWKV7State | None = None,
        trace: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, RWKV7State]:
        """Logits [B, T, V] for tokens [B, T] after `state` (zeros if None), and the state after the last token.

        The given state is not modified. With `trace`, the residual stream [B, T, C] after each sub-step is stored
        under 'ln0', 'blocks.{i}.att', 'blocks.{i}.ffn' and 'ln_out'.
        """
        if tokens.dim() != 2:
            raise ValueError(f'tokens must be [B, T], got shape {tuple(tokens.shape)}')
        B = tokens.shape[0]
        state = self.zero_state(B) if state is None else state
        new = RWKV7State([], [], [])

        def record(key: str, x: torch.Tensor):
            if trace is not None:
                trace[key] = x.clone()

        x = self.embed(self.emb[tokens], self.ln0)
        record('ln0', x)
        v_first = None
        for i, p in enumerate(self.blocks):
            x_att, x, v_first, layer_state = self.block(i, p, x, v_first, state.layer(i))
            new.append(layer_state)
            record(f'blocks.{i}.att', x_att)
            record(f'blocks.{i}.ffn', x)

        x = self._layer_norm(x, self.ln_out)
        record('ln_out', x)
        return F.linear(x, self.head), new

    def embed(self, rows: torch.Tensor, ln0: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The residual stream entering block 0: LayerNorm ln0 of the embedding rows [B, T, C]."""
        return self._layer_norm(rows.to(self.dtype), tuple(t.to(self.dtype) for t in ln0))

    def block(self, i: int, p: dict[str, torch.Tensor], x: torch.Tensor, v_first: torch.Tensor | None,
              layer_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
        """Block `i` on the residual stream x [B, T, C] with its weights `p` (`block_names`, already `shaped`).

        `layer_state` is (att_x_prev, wkv, ffn_x_prev) before the first token; returns (x after the time mix,
        x after the channel mix, v_first, the layer's state after the last token)."""
        att_x_prev, wkv, ffn_x_prev = layer_state
        xx = self._layer_norm(x, (p['ln1.weight'], p['ln1.bias']))
        out, v_first, att_last, wkv = self._time_mix(i, p, xx, att_x_prev, wkv, v_first)
        x_att = x + out
        xx = self._layer_norm(x_att, (p['ln2.weight'], p['ln2.bias']))
        out, ffn_last = self._channel_mix(p, xx, ffn_x_prev)
        return x_att, x_att + out, v_first, (att_last, wkv, ffn_last)

    def final(self, x: torch.Tensor, ln_out: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """LayerNorm ln_out of the residual stream; the head is applied by the caller (in slices, when streaming)."""
        return self._layer_norm(x, tuple(t.to(self.dtype) for t in ln_out))

    __call__ = forward

    def _layer_norm(self, x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden,), wb[0], wb[1], eps=self.norm_eps)

    def _l2_normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Each head's kk as a unit vector: BlinkDL's F.normalize (x / max(|x|, 1e-12)), or with `l2_eps` fla's fused
        l2_norm (x / sqrt(|x|^2 + eps), fla/modules/norm/l2norm.py), the one formula fla's fuse_norm changes."""
        if self.l2_eps is None:
            return F.normalize(x, dim=-1, p=2.0)
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) + self.l2_eps)

    @staticmethod
    def _shift(x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        """Previous token's input minus this one's; x_prev stands before the first token."""
        prev = torch.cat([x_prev.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)
        return prev - x

    def _time_mix(self, layer: int, p: dict[str, torch.Tensor], x: torch.Tensor, x_prev: torch.Tensor,
                  wkv: torch.Tensor, v_first: torch.Tensor | None):
        B, T, C = x.shape
        H, N = self.heads, self.head_size
        d = self._shift(x, x_prev)
        xr, xw, xk, xv, xa, xg = (x + d * p[f'att.x_{c}'] for c in 'rwkvag')

        r = F.linear(xr, p['att.receptance.weight'])
        k = F.linear(xk, p['att.key.weight'])
        v = F.linear(xv, p['att.value.weight'])
        w = p['att.w0'] + torch.tanh(xw @ p['att.w1']) @ p['att.w2']
        a = torch.sigmoid(p['att.a0'] + (xa @ p['att.a1']) @ p['att.a2'])
        g = torch.sigmoid(xg @ p['att.g1']) @ p['att.g2']

        kk = self._l2_normalize((k * p['att.k_k']).view(B, T, H, N)).view(B, T, C)
        k = k * (1 + (a - 1) * p['att.k_a'])
        if layer == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(p['att.v0'] + (xv @ p['att.v1']) @ p['att.v2'])

        sd = self.state_dtype
        decay = torch.exp(-_DECAY_SCALE * torch.sigmoid(w.to(sd)))

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.to(sd).view(B, T, H, N)

        rh, wh, kh, vh, kkh, ah = map(heads, (r, decay, k, v, kk, a))
        S = wkv.to(sd).clone()
        ys = []
        for t in range(T):
            removed = S @ (-kkh[:, t]).unsqueeze(-1)  # [B, H, N, 1]: S (-kk)
            S = (S * wh[:, t].unsqueeze(-2) + removed * (kkh[:, t] * ah[:, t]).unsqueeze(-2)
                 + vh[:, t].unsqueeze(-1) * kh[:, t].unsqueeze(-2))
            ys.append((S @ rh[:, t].unsqueeze(-1)).squeeze(-1))
        y = torch.stack(ys, dim=1).to(x.dtype).reshape(B * T, C)

        y = F.group_norm(y, H, p['att.ln_x.weight'], p['att.ln_x.bias'], eps=self.ln_x_eps).view(B, T, C)
        bonus = (r * k * p['att.r_k'].reshape(C)).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N)
        y = y + bonus.view(B, T, C)
        return F.linear(y * g, p['att.output.weight']), v_first, x[:, -1].clone(), S

    @classmethod
    def _channel_mix(cls, p: dict[str, torch.Tensor], x: torch.Tensor, x_prev: torch.Tensor):
        k = x + cls._shift(x, x_prev) * p['ffn.x_k']
        k = torch.relu(F.linear(k, p['ffn.key.weight'])) ** 2
        return F.linear(k, p['ffn.value.weight']), x[:, -1].clone()
