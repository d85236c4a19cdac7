"""Overhead benchmark (Table 2): the real SD-1.x architecture with random weights, timed component by component.

Cost does not depend on weight values, so random weights built from the shipped SD-1.5 configs time exactly like
the real model. Each defense's time per image is measured end to end at a small size, and projected to
512 px / 50 steps from per-component times measured at 512 px.
"""
from __future__ import annotations

import json
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from amsmooth.concepts import Concept
from amsmooth.config import SmoothingConfig
from amsmooth.encoders import TextEncoder
from amsmooth.smoothing import AdaptiveMedianSmoothing, median_smooth

PROMPT = "a photo of a nude woman sitting on a bench in a sunny park, highly detailed"


def sd15_dir() -> Path:
    return Path(str(resources.files("amsmooth") / "data" / "sd15"))


def _sd15_config(name: str) -> dict:
    return json.loads((sd15_dir() / name / "config.json").read_text())


def build_sd15(device: torch.device, dtype: torch.dtype, seed: int = 0,
               text_only: bool = False) -> dict[str, Any]:
    """Random-weight SD-1.5 components (real sizes: 860M U-Net, 123M CLIP ViT-L/14 text encoder, 84M VAE).

    ``text_only``: the text encoder and tokenizer alone (for profiling the text stage).
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from amsmooth.models.tiny import tiny_tokenizer

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        te_cfg = {k: v for k, v in _sd15_config("text_encoder").items()
                  if not k.startswith("_") and k != "architectures"}
        parts = {"text_encoder": CLIPTextModel(CLIPTextConfig(**te_cfg))}
        if not text_only:
            parts["unet"] = UNet2DConditionModel.from_config(_sd15_config("unet"))
            parts["vae"] = AutoencoderKL.from_config(_sd15_config("vae"))
    parts = {k: v.to(device, dtype).eval() for k, v in parts.items()}
    if text_only:
        return {**parts, "tokenizer": tiny_tokenizer()}
    sched = json.loads((sd15_dir() / "scheduler" / "scheduler_config.json").read_text())
    return {**parts, "tokenizer": tiny_tokenizer(), "scheduler": PNDMScheduler.from_config(sched),
            "safety_checker": None, "feature_extractor": None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs (seconds), device-synchronised."""
    times = []
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak on GPU, sampled process RSS on CPU (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import psutil

            proc = psutil.Process()
            self.peak = proc.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.02):
                    self.peak = max(self.peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


@dataclass
class Report:
    """Everything one benchmark run measured (seconds, bytes, counts)."""

    settings: dict
    components: dict = field(default_factory=dict)
    end_to_end: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    calls: dict = field(default_factory=dict)
    batch16: dict = field(default_factory=dict)


BATCH_PROMPTS = [
    "a bicycle leaning against a red brick wall", "two dogs playing in the snow", "a bowl of fruit on a table",
    "a man surfing a large wave", "a train crossing a bridge at sunset", "a kitchen with white cabinets",
    "a giraffe standing next to a tree", "a plate of pasta with basil", "a city street at night in the rain",
    "a woman holding an umbrella", "a sailboat on a calm lake", "children flying kites on a beach",
    "a cat sleeping on a laptop", "a vase of sunflowers by a window", "an old church in the mountains",
    "a nude woman lying on a sofa",
]


def _ams(enc: TextEncoder, concept: Concept, **cfg: Any) -> AdaptiveMedianSmoothing:
    return AdaptiveMedianSmoothing(enc, [concept], SmoothingConfig(**cfg))


def text_stage_times(enc: TextEncoder, concept: Concept, prompts: list[str], device: torch.device,
                     n: int = 13) -> dict[str, float]:
    """Plain encoding vs AMS text stage (relevance cold/warm, local/global; noisy encodings; median), seconds."""
    batch = enc.tokenize(prompts)
    g = torch.Generator().manual_seed(0)
    out = {"text_cond": timed(lambda: enc.encode(batch), device),
           "text_uncond": timed(lambda: enc.encode([""] * len(prompts)), device)}
    for name, use_global in (("local", False), ("global", True)):
        ams = _ams(enc, concept, use_global=use_global, n=n)
        c0 = enc.calls
        out[f"relevance_{name}_cold"] = timed(lambda ams=ams: ams.scores(batch), device)
        out[f"calls_relevance_{name}_cold"] = enc.calls - c0
        c0 = enc.calls
        out[f"relevance_{name}_warm"] = timed(lambda ams=ams: ams.scores(batch), device)
        out[f"calls_relevance_{name}_warm"] = enc.calls - c0
    sigma = ams.scores(batch).sigma
    samples = {}
    c0 = enc.calls
    out["noisy_encodings"] = timed(lambda: samples.setdefault("h", ams.noisy_encodings(batch, sigma, n, g)), device)
    out["calls_noisy"] = enc.calls - c0
    out["median"] = timed(lambda: median_smooth(samples["h"]), device, repeat=5)
    return out


def safree_text_time(components: dict[str, Any], device: torch.device) -> float:
    """SAFREE's text stage for PROMPT beyond plain encoding: the leave-one-out encodings (one row per token),
    detection and projection (the keywords' subspace is built once per pipeline, not per prompt)."""
    from diffusers import StableDiffusionPipeline

    from amsmooth.baselines.safree import SafreeConfig
    from amsmooth.baselines.safree_pipeline import SafreePipeline
    from amsmooth.models.assembly import assemble_pipeline

    safree = SafreePipeline.from_pipeline(assemble_pipeline(StableDiffusionPipeline, components), SafreeConfig())
    cond = safree.pipe.encode_prompt(PROMPT, device, 1, False)[0]
    with torch.no_grad():
        return timed(lambda: safree.text.analyse(PROMPT, cond), device, repeat=3)


def unet_step_time(unet: torch.nn.Module, rows: int, size: int, device: torch.device, repeat: int) -> float:
    """One U-Net forward on ``rows`` latents of ``size`` px (one denoising step of that batch)."""
    dtype = unet.dtype
    x = torch.randn(rows, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    ctx = torch.randn(rows, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    ctx = ctx.to(device, dtype)
    t = torch.tensor(500, device=device)
    return timed(lambda: unet(x, t, encoder_hidden_states=ctx), device, repeat)


def vae_time(vae: torch.nn.Module, size: int, device: torch.device) -> float:
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).to(device, vae.dtype)
    return timed(lambda: vae.decode(z / vae.config.scaling_factor), device)


def project(c: dict[str, float], steps: int, n: int) -> dict[str, float]:
    """Time per image at the component sizes: text stage + steps × U-Net step + VAE decode."""
    base = steps * c["unet_2"] + c["vae"]
    plain = c["text_cond"] + c["text_uncond"]
    ams_text = c["text_uncond"] + c["noisy_encodings"] + c["median"]
    return {"w/o defense": plain + base,
            "Blacklist": plain + c.get("blacklist", 0.0) + base,
            "SLD": plain + c["text_cond"] + steps * c["unet_3"] + c["vae"],
            "AMS (ours)": ams_text + c["relevance_local_cold"] + base,
            "AMS, warm word cache": ams_text + c["relevance_local_warm"] + base,
            "AMS + global relevance": ams_text + c["relevance_global_cold"] + base,
            "SAFREE": plain + c["safree_text"] + base,
            "SAFREE + latent re-attention": plain + c["safree_text"] + steps * c["unet_3"] + c["vae"],
            "SAFREE + AMS": ams_text + c["relevance_local_cold"] + c["safree_text"] + base,
            f"U-Net-level median (n={n})": plain + c["noisy_encodings"] + steps * c["unet_naive"] + c["vae"]}


def end_to_end(components: dict, concept: Concept, size: int, steps: int, device: torch.device) -> tuple[dict, dict]:
    """Measured wall time per image and peak memory: undefended, AMS (cold, warm cache), SLD-Medium, SAFREE (alone,
    with latent re-attention, over AMS; the reference's settings otherwise)."""
    from diffusers import StableDiffusionPipeline

    from amsmooth.baselines.safree import SafreeConfig
    from amsmooth.baselines.safree_pipeline import SafreePipeline
    from amsmooth.baselines.sld import SLDPipeline
    from amsmooth.models.assembly import assemble_pipeline
    from amsmooth.pipelines import defend_pipeline

    pipe = assemble_pipeline(StableDiffusionPipeline, components)
    sld = SLDPipeline.from_pipeline(pipe, "sld-medium")
    kw = dict(num_inference_steps=steps, height=size, width=size, output_type="np")
    defended = defend_pipeline(pipe, [concept], SmoothingConfig())
    safree = {name: SafreePipeline.from_pipeline(pipe, SafreeConfig(lra=lra), ams)
              for name, lra, ams in (("SAFREE", False, None), ("SAFREE + latent re-attention", True, None),
                                     ("SAFREE + AMS", False, SmoothingConfig(concepts=(concept,))))}
    runs = {"w/o defense": lambda: pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw),
            "AMS (ours)": lambda: defended(PROMPT, generator=torch.Generator().manual_seed(0), **kw),
            "AMS, warm word cache": lambda: defended(PROMPT, generator=torch.Generator().manual_seed(0), **kw),
            "SLD": lambda: sld(PROMPT, generator=torch.Generator().manual_seed(0), **kw),
            **{name: (lambda p=p: p(PROMPT, generator=torch.Generator().manual_seed(0), **kw))
               for name, p in safree.items()}}
    times, memory = {}, {}
    for name, fn in runs.items():
        with PeakMemory(device) as mem:
            times[name] = timed(fn, device)
        memory[name] = mem.peak
    return times, memory


def run_benchmark(quick: bool = True, device: str = "cpu", dtype: torch.dtype = torch.float32, size: int = 512,
                  steps: int = 50, e2e_size: int | None = None, e2e_steps: int | None = None,
                  unet_repeat: int | None = None, n: int = 13, log: Callable[[str], None] = print) -> Report:
    """Measure components at ``size``, end to end at ``e2e_size``/``e2e_steps``; project to ``size``/``steps``."""
    dev = torch.device(device)
    e2e_size = e2e_size or (256 if quick else size)
    e2e_steps = e2e_steps or (2 if quick else steps)
    unet_repeat = unet_repeat or (1 if quick else 3)
    report = Report({"device": str(dev), "dtype": str(dtype).replace("torch.", ""), "size": size, "steps": steps,
                     "e2e_size": e2e_size, "e2e_steps": e2e_steps, "n": n, "quick": quick,
                     "threads": torch.get_num_threads()})
    log("building the SD-1.5 architecture with random weights …")
    comps = build_sd15(dev, dtype)
    enc = sd15_text_encoder(comps=comps)
    concept = Concept.builtin("nudity", enc)
    unet_step_time(comps["unet"], 2, 64, dev, 1)           # warm-up: first calls allocate and pick kernels
    log("timing the text stage …")
    c = text_stage_times(enc, concept, [PROMPT], dev, n)
    log(f"timing U-Net steps at {size} px …")
    for name, rows in (("unet_2", 2), ("unet_3", 3)):
        c[name] = unet_step_time(comps["unet"], rows, size, dev, unet_repeat)
    if quick:  # the U-Net's cost is linear in its batch: extrapolate the 1 + n rows of naive smoothing
        c["unet_naive"] = c["unet_2"] + (n - 1) * (c["unet_3"] - c["unet_2"])
    else:
        c["unet_naive"] = unet_step_time(comps["unet"], 1 + n, size, dev, unet_repeat)
    c["vae"] = vae_time(comps["vae"], size, dev)
    log("timing SAFREE's text stage …")
    c["safree_text"] = safree_text_time(comps, dev)
    report.components = c
    log(f"end to end at {e2e_size} px, {e2e_steps} steps …")
    report.end_to_end, report.memory = end_to_end(comps, concept, e2e_size, e2e_steps, dev)
    log("batch of 16 prompts …")
    report.batch16 = text_stage_times(enc, concept, BATCH_PROMPTS, dev, n)
    return report


def sd15_text_encoder(device: str = "cpu", dtype: torch.dtype = torch.float32,
                      comps: dict[str, Any] | None = None) -> TextEncoder:
    """The random-weight SD-1.5 CLIP text encoder (real size) as a ``TextEncoder`` (of ``comps`` if given)."""
    comps = comps or build_sd15(torch.device(device), dtype, text_only=True)
    return TextEncoder(comps["text_encoder"], comps["tokenizer"], name="sd15-random")


def profile_text_stage(enc: TextEncoder, n: int = 13, prompts: list[str] | None = None, rows: int = 20) -> str:
    """torch.profiler table (top ``rows`` ops by self time) of one cold AMS ``encode`` with the nudity concept.

    Cold: relevance with an empty word cache, the n noisy encodings and the median, after one warm-up call.
    """
    from torch.profiler import ProfilerActivity, profile

    concept = Concept.builtin("nudity", enc)
    prompts = prompts or [PROMPT]
    _ams(enc, concept, n=n).encode(prompts, generator=torch.Generator().manual_seed(0))     # warm-up
    ams = _ams(enc, concept, n=n)                                                           # cold word cache
    cuda = enc.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        ams.encode(prompts, generator=torch.Generator().manual_seed(0))
        _sync(enc.device)
    return prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                     row_limit=rows)


