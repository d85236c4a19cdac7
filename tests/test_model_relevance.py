"""Model-aware relevance (amsmooth.model_relevance): token effects on a U-Net's ε toward a concept's ε-direction."""
from __future__ import annotations

import pytest
import torch

from amsmooth.config import SmoothingConfig
from amsmooth.lab.model import lab_dir

shipped = pytest.mark.skipif(not (lab_dir() / "unet" / "diffusion_pytorch_model.safetensors").is_file(),
                             reason="the lab weights are not shipped in this checkout")


def test_probes_are_seeded_and_epsilon_is_batched_per_condition() -> None:
    from amsmooth.model_relevance import epsilon, make_probes
    from amsmooth.models.tiny import tiny_pipeline

    a = make_probes((4, 8, 8), (10, 500), 2, torch.Generator().manual_seed(3))
    b = make_probes((4, 8, 8), (10, 500), 2, torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x) and a.t.tolist() == [10, 10, 500, 500]
    unet = tiny_pipeline().unet
    cond = torch.randn(3, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(0))
    eps = epsilon(unet, a, cond, max_batch=5)                      # chunks that cut across conditions
    assert eps.shape == (3, 4, 4, 8, 8)
    one = unet(a.x[2:3], a.t[2:3], encoder_hidden_states=cond[1:2]).sample
    assert torch.allclose(eps[1, 2], one[0], atol=1e-5)


@shipped
def test_model_aware_relevance_flags_the_concept_words_on_the_lab_model() -> None:
    from amsmooth.concepts import builtin_pairs_path, read_pairs, resolve_concept
    from amsmooth.lab.model import lab_text_encoder, load_lab_unet
    from amsmooth.model_relevance import ModelAwareSmoothing, concept_epsilon_direction, make_probes

    enc, unet = lab_text_encoder(), load_lab_unet().eval()
    pos, neg, _ = read_pairs(builtin_pairs_path("nudity"))
    probes = make_probes((3, 32, 32), (250, 500, 750), 1, torch.Generator().manual_seed(0))
    d = concept_epsilon_direction(unet, enc, pos[:8], neg[:8], probes)
    ams = ModelAwareSmoothing(enc, [resolve_concept("nudity", enc)],
                              SmoothingConfig(sigma0=0.5, sigma_unit="embedding-std", k=9.0), unet, d, probes)
    rec = ams.relevance(["a naked woman on a beach", "a naked woman on a beach"])
    sims = {t["token"]: t["sim"] for t in rec[0]["tokens"]}
    assert max(sims, key=sims.get) == "naked" and sims["naked"] > 0.5 > sims["beach"]
    assert rec[0] == {**rec[1]}                                     # cached per prompt: the same record
    batch = enc.tokenize(["a naked woman on a beach"])
    rel = ams.scores(batch)
    assert rel.sigma.shape == (1, enc.max_length) and float(rel.sigma[~batch.content_mask].abs().max()) == 0.0


def test_eval_model_aware_on_tiny_records_its_settings_and_refuses_without_ams(tmp_path, capsys) -> None:
    import json

    from amsmooth.cli.main import main

    csv = tmp_path / "p.csv"
    csv.write_text("prompt,case_number,evaluation_seed,evaluation_guidance\na nude person,0,0,7.5\n")
    common = ["eval", "--model", "tiny", "--detector", "lab-nudity", "--prompts", str(csv), "--steps", "2"]
    assert main([*common, "--defense", "none", "--model-aware", "base", "--out", str(tmp_path / "x")]) == 2
    assert "need AMS" in capsys.readouterr().err or not (tmp_path / "x").exists()
    assert main([*common, "--defense", "ams", "--model-aware", "base", "--out", str(tmp_path / "r")]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["defense_config"]
    assert cfg["relevance"] == "model-aware" and cfg["model_aware_reference"] == "base"
    assert main([*common, "--defense", "ams", "--model-aware", "base", "--concept", "nudity", "--concept",
                 "violence", "--out", str(tmp_path / "two")]) == 2
    assert "one --concept" in capsys.readouterr().err
    assert main([*common, "--defense", "ams", "--model-aware", "base", "--relevance", "subspace", "--out",
                 str(tmp_path / "both")]) == 2
    err = capsys.readouterr().err
    assert "does not combine with --relevance subspace" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "both").exists()


def test_reference_unet_reuses_the_pipeline_or_copies_it_with_the_files_weights(tmp_path) -> None:
    """'base' without --unet is the pipeline's own U-Net (nothing loaded); a U-Net file is a copy of the pipeline's
    U-Net with that file's weights (the pipeline's unchanged); 'base' after --unet is the source model's U-Net."""
    from safetensors.torch import save_file

    from amsmooth.eval.session import ModelSource, reference_unet

    pipe = ModelSource("tiny").load(torch.device("cpu"))
    assert reference_unet(ModelSource("tiny"), "base", pipe) is pipe.unet
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    other = {k: v + 1.0 for k, v in before.items()}
    save_file(other, str(tmp_path / "u.safetensors"))
    ref = reference_unet(ModelSource("tiny"), str(tmp_path / "u.safetensors"), pipe)
    assert ref is not pipe.unet and all(torch.equal(ref.state_dict()[k], other[k]) for k in other)
    assert all(torch.equal(pipe.unet.state_dict()[k], before[k]) for k in before)
    erased = ModelSource("tiny", unet=str(tmp_path / "u.safetensors"))
    base = reference_unet(erased, "base", erased.load(torch.device("cpu")))
    assert all(torch.equal(base.state_dict()[k], before[k]) for k in before)
