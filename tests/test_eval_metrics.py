"""FID (closed forms; the real TF-FID Inception network) and CLIP score (tiny random CLIP vs transformers)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from amsmooth import AmsmoothError
from amsmooth.eval.metrics import (
    FID,
    ClipScore,
    FeatureStats,
    InceptionFeatures,
    clip_scores,
    fid_from_folders,
    frechet_distance,
    frechet_distance_features,
)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    """For diagonal covariances FID = Σ (μa − μb)² + Σ (√a − √b)²."""
    va, vb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    a = FeatureStats(np.zeros(3), np.diag(va), 10)
    b = FeatureStats(np.array([1.0, 2.0, 0.0]), np.diag(vb), 10)
    expected = 1 + 4 + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("na,nb,d", [(6, 5, 16), (3, 30, 8), (40, 50, 16)])
def test_feature_and_statistics_routes_agree_with_scipy(na, nb, d):
    from scipy import linalg

    rng = np.random.default_rng(0)
    fa, fb = rng.standard_normal((na, d)), 1.5 * rng.standard_normal((nb, d)) + 0.3
    a, b = FeatureStats.from_features(fa), FeatureStats.from_features(fb)
    root = linalg.sqrtm(a.sigma @ b.sigma)
    reference = float(np.real(np.sum((a.mu - b.mu) ** 2) + np.trace(a.sigma + b.sigma - 2 * root)))
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance_features(fa, fb) == pytest.approx(reference, rel=1e-6)


def test_fid_accumulates_batches_and_cached_reference(tmp_path):
    rng = np.random.default_rng(1)
    feats = {i: rng.standard_normal(8) + (i % 2) for i in range(12)}
    fid = FID(features=lambda ids: np.stack([feats[i] for i in ids]))
    fid.update([0, 2, 4], real=True)
    fid.update([6, 8, 10], real=True)
    fid.update([1, 3, 5, 7, 9, 11], real=False)
    full = frechet_distance_features(np.stack([feats[i] for i in range(0, 12, 2)]),
                                     np.stack([feats[i] for i in range(1, 12, 2)]))
    assert fid.compute() == pytest.approx(full)
    fid.stats(True).save(tmp_path / "ref.npz")
    cached = FID(features=fid.features)
    cached.reference = FeatureStats.load(tmp_path / "ref.npz")
    cached.update([1, 3, 5, 7, 9, 11], real=False)
    assert cached.compute() == pytest.approx(full, rel=1e-6)
    with pytest.raises(AmsmoothError, match="at least 2 images"):
        FID(features=fid.features).compute()


def smooth_images(n: int, seed: int) -> list[Image.Image]:
    """Colour gradients (horizontal or vertical), 64 px."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 64.0
    return [Image.fromarray(np.clip(rng.uniform(0, 255, 3) + rng.uniform(-200, 200, 3) * (x if i % 2 else y)[..., None],
                                    0, 255).astype(np.uint8)) for i in range(n)]


def noise_images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def test_fid_with_the_real_tf_inception_network(tmp_path):
    """Same images (once as PIL, once re-read from PNG files in another order) → FID ≈ 0; gradients vs noise →
    a large FID. Three images a set keeps this to 9 Inception passes."""
    features = InceptionFeatures()
    a, b = smooth_images(3, 0), noise_images(3, 1)
    for i, im in enumerate(reversed(a)):
        im.save(tmp_path / f"{i}.png")
    fa, fb = features(a), features(b)
    fa_files = features(sorted(tmp_path.iterdir()))
    assert fa.shape == (3, 2048) and np.isfinite(fa).all()
    np.testing.assert_allclose(np.sort(fa, axis=0), np.sort(fa_files, axis=0), atol=1e-4)
    assert abs(frechet_distance_features(fa, fa_files)) < 1e-3
    assert frechet_distance_features(fa, fb) > 100
    assert frechet_distance_features(fa, fb) == pytest.approx(frechet_distance_features(fb, fa), rel=1e-6)


def test_fid_from_folders_uses_every_image(tmp_path):
    for name, images in (("ref", smooth_images(3, 0)), ("gen", noise_images(4, 1))):
        (tmp_path / name).mkdir()
        for i, im in enumerate(images):
            im.save(tmp_path / name / f"{i}.png")
    (tmp_path / "gen" / "notes.txt").write_text("not an image")
    def mean_pixel(paths):
        return np.stack([np.asarray(Image.open(p), dtype=np.float64).mean((0, 1)) for p in paths])

    expected = frechet_distance_features(mean_pixel(sorted((tmp_path / "ref").glob("*.png"))),
                                         mean_pixel(sorted((tmp_path / "gen").glob("*.png"))))
    assert fid_from_folders(tmp_path / "ref", tmp_path / "gen", FID(features=mean_pixel)) == pytest.approx(expected)


def test_fid_folder_errors(tmp_path):
    with pytest.raises(AmsmoothError, match="image folder not found"):
        fid_from_folders(tmp_path / "missing", tmp_path, FID(features=lambda x: x))
    with pytest.raises(AmsmoothError, match="no images"):
        fid_from_folders(tmp_path, tmp_path, FID(features=lambda x: x))


# -- CLIP score ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from amsmooth.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77),
                     vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=224, patch_size=32),
                     projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(cfg).eval()
    return model, CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)


def test_clip_score_matches_transformers_logits(tiny_clip):
    """100 · max(cos, 0) where cos = CLIPModel's logits_per_image diagonal / logit scale."""
    model, processor = tiny_clip
    images = smooth_images(3, 2) + noise_images(1, 3)
    prompts = ["a red gradient", "a photo of a cat", "blue sky", "static noise " * 40]  # the last one > 77 tokens
    scores = clip_scores(model, processor, images, prompts)
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True,
                       max_length=77)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    cos = torch.diagonal(logits) / model.logit_scale.exp()
    torch.testing.assert_close(scores, 100 * cos.clamp(min=0), atol=1e-4, rtol=1e-4)
    assert ((scores >= 0) & (scores <= 100)).all()


def test_clip_score_accumulates_and_errors(tiny_clip):
    metric = ClipScore(*tiny_clip)
    images = smooth_images(4, 5)
    first = metric.update(images[:2], ["a", "b"])
    second = metric.update(images[2:], ["c", "d"])
    assert metric.n == 4
    assert metric.compute() == pytest.approx(float(torch.cat([first, second]).mean()))
    with pytest.raises(AmsmoothError, match="one prompt per image"):
        metric.update(images, ["only one"])
    with pytest.raises(AmsmoothError, match="zero images"):
        ClipScore(*tiny_clip).compute()
    with pytest.raises(AmsmoothError, match="cannot load CLIP weights .*hf download"):
        ClipScore.from_pretrained("openai/clip-vit-large-patch14-does-not-exist")
