"""Overhead benchmark for SDXL (1024 px, 50 steps), SD3-medium (1024 px, 28 steps) and Flux-dev (1024 px, 28
steps): every component at its real width, random weights (cost does not depend on values).

Depth: CPU memory and time do not allow the full stacks here, so every stack (each text encoder, the SDXL U-Net's
deepest transformer level, the SD3/Flux transformer) is timed at two (Flux: three) reduced depths and extrapolated
*linearly in depth* to the real one: t(L) = t(d1) + (L − d1)·(t(d2) − t(d1))/(d2 − d1), which keeps fixed costs
(embeddings, Python, relevance bookkeeping) fixed. The base excludes the VAE decode (so the overhead is, if
anything, overstated). Projected per image: text stage + steps × denoiser step (2 rows with CFG for SDXL/SD3,
1 for guidance-distilled Flux).
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from amsmooth.config import SmoothingConfig
from amsmooth.pipelines.defense import FamilyDefense
from amsmooth.pipelines.registry import family_slots
from amsmooth.pipelines.views import EncoderView
from amsmooth.smoothing import median_smooth

PROMPT = "a photo of a nude woman sitting on a bench in a sunny park, highly detailed"
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768, max_position_embeddings=77, vocab_size=49408)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              hidden_act="gelu", projection_dim=1280, max_position_embeddings=77, vocab_size=49408)
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, is_encoder_decoder=False)
SDXL_UNET = dict(act_fn="silu", addition_embed_type="text_time", addition_time_embed_dim=256,
                 attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], in_channels=4,
                 out_channels=4, layers_per_block=2, projection_class_embeddings_input_dim=2816, sample_size=128,
                 transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, norm_num_groups=32)
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                  attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                  caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=[16, 56, 56])
FAMILY = {  # encoders (slot name → real config, kind), denoiser, image size, steps, CFG rows, T5 length
    "sdxl": dict(encoders={"clip-l": (CLIP_L, "clip"), "clip-g": (CLIP_G, "clip-proj")}, size=1024, steps=50,
                 rows=2, uncond=False, t5_len=None),
    "sd3": dict(encoders={"clip-l": (CLIP_L, "clip-proj"), "clip-g": (CLIP_G, "clip-proj"), "t5": (T5_XXL, "t5")},
                size=1024, steps=28, rows=2, uncond=True, t5_len=256),
    "flux": dict(encoders={"clip-l": (CLIP_L, "clip"), "t5": (T5_XXL, "t5")}, size=1024, steps=28, rows=1,
                 uncond=False, t5_len=512),
}


def _timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    best = []
    for _ in range(repeat):
        t = time.perf_counter()
        with torch.no_grad():
            fn()
        best.append(time.perf_counter() - t)
    return sorted(best)[len(best) // 2]


def _linear(t1: float, t2: float, d1: int, d2: int, real: int) -> float:
    """Extrapolate linearly in depth (slope clamped at 0 against timing noise)."""
    return t1 + (real - d1) * max(t2 - t1, 0.0) / (d2 - d1)


def _encoder(cfg: dict, kind: str, depth: int, seed: int = 0) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        if kind == "t5":
            return T5EncoderModel(T5Config(**{**cfg, "num_layers": depth})).eval()
        cls = CLIPTextModelWithProjection if kind == "clip-proj" else CLIPTextModel
        return cls(CLIPTextConfig(**{**cfg, "num_hidden_layers": depth})).eval()


def _views(family: str, depth: int) -> list[EncoderView]:
    from amsmooth.models.tiny import clip_tokenizer, t5_tokenizer

    views = []
    for slot in family_slots(family):
        cfg, kind = FAMILY[family]["encoders"][slot.name]
        tok = t5_tokenizer() if kind == "t5" else clip_tokenizer("!" if slot.name == "clip-g" else None)
        views.append(EncoderView(_encoder(cfg, kind, depth), tok, slot))
    return views


def text_stage(family: str, depth: int, n: int = 13) -> dict[str, dict[str, float]]:
    """Per encoder, seconds of its share of the plain and the AMS text stage at depth ``depth`` (and its encoder
    calls): each encoder is timed on its own so each can be extrapolated with its own real depth."""
    spec = FAMILY[family]
    return {v.slot.name: _view_text_stage(v, spec, n) for v in _views(family, depth)}


def _view_text_stage(v: EncoderView, spec: dict, n: int) -> dict[str, float]:
    """One encoder's timings for :func:`text_stage` (its closures are timed here, on this encoder)."""
    L = spec["t5_len"] if v.slot.name == "t5" else v.max_length
    sel = {"output_hidden_states": v.slot.output == "penultimate"}
    ids = v.tokenize([PROMPT]).input_ids[:, :L]
    empty = v.tokenize([""]).input_ids[:, :L]
    t: dict[str, float] = {"text_cond": _timed(lambda: v.model(ids, **sel)),
                           "text_uncond": _timed(lambda: v.model(empty, **sel)) if spec["uncond"] else 0.0}
    defense = FamilyDefense.build([v], ["nudity"], SmoothingConfig(n=n))
    lengths = {v.slot.name: L}
    c0 = v.calls
    t["relevance_cold"] = _timed(lambda: defense.plan([PROMPT], lengths=lengths))
    t["calls_relevance_cold"], c0 = v.calls - c0, v.calls
    t["relevance_warm"] = _timed(lambda: defense.plan([PROMPT], lengths=lengths))
    t["calls_relevance_warm"] = v.calls - c0
    plan = defense.plan([PROMPT], lengths=lengths)
    noise = defense.noise(plan, n, torch.Generator().manual_seed(0))[0]
    kept: list[torch.Tensor] = []

    def noisy() -> None:
        with v.noise_hook(noise):
            o = v.model(ids.repeat(n, 1), **sel)
        kept[:] = [o.hidden_states[-2] if sel["output_hidden_states"] else o[0]]

    t["noisy_encodings"] = _timed(noisy)
    t["calls_noisy"] = 1
    t["median"] = _timed(lambda: median_smooth(kept[0].reshape(n, 1, *kept[0].shape[1:])), repeat=3)
    t["noisy_activation_mib"] = kept[0].numel() * kept[0].element_size() / 2**20
    return t