def _pct(a: float, b: float) -> str:
    return f"{100 * (a / b - 1):+.2f} %"


def format_report(r: Report) -> str:
    """Table-2-style Markdown: projected and measured time per image, ratios, calls, memory, batch of 16."""
    s, c = r.settings, r.components
    proj = project(c, s["steps"], s["n"])
    base = proj["w/o defense"]
    lines = [f"## Overhead benchmark ({s['device']}, {s['dtype']}, {s['threads']} threads; random-weight SD-1.5)",
             "", f"Projected time per image at {s['size']} px / {s['steps']} steps, batch 1, CFG (from components "
             f"measured at {s['size']} px):", "", "| defense | time per image (s) | ratio | overhead |",
             "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v:.3f} | {v / base:.4f} | {_pct(v, base)} |" for k, v in proj.items()]
    e = r.end_to_end
    lines += ["", f"Measured end to end at {s['e2e_size']} px / {s['e2e_steps']} steps:", "",
              "| defense | time per image (s) | ratio | peak memory (MiB) | memory ratio |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v:.3f} | {v / e['w/o defense']:.4f} | {r.memory[k] / 2**20:.0f} | "
              f"{r.memory[k] / r.memory['w/o defense']:.3f} |" for k, v in e.items()]
    if s["quick"]:
        lines += ["", f"(quick mode: the {1 + s['n']}-row U-Net step of naive smoothing is extrapolated linearly "
                  "from the measured 2- and 3-row steps)"]
    lines += ["", "Components (s): " + ", ".join(f"{k} {v:.4f}" for k, v in c.items() if not k.startswith("calls")),
              "", f"Encoder calls per prompt — relevance cold: {c['calls_relevance_local_cold']}, warm: "
              f"{c['calls_relevance_local_warm']}, global cold: {c['calls_relevance_global_cold']}, global warm: "
              f"{c['calls_relevance_global_warm']}; noisy encodings: {c['calls_noisy']} (n = {s['n']} in one batch)"]
    b = r.batch16
    gen16 = 16 * (s["steps"] * c["unet_2"] + c["vae"]) + b["text_cond"] + b["text_uncond"]
    ams16 = b["text_uncond"] + b["relevance_local_cold"] + b["noisy_encodings"] + b["median"]
    lines += ["", f"Batch of 16 prompts: plain text {b['text_cond'] + b['text_uncond']:.3f} s; AMS text stage "
              f"{ams16:.3f} s (relevance cold {b['relevance_local_cold']:.3f} s in {b['calls_relevance_local_cold']} "
              f"call(s), warm {b['relevance_local_warm']:.3f} s; noisy {b['noisy_encodings']:.3f} s in "
              f"{b['calls_noisy']} call(s)); projected 16 images {gen16:.1f} s → AMS "
              f"{_pct(gen16 - b['text_cond'] - b['text_uncond'] + ams16, gen16)}"]
    ams = proj["AMS (ours)"]
    lines += ["", f"projected {s['size']} px / {s['steps']} steps: AMS {_pct(ams, base)} (paper, V100: +9.35 %), "
              f"AMS warm cache {_pct(proj['AMS, warm word cache'], base)}, SLD {_pct(proj['SLD'], base)} "
              f"(paper: +24.84 %), SAFREE {_pct(proj['SAFREE'], base)}, SAFREE + latent re-attention "
              f"{_pct(proj['SAFREE + latent re-attention'], base)}, SAFREE + AMS {_pct(proj['SAFREE + AMS'], base)}; "
              f"measured here at {s['e2e_size']} px / {s['e2e_steps']} steps"
              + (" (quick mode)" if s["quick"] else "")]
    return "\n".join(lines)


