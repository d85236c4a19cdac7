"""Text-stage cost of each relevance method, per prompt, against Algorithm 1 and against an SD-1.5 image.

    python benchmarks/relevance_cost.py --encoder sd15-random [--prompts 8] [--skip-setup]
    python benchmarks/relevance_cost.py --encoder minilm

Per method: the one-time setup (calibration on the 64 neutral prompts; subspace's basis), then, for each of the
first ``--prompts`` COCO prompts of ``amsmooth bench`` alone with an empty word cache, the relevance scores
(cold), the n = 13 noisy encodings and the median. ``--skip-setup`` (for the random-weight SD-1.5 encoder, where
the setup's numbers mean nothing) puts a fixed scale and a random orthonormal basis of the real size in place
instead of measuring them: the per-prompt cost does not depend on their values.

The projected SD-1.5 overhead takes the README's idle measurement (`amsmooth bench --quick`: undefended 885.5 s
per image, AMS +0.46 % with Algorithm 1's cold relevance 1.6 s of it) and replaces that relevance time by
1.6 s × this method's measured ratio to Algorithm 1 (both measured here, in the same conditions): a shared,
loaded machine scales all encoder passes alike, so the ratio survives where the absolute seconds do not.
"""
from __future__ import annotations

import argparse
import time

import torch

from amsmooth import AdaptiveMedianSmoothing, Concept, SmoothingConfig
from amsmooth.config import RELEVANCE_METHODS
from amsmooth.relevance_methods import PROXIMITY_WORDS, SUBSPACE_WORDS
from amsmooth.relevance_scale import Scale
from amsmooth_experiments.bench import BATCH_PROMPTS

SD15_IMAGE_S = 885.5   # README "Performance": undefended SD-1.5 image, 50 steps at 512 px, 2 idle cores
SD15_AMS_OVERHEAD = 0.0046   # README: AMS (Algorithm 1, cold word cache) +0.46 %
SD15_RELEVANCE_S = 1.6   # README: of which Algorithm 1's cold relevance, seconds


def load(name: str):  # noqa: ANN201
    if name == "sd15-random":
        from amsmooth_experiments.bench import sd15_text_encoder

        return sd15_text_encoder()
    from amsmooth.loading import load_encoder

    return load_encoder(name)


def stub_setup(ams: AdaptiveMedianSmoothing) -> None:
    """A fixed scale and (subspace) a random orthonormal basis of 1 + SUBSPACE_WORDS rows, (proximity) 1 +
    PROXIMITY_WORDS random unit anchors."""
    ams.method_state["scale"] = Scale((0.0,), (0.1,))
    if ams.config.relevance == "subspace":
        dim = ams.encoder.max_length * ams.encoder.hidden_size
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(dim, 1 + SUBSPACE_WORDS, generator=g))
        ams.method_state["subspace"] = [q.T.contiguous()]
    if ams.config.relevance == "proximity":
        g = torch.Generator().manual_seed(0)
        anchors = torch.nn.functional.normalize(torch.randn(1 + PROXIMITY_WORDS, ams.encoder.hidden_size,
                                                            generator=g), dim=1)
        ams.method_state["proximity"] = [(torch.zeros(ams.encoder.hidden_size), anchors)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--methods", nargs="+", default=list(RELEVANCE_METHODS))
    p.add_argument("--skip-setup", action="store_true")
    args = p.parse_args()
    enc = load(args.encoder)
    concept = Concept.builtin("nudity", enc)
    prompts = BATCH_PROMPTS[:args.prompts]
    enc.encode(["warm up"])
    t = time.perf_counter()
    for q in prompts:
        enc.encode([q])
    plain = (time.perf_counter() - t) / len(prompts)
    print(f"encoder {args.encoder}, {len(prompts)} prompts one at a time, n = 13, {torch.get_num_threads()} threads; "
          f"plain encoding {plain:.3f} s/prompt")
    print("| method | one-time setup (s) | relevance, cold (s/prompt) | × Algorithm 1 | AMS text stage (s/prompt) | "
          "projected SD-1.5 overhead |\n|---|---:|---:|---:|---:|---:|")
    base = None
    for name in args.methods:
        ams = AdaptiveMedianSmoothing(enc, [concept], SmoothingConfig(relevance=name))
        t = time.perf_counter()
        if name != "algorithm1":
            if args.skip_setup:
                stub_setup(ams)
            setup = "stubbed" if args.skip_setup else None
            with torch.no_grad():
                ams.scores(enc.tokenize(["x"]))                 # builds the scale (and basis) if not stubbed
            setup = setup or f"{time.perf_counter() - t:.1f}"
        else:
            setup = "-"
        rel = stage = 0.0
        for q in prompts:
            ams.cache.clear()
            batch = enc.tokenize([q])
            t0 = time.perf_counter()
            with torch.no_grad():
                r = ams.scores(batch)
            t1 = time.perf_counter()
            ams.smooth(batch, r.sigma, torch.Generator().manual_seed(0))
            t2 = time.perf_counter()
            rel, stage = rel + (t1 - t0), stage + (t2 - t0)
        rel, stage = rel / len(prompts), stage / len(prompts)
        base = base or rel
        print(f"| {name} | {setup} | {rel:.3f} | {rel / base:.2f} | {stage:.3f} | "
              f"{100 * (SD15_AMS_OVERHEAD + (rel / base - 1) * SD15_RELEVANCE_S / SD15_IMAGE_S):.2f} % |", flush=True)


if __name__ == "__main__":
    main()