def denoiser_step(family: str, depth: tuple[int, ...], size: int, rows: int) -> float:
    """One denoiser forward on ``rows`` latents of ``size`` px at reduced ``depth``."""
    import diffusers

    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        if family == "sdxl":
            c = SDXL_UNET
            m = diffusers.UNet2DConditionModel(**{**c, "transformer_layers_per_block": [1, 2, depth[0]]})
            x = torch.randn(rows, 4, size // 8, size // 8, generator=g)
            pooled = c["projection_class_embeddings_input_dim"] - 6 * c["addition_time_embed_dim"]
            kw = dict(encoder_hidden_states=torch.randn(rows, 77, c["cross_attention_dim"], generator=g),
                      added_cond_kwargs={"text_embeds": torch.randn(rows, pooled, generator=g),
                                         "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * rows).float()})
            fn = lambda: m(x, torch.tensor(500), **kw)  # noqa: E731
        elif family == "sd3":
            m = diffusers.SD3Transformer2DModel(**{**SD3_MEDIUM, "num_layers": depth[0]})
            x = torch.randn(rows, 16, size // 8, size // 8, generator=g)
            c = SD3_MEDIUM
            kw = dict(encoder_hidden_states=torch.randn(rows, 77 + 256, c["joint_attention_dim"], generator=g),
                      pooled_projections=torch.randn(rows, c["pooled_projection_dim"], generator=g),
                      timestep=torch.tensor([500.0] * rows))
            fn = lambda: m(hidden_states=x, **kw)  # noqa: E731
        else:
            m = diffusers.FluxTransformer2DModel(**{**FLUX_DEV, "num_layers": depth[0], "num_single_layers": depth[1]})
            side = size // 16
            c = FLUX_DEV
            kw = dict(hidden_states=torch.randn(rows, side * side, c["in_channels"], generator=g),
                      encoder_hidden_states=torch.randn(rows, 512, c["joint_attention_dim"], generator=g),
                      pooled_projections=torch.randn(rows, c["pooled_projection_dim"], generator=g),
                      timestep=torch.tensor([0.5] * rows),
                      img_ids=torch.zeros(side * side, 3), txt_ids=torch.zeros(512, 3),
                      guidance=torch.tensor([3.5] * rows))
            fn = lambda: m(**kw)  # noqa: E731
    m.eval()
    return _timed(fn)


@dataclass
class FamilyReport:
    family: str
    settings: dict
    text: dict = field(default_factory=dict)
    step: float = 0.0
    measured: dict = field(default_factory=dict)


def run_family_benchmark(family: str, quick: bool = True, n: int = 13, log: Callable[[str], None] = print,
                         size: int | None = None) -> FamilyReport:
    """Measure at two reduced depths, extrapolate to the real depths; see the module doc."""
    spec = {**FAMILY[family], **({"size": size} if size else {})}
    d1, d2 = (1, 2) if quick else (2, 4)
    rep = FamilyReport(family, {"size": spec["size"], "steps": spec["steps"], "rows": spec["rows"], "n": n,
                                "depths": [d1, d2], "quick": quick, "threads": torch.get_num_threads()})
    log(f"{family}: text stage at encoder depths {d1} and {d2} …")
    t1, t2 = text_stage(family, d1, n), text_stage(family, d2, n)
    real = {name: cfg.get("num_hidden_layers", cfg.get("num_layers")) for name, (cfg, _) in spec["encoders"].items()}
    rep.settings["encoder_depths"] = real
    rep.measured = {"text_d1": t1, "text_d2": t2}
    per = {name: {k: (_linear(t1[name][k], t2[name][k], d1, d2, real[name])
                      if not k.startswith(("calls", "noisy_act")) else t1[name][k]) for k in t1[name]}
           for name in t1}
    rep.settings["text_per_encoder"] = per
    rep.text = {k: sum(p[k] for p in per.values()) for k in next(iter(per.values()))}
    log(f"{family}: denoiser step at {spec['size']} px, reduced depth …")
    if family == "flux":
        a, b, c = (denoiser_step(family, d, spec["size"], spec["rows"]) for d in ((1, 1), (2, 1), (1, 2)))
        rep.measured["step"] = {"(1,1)": a, "(2,1)": b, "(1,2)": c}
        rep.step = (a + (FLUX_DEV["num_layers"] - 1) * max(b - a, 0)
                    + (FLUX_DEV["num_single_layers"] - 1) * max(c - a, 0))
    else:
        real_d = 10 if family == "sdxl" else SD3_MEDIUM["num_layers"]
        s1, s2 = (denoiser_step(family, (d,), spec["size"], spec["rows"]) for d in (d1, d2))
        rep.measured["step"] = {str(d1): s1, str(d2): s2}
        rep.step = _linear(s1, s2, d1, d2, real_d)
    return rep


def project(rep: FamilyReport) -> dict[str, float]:
    """Projected seconds per image: undefended, AMS cold and warm word cache."""
    t, s = rep.text, rep.settings
    base = s["steps"] * rep.step
    plain = t["text_cond"] + t["text_uncond"]
    ams = t["text_uncond"] + t["noisy_encodings"] + t["median"]
    return {"w/o defense": plain + base, "AMS (ours)": ams + t["relevance_cold"] + base,
            "AMS, warm word cache": ams + t["relevance_warm"] + base}


TARGETS = {"sdxl": 1.0, "sd3": 2.0, "flux": 2.0}


def format_family_report(rep: FamilyReport) -> str:
    s, t = rep.settings, rep.text
    proj = project(rep)
    base = proj["w/o defense"]
    lines = [f"## {rep.family} overhead ({s['size']} px, {s['steps']} steps, {s['rows']} denoiser row(s)/step, "
             f"n = {s['n']}; CPU float32, {s['threads']} threads; random weights at real width)", "",
             "| defense | projected s / image | overhead | target |", "|---|---:|---:|---:|"]
    for k, v in proj.items():
        tgt = "" if k == "w/o defense" else f"≤ {TARGETS[rep.family]:.0f} %"
        lines.append(f"| {k} | {v:.1f} | {'—' if k == 'w/o defense' else f'{100 * (v / base - 1):+.2f} %'} | {tgt} |")
    lines += ["", f"Extrapolated linearly in depth from depths {s['depths']} (real: encoders "
              f"{s['encoder_depths']}, denoiser real depth; measured values in the JSON); VAE decode excluded.",
              f"Denoiser step (projected): {rep.step:.2f} s. "
              f"Text stage (projected, s): plain {t['text_cond'] + t['text_uncond']:.2f}, "
              f"relevance cold {t['relevance_cold']:.2f} / warm {t['relevance_warm']:.2f}, noisy "
              f"{t['noisy_encodings']:.2f}, median {t['median']:.3f}.",
              f"Encoder calls per prompt: relevance cold {int(t['calls_relevance_cold'])}, warm "
              f"{int(t['calls_relevance_warm'])}; noisy encodings {int(t['calls_noisy'])} (one batched call of n "
              f"rows per encoder).",
              f"Extra memory of the n noisy conditionings: {t['noisy_activation_mib']:.0f} MiB (outputs kept for the "
              f"median); against the real weights (≥ 7 GB fp16 for each of these families) the peak-memory ratio "
              f"is ≤ {1 + t['noisy_activation_mib'] / 7000:.3f}."]
    return "\n".join(lines)
