"""A frozen reference of the official DiffBIR sampling step, the baseline of ``step_bench.py`` (not a test).

Written from the facts in the project's reference notes (DiffBIR main / v2.1 ``ControlLDM``): one step with
classifier-free guidance is TWO separate ``ControlLDM.forward`` calls, cond first, then uncond, each

    control = controlnet(x=x_t, hint=c_img, timesteps=t, context=c_txt)   # 13 tensors
    control = [c * s for c, s in zip(control, control_scales)]
    out = unet(x=x_t, timesteps=t, context=c_txt, control=control)          # controlled UNet

and then ``uncond + cfg * (cond - uncond)``. The module maths is the official LDM code's, op for op: ResBlock
``skip(x) + out_layers(in_layers(x) + emb_layers(emb))`` with GroupNorm32 evaluated in float32, the linear
SpatialTransformer with ``.contiguous()`` token and output rearranges, attn1 / attn2 / GEGLU feed-forward with
PyTorch SDPA (the official attention mode when torch >= 2 and no xformers), nearest x2 upsampling, and the
UNet popping the controls in reverse into its skip connections.

Why a separate implementation rather than our own modules: the baseline must not move when ``diffbir_core``
is optimised (layouts, caches, fused kernels), so it is deliberately kept as plain per-op torch, driven by the
official state-dict keys alone (the layer kind of every ``input_blocks.i.j`` is read off its keys). It takes
the weights as a state dict, so it computes with exactly the tensors our networks were loaded from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

def _kind(sd: dict, p: str) -> str:
    if f"{p}.in_layers.0.weight" in sd:
        return "resblock"
    if f"{p}.proj_in.weight" in sd:
        return "transformer"
    if f"{p}.op.weight" in sd:
        return "down"
    if f"{p}.conv.weight" in sd:
        return "up"
    if f"{p}.weight" in sd:
        return "conv"
    raise KeyError(f"no official layer at {p}")


def _blocks(sd: dict, name: str) -> list[list[tuple[str, str]]]:
    """[[(kind, key prefix) per layer] per block] of e.g. input_blocks, from the keys alone."""
    blocks, i = [], 0
    while any(k.startswith(f"{name}.{i}.") for k in sd):
        layers, j = [], 0
        while any(k.startswith(f"{name}.{i}.{j}.") for k in sd):
            layers.append((_kind(sd, f"{name}.{i}.{j}"), f"{name}.{i}.{j}"))
            j += 1
        blocks.append(layers)
        i += 1
    return blocks


class OfficialNet:
    """The official forward of an SD 2.1 ``ControlledUnetModel`` or DiffBIR ``ControlNet`` over a state dict."""

    def __init__(self, sd: dict[str, torch.Tensor], head_channels: int = 64):
        self.sd = sd
        self.head_channels = head_channels
        self.model_channels = sd["time_embed.0.weight"].shape[1]
        self.input_blocks = _blocks(sd, "input_blocks")
        self.middle_block = [(_kind(sd, f"middle_block.{j}"), f"middle_block.{j}") for j in range(3)]
        self.output_blocks = _blocks(sd, "output_blocks")
        self.is_controlnet = "middle_block_out.0.weight" in sd
        self.dtype = sd["input_blocks.0.0.weight"].dtype

    # -- layers ------------------------------------------------------------------------------------
    def _linear(self, p, x):
        return F.linear(x, self.sd[f"{p}.weight"], self.sd.get(f"{p}.bias"))

    def _conv(self, p, x, stride=1):
        w = self.sd[f"{p}.weight"]
        return F.conv2d(x, w, self.sd[f"{p}.bias"], stride=stride, padding=w.shape[-1] // 2)

    def _gn32(self, p, x):  # GroupNorm32: super().forward(x.float()).type(x.dtype)
        return F.group_norm(x.float(), 32, self.sd[f"{p}.weight"].float(), self.sd[f"{p}.bias"].float(),
                            1e-5).type(x.dtype)

    def _resblock(self, p, x, emb):
        h = self._conv(f"{p}.in_layers.2", F.silu(self._gn32(f"{p}.in_layers.0", x)))
        emb_out = self._linear(f"{p}.emb_layers.1", F.silu(emb)).type(h.dtype)
        h = h + emb_out[..., None, None]
        h = self._conv(f"{p}.out_layers.3", F.silu(self._gn32(f"{p}.out_layers.0", h)))
        skip = self._conv(f"{p}.skip_connection", x) if f"{p}.skip_connection.weight" in self.sd else x
        return skip + h

    def _attention(self, p, x, context):
        q = self._linear(f"{p}.to_q", x)
        k = self._linear(f"{p}.to_k", context)
        v = self._linear(f"{p}.to_v", context)
        b, n, inner = q.shape
        heads = inner // self.head_channels
        q, k, v = (t.reshape(b, -1, heads, self.head_channels).permute(0, 2, 1, 3) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.permute(0, 2, 1, 3).reshape(b, n, inner)
        return self._linear(f"{p}.to_out.0", out)

    def _layer_norm(self, p, x):
        return F.layer_norm(x, (x.shape[-1],), self.sd[f"{p}.weight"], self.sd[f"{p}.bias"], 1e-5)

    def _transformer(self, p, x, context):
        b, c, h, w = x.shape
        x_in = x
        x = F.group_norm(x, 32, self.sd[f"{p}.norm.weight"], self.sd[f"{p}.norm.bias"], 1e-6)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c).contiguous()  # rearrange b c h w -> b (h w) c
        x = self._linear(f"{p}.proj_in", x)
        d = 0
        while f"{p}.transformer_blocks.{d}.norm1.weight" in self.sd:
            q = f"{p}.transformer_blocks.{d}"
            n1 = self._layer_norm(f"{q}.norm1", x)
            x = self._attention(f"{q}.attn1", n1, n1) + x  # self-attention: context defaults to x
            x = self._attention(f"{q}.attn2", self._layer_norm(f"{q}.norm2", x), context) + x
            hidden, gate = self._linear(f"{q}.ff.net.0.proj", self._layer_norm(f"{q}.norm3", x)).chunk(2, dim=-1)
            x = self._linear(f"{q}.ff.net.2", hidden * F.gelu(gate)) + x
            d += 1
        x = self._linear(f"{p}.proj_out", x)
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()  # rearrange b (h w) c -> b c h w
        return x + x_in

    def _block(self, layers, h, emb, context):
        for kind, p in layers:
            if kind == "resblock":
                h = self._resblock(p, h, emb)
            elif kind == "transformer":
                h = self._transformer(p, h, context)
            elif kind == "down":
                h = self._conv(f"{p}.op", h, stride=2)
            elif kind == "up":
                h = self._conv(f"{p}.conv", F.interpolate(h, scale_factor=2, mode="nearest"))
            else:
                h = self._conv(p, h)
        return h

    def _time_embed(self, timesteps):
        half = self.model_channels // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half).to(timesteps.device)
        args = timesteps[:, None].float() * freqs[None]
        t_emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        w = self.sd["time_embed.0.weight"]
        return self._linear("time_embed.2", F.silu(self._linear("time_embed.0", t_emb.to(w.dtype))))

    # -- forwards ----------------------------------------------------------------------------------
    def controlnet(self, x, hint, timesteps, context):
        emb = self._time_embed(timesteps)
        h = torch.cat((x, hint), dim=1).type(self.dtype)
        context = context.type(self.dtype)
        outs = []
        for i, layers in enumerate(self.input_blocks):
            h = self._block(layers, h, emb, context)
            outs.append(self._conv(f"zero_convs.{i}.0", h))
        h = self._block(self.middle_block, h, emb, context)
        outs.append(self._conv("middle_block_out.0", h))
        return outs

    def unet(self, x, timesteps, context, control):
        emb = self._time_embed(timesteps).type(self.dtype)
        context = context.type(self.dtype)
        hs, h = [], x.type(self.dtype)
        for layers in self.input_blocks:
            h = self._block(layers, h, emb, context)
            hs.append(h)
        h = self._block(self.middle_block, h, emb, context)
        control = list(control)
        h = h + control.pop()
        for layers in self.output_blocks:
            h = torch.cat([h, hs.pop() + control.pop()], dim=1)
            h = self._block(layers, h, emb, context)
        h = h.type(x.dtype)
        h = F.silu(self._gn32("out.0", h))
        return self._conv("out.2", h)


class OfficialStep:
    """One official sampling step's model evaluation: ``ControlLDM.forward`` for cond, then for uncond, CFG."""

    def __init__(self, controlnet_sd: dict, unet_sd: dict, head_channels: int = 64, strength: float = 1.0):
        self.controlnet = OfficialNet(controlnet_sd, head_channels)
        self.unet = OfficialNet(unet_sd, head_channels)
        self.control_scales = [strength] * (len(self.controlnet.input_blocks) + 1)

    def cldm_forward(self, x_noisy, t, c_txt, c_img):
        control = self.controlnet.controlnet(x_noisy, c_img, t, c_txt)
        control = [c * scale for c, scale in zip(control, self.control_scales)]
        return self.unet.unet(x_noisy, t, c_txt, control)

    def __call__(self, x, t, cond: tuple, uncond: tuple | None, cfg_scale: float):
        """cond / uncond: (c_txt, c_img). Two separate forwards, as the official spaced and EDM samplers run."""
        model_cond = self.cldm_forward(x, t, *cond)
        if uncond is None or cfg_scale == 1.0:
            return model_cond
        model_uncond = self.cldm_forward(x, t, *uncond)
        return model_uncond + cfg_scale * (model_cond - model_uncond)