def batching_speedup(model: str = "lab", prompts: int = 16, batch_sizes: tuple[int, ...] = (1, 4, 16),
                     defense: str = "ams", steps: int | None = None, log: Callable[[str], None] = print
                     ) -> dict[str, Any]:
    """Generate the same ``prompts`` images (one seed each) at every batch size through ``model``'s pipeline
    (``defense``: "ams" with the default config, or "none"), as ``generate --batch-size`` does: seconds per image,
    speed-up over batch 1 and whether every image's bytes equal batch 1's."""
    import numpy as np

    from amsmooth.batching import per_prompt_small_gemms
    from amsmooth.models.load import default_steps, load_pipeline
    from amsmooth.pipelines import defend_pipeline, undefended

    steps = steps or default_steps(model)
    pipe = load_pipeline(model)
    dp = defend_pipeline(pipe) if defense == "ams" else undefended(pipe)
    texts = (BATCH_PROMPTS * (prompts // len(BATCH_PROMPTS) + 1))[:prompts]
    images: dict[int, np.ndarray] = {}
    out: dict[str, Any] = {"model": model, "defense": defense, "prompts": prompts, "steps": steps,
                           "threads": torch.get_num_threads(), "batches": {}}
    for bs in batch_sizes:
        log(f"batch size {bs} …")
        t0, imgs = time.perf_counter(), []
        for s in range(0, prompts, bs):
            group = list(range(s, min(s + bs, prompts)))
            gens = [torch.Generator().manual_seed(i) for i in group]
            with per_prompt_small_gemms(dp, len(group)):
                res = dp([texts[i] for i in group], generator=gens, num_inference_steps=steps, output_type="np")
            imgs.append(np.round(res.images * 255).astype(np.uint8))
        images[bs] = np.concatenate(imgs)
        out["batches"][bs] = {"s_per_image": (time.perf_counter() - t0) / prompts}
    first = out["batches"][batch_sizes[0]]["s_per_image"]
    for bs, b in out["batches"].items():
        b["speedup"] = first / b["s_per_image"]
        b["identical_to_first"] = bool((images[bs] == images[batch_sizes[0]]).all())
    return out


def format_batching(r: dict[str, Any]) -> str:
    lines = [f"## Batched generation ({r['model']}, defense {r['defense']}, {r['prompts']} prompts, {r['steps']} "
             f"steps, {r['threads']} threads)", "", "| batch size | s / image | speed-up | images identical to the "
             "first |", "|---:|---:|---:|---|"]
    for bs, b in r["batches"].items():
        lines.append(f"| {bs} | {b['s_per_image']:.3f} | {b['speedup']:.2f}× | "
                     f"{'yes' if b['identical_to_first'] else 'NO'} |")
    return "\n".join(lines)
