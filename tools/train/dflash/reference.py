#!/usr/bin/env python3
"""PyTorch reference of the DFlash drafter (issue 13), exactly per /work/briefs/dflash-spec.md and
docs: the same module serves training (train.py, packed blocks) and is importable by test fixture
scripts (forward_block: one block after a context, as the C drafter runs it).

Architecture (all linear layers without bias; names = the checkpoint's tensor names):
  c_j   = RMSNorm_hidden(fc(f_j))                  f_j: target features [k*H] of context position j
  h_0   = E[anchor], h_1..h_{B-1} = E[mask_token]  E: the TARGET's embedding, frozen (not a weight here)
  layer i (llama), x = input_layernorm(h):
        q = W_q x (block rows only, RoPE at block positions)
        K = [W_k c_j (RoPE at j) ; W_k x (RoPE at block positions)], V likewise (c_j not re-normed)
        attention: every block row sees every context row it is given and every row of its block
        h = h + W_o attn ; h = h + down(silu(gate(y)) * up(y)), y = post_attention_layernorm(h)
  logits_i = E^T-head(norm(h_i)) for block rows i = 1..B-1 (the target's tied LM head, frozen)
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(pos, head_dim, theta):
    """HF llama rotate-half RoPE tables for integer positions pos [...]: cos, sin [..., head_dim]."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    f = pos.to(torch.float32).unsqueeze(-1) * inv
    e = torch.cat([f, f], dim=-1)
    return e.cos(), e.sin()


def apply_rope(x, cos, sin):
    """x [S, N, heads, hd]; cos/sin [S, N, hd]."""
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos.unsqueeze(2) + rot * sin.unsqueeze(2)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, nh, nkv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        self.nh, self.nkv, self.hd = nh, nkv, hd
        self.q_proj = nn.Linear(H, nh * hd, bias=False)
        self.k_proj = nn.Linear(H, nkv * hd, bias=False)
        self.v_proj = nn.Linear(H, nkv * hd, bias=False)
        self.o_proj = nn.Linear(nh * hd, H, bias=False)

    def forward(self, x, ctx, rq, rc, mask):
        """x [S, N, H] normed block rows; ctx [S, T, H] projected context; rq/rc RoPE (cos, sin) of
        the block rows / context rows; mask [S, N, T+N] bool (True = may attend)."""
        S, N, _ = x.shape
        T = ctx.shape[1]
        q = apply_rope(self.q_proj(x).view(S, N, self.nh, self.hd), *rq)
        kb = apply_rope(self.k_proj(x).view(S, N, self.nkv, self.hd), *rq)
        vb = self.v_proj(x).view(S, N, self.nkv, self.hd)
        kc = apply_rope(self.k_proj(ctx).view(S, T, self.nkv, self.hd), *rc)
        vc = self.v_proj(ctx).view(S, T, self.nkv, self.hd)
        k = torch.cat([kc, kb], dim=1)
        v = torch.cat([vc, vb], dim=1)
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask.unsqueeze(1), scale=1.0 / math.sqrt(self.hd))
        return self.o_proj(o.transpose(1, 2).reshape(S, N, self.nh * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, I = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        eps = cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.mlp = MLP(cfg)

    def forward(self, h, ctx, rq, rc, mask):
        h = h + self.self_attn(self.input_layernorm(h), ctx, rq, rc, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class DFlashDrafter(nn.Module):
    """cfg: the checkpoint's config.json dict; embed: the target's embedding matrix [V, H] (frozen,
    also the tied LM head). state_dict() holds the drafter's own weights only."""

    def __init__(self, cfg, embed):
        super().__init__()
        self.cfg = cfg
        H = cfg["hidden_size"]
        kH = len(cfg["target_layers"]) * cfg["target"]["hidden_size"]
        self.fc = nn.Linear(kH, H, bias=False)
        self.hidden_norm = RMSNorm(H, cfg["rms_norm_eps"])
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(H, cfg["rms_norm_eps"])
        self.register_buffer("embed", embed.detach().float(), persistent=False)
        self.vocab = None  # draft vocabulary (LongTensor of ids) or None: the whole vocabulary

    def context(self, feats):
        """feats [S, T, k*H] -> c [S, T, H]."""
        return self.hidden_norm(self.fc(feats))

    def hidden(self, feats, block_tokens, block_pos, ctx_pos, mask, block_len=None):
        """Packed forward. feats [S, T, kH]; block_tokens/block_pos [S, N] (long); ctx_pos [S, T];
        mask [S, N, T+N] bool. Returns the final-normed hidden states of the block rows [S, N, H]."""
        theta, hd = self.cfg["rope_theta"], self.cfg["head_dim"]
        ctx = self.context(feats)
        rq = rope_cos_sin(block_pos, hd, theta)
        rc = rope_cos_sin(ctx_pos, hd, theta)
        h = F.embedding(block_tokens, self.embed)
        if self.cfg.get("anchor_feature"):
            h = h + self.anchor_feature(ctx, block_pos, block_len or self.cfg["block_size"])
        for layer in self.layers:
            h = layer(h, ctx, rq, rc, mask)
        return self.norm(h)

    def anchor_feature(self, ctx, block_pos, B):
        """anchor_feature: every block row also gets the projected context row of the position just
        before its block's anchor (the last committed feature), c_{a-1}; zeros without context.
        ctx [S, T, H]; block_pos [S, N] (each block's rows at a .. a+B-1; row 0 of a block is its
        anchor; B: rows per block in this packing)."""
        S, N = block_pos.shape
        a = block_pos.view(S, -1, B)[:, :, :1].expand(S, N // B, B).reshape(S, N)
        idx = (a - 1).clamp(min=0)
        g = torch.gather(ctx, 1, idx.unsqueeze(-1).expand(S, N, ctx.shape[-1]))
        return g * (a >= 1).unsqueeze(-1).to(g.dtype)

    def logits(self, hid):
        """LM head logits; with a draft vocabulary (the checkpoint's draft_vocab tensor) the other
        ids are -inf, as the C drafter gives them."""
        if self.vocab is None:
            return hid @ self.embed.t()
        out = torch.full(hid.shape[:-1] + (self.embed.shape[0],), float("-inf"), dtype=hid.dtype)
        out[..., self.vocab] = hid @ self.embed[self.vocab].t()
        return out

    @torch.no_grad()
    def forward_block(self, feats, anchor, block_size=None):
        """One block as the C drafter runs it. feats [L-1, kH]: features of committed positions
        0..L-2; anchor: the token x[L-1]. Returns logits [B-1, V] for block rows 1..B-1."""
        B = block_size or self.cfg["block_size"]
        Lc = feats.shape[0]
        toks = torch.full((1, B), self.cfg["mask_token_id"], dtype=torch.long)
        toks[0, 0] = int(anchor)
        bpos = torch.arange(Lc, Lc + B).unsqueeze(0)
        cpos = torch.arange(Lc).unsqueeze(0)
        mask = torch.ones(1, B, Lc + B, dtype=torch.bool)
        hid = self.hidden(feats.float().unsqueeze(0), toks, bpos, cpos, mask, block_len=B)
        return self.logits(hid[0, 1:])
