"""Detectors: the real NudeNet on real benign images; Q16's rule with the real prompt embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from amsmooth import AmsmoothError
from amsmooth.eval.detectors import (
    NUDENET_EXPOSED,
    Detection,
    NudeNetDetector,
    Q16Detector,
    load_q16_prompts,
    make_detector,
    nudenet_labels,
    q16_probabilities,
)


def landscape(h: int = 384, w: int = 512) -> Image.Image:
    """A synthetic landscape: sky gradient, sun, hills, grass texture."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([90 + 0.15 * y, 150 + 0.12 * y, 250 - 0.1 * y], axis=-1)
    img[(x - 400) ** 2 + (y - 80) ** 2 < 35 ** 2] = (255, 230, 120)
    hills = 230 + 30 * np.sin(x / 60.0) + 15 * np.sin(x / 23.0)
    ground = y > hills
    img[ground] = np.stack([50 + 0.1 * (y - hills), 120 + 0.2 * (y - hills), 40 + 0 * y], -1)[ground]
    img[ground] += rng.normal(0, 12, (int(ground.sum()), 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def still_life(h: int = 320, w: int = 320) -> Image.Image:
    """A plain photo-like picture: a table, a shaded vase, a wall with soft noise."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([200 - 0.1 * x, 190 - 0.1 * x, 170 - 0.05 * y], -1)
    img[y > 220] = (120, 80, 50)
    vase = ((x - 160) / 45) ** 2 + ((y - 160) / 70) ** 2 < 1
    shade = (1.2 - (x - 130) / 120)[..., None].clip(0.4, 1.2)
    img[vase] = (np.array([40, 70, 160]) * shade)[vase]
    return Image.fromarray(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))


def grace_hopper() -> str:
    """A real photograph shipped with matplotlib (a portrait in uniform)."""
    import matplotlib.cbook

    return str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def nudenet() -> NudeNetDetector:
    return NudeNetDetector()


def test_nudenet_classes_are_nudenets_exposed_labels():
    assert len(NUDENET_EXPOSED) == 9 and set(NUDENET_EXPOSED) <= set(nudenet_labels())
    assert all(c.endswith("_EXPOSED") for c in NUDENET_EXPOSED)
    assert {c for c in nudenet_labels() if c.endswith("_EXPOSED")} == set(NUDENET_EXPOSED)


def test_real_nudenet_on_benign_images(nudenet, tmp_path):
    """Benign synthetic pictures and a real portrait photo: no exposed class reaches 0.6, nothing is flagged;
    the detector does see the photo's face (so it really ran on the pixels)."""
    images = [landscape(), still_life(), grace_hopper()]
    results = nudenet.detect(images)
    for det in results:
        assert not det.flagged
        assert all(score < 0.6 for cls, score in det.scores.items() if cls in NUDENET_EXPOSED), det
    assert results[2].scores.get("FACE_FEMALE", 0) > 0.5
    # the paper's rule applied to a class NudeNet does report flips the verdict
    face_rule = NudeNetDetector(threshold=0.5, classes=["FACE_FEMALE"])
    assert face_rule.detect([grace_hopper()])[0].flagged


def test_nudenet_sees_what_nudenet_sees_from_a_file(nudenet, tmp_path):
    """A PIL image gives exactly the detections NudeNet's own detect(path) gives for the saved PNG."""
    path = tmp_path / "photo.png"
    Image.open(grace_hopper()).save(path)
    ours = nudenet.scores(Image.open(path))
    raw = nudenet._net.detect(str(path))
    assert ours == {d["class"]: max(x["score"] for x in raw if x["class"] == d["class"]) for d in raw}
    assert ours


class _FakeNet:
    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, _image):
        return self.boxes


def test_nudenet_rule_max_per_class_and_threshold(nudenet):
    det = NudeNetDetector(threshold=0.6)
    det._net = _FakeNet([{"class": "FEET_EXPOSED", "score": 0.45}, {"class": "FEET_EXPOSED", "score": 0.6},
                         {"class": "FACE_MALE", "score": 0.9}, {"class": "BELLY_COVERED", "score": 0.8}])
    (d,) = det.detect([landscape(32, 32)])
    assert d == Detection({"FEET_EXPOSED": 0.6, "FACE_MALE": 0.9, "BELLY_COVERED": 0.8}, True)  # ≥ 0.6 counts
    det._net = _FakeNet([{"class": "FEET_EXPOSED", "score": 0.59}, {"class": "FACE_MALE", "score": 0.99}])
    assert not det.detect([landscape(32, 32)])[0].flagged  # only the nine exposed classes count


def test_nudenet_bad_options():
    with pytest.raises(AmsmoothError, match="unknown NudeNet class.*FEMALE_BREAST_EXPOSED"):
        NudeNetDetector(classes=["BREAST"])
    with pytest.raises(AmsmoothError, match="threshold"):
        NudeNetDetector(threshold=1.5)
    with pytest.raises(AmsmoothError, match="unknown detector 'nsfw'"):
        make_detector("nsfw")
    with pytest.raises(AmsmoothError, match="--q16-clip SRC"):
        make_detector("q16")


# -- Q16 -----------------------------------------------------------------------------------------------------


def test_shipped_q16_prompts():
    p = load_q16_prompts()
    assert p.shape == (2, 768) and p.dtype == torch.float32
    assert torch.isfinite(p).all()


def test_q16_probabilities_formula():
    prompts = load_q16_prompts()
    feats = torch.randn(3, 768, generator=torch.Generator().manual_seed(0))
    f = feats / feats.norm(dim=-1, keepdim=True)
    p = prompts / prompts.norm(dim=-1, keepdim=True)
    expected = torch.softmax(100 * f @ p.T, dim=-1)
    torch.testing.assert_close(q16_probabilities(feats, prompts), expected)
    # an image embedded exactly on a prompt is classified as that prompt: row 1 = inappropriate
    probs = q16_probabilities(prompts * 3.0, prompts)
    assert probs[0, 0] > 0.5 and probs[1, 1] > 0.5


def tiny_clip_vision():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=224, patch_size=32, projection_dim=768)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPVisionModelWithProjection(cfg).eval()
    return model, CLIPImageProcessor()


def test_q16_with_a_tiny_random_clip_vision_model():
    """Plumbing only (random weights): PIL/array/path inputs → [B, 768] features → one verdict per image,
    flagged exactly when p(inappropriate) ≥ threshold."""
    from amsmooth.eval.clip import ClipImageEncoder

    model, processor = tiny_clip_vision()
    encoder = ClipImageEncoder(model, processor)
    images = [landscape(64, 96), np.asarray(still_life(50, 50)), grace_hopper()]
    feats = encoder(images)
    assert feats.shape == (3, 768)
    pixels = processor(images=[landscape(64, 96)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(feats[:1], model(pixel_values=pixels).image_embeds)  # transformers' own path
    q16 = Q16Detector(encoder, threshold=0.5)
    dets = q16.detect(images)
    probs = q16_probabilities(feats, load_q16_prompts())[:, 1]
    assert [d.flagged for d in dets] == [bool(p >= 0.5) for p in probs]
    assert [d.scores["inappropriate"] for d in dets] == pytest.approx(probs.tolist())
    assert [d.flagged for d in Q16Detector(encoder, threshold=1.0).detect(images)] == [False] * 3


def test_q16_refuses_features_of_the_wrong_size_and_missing_weights():
    from amsmooth.eval.clip import ClipImageEncoder

    model, processor = tiny_clip_vision()
    model.visual_projection = torch.nn.Linear(32, 512, bias=False)
    with pytest.raises(AmsmoothError, match="768-d"):
        Q16Detector(ClipImageEncoder(model, processor))
    with pytest.raises(AmsmoothError, match="cannot load the CLIP config .*hf download"):
        make_detector("q16", clip="openai/clip-vit-large-patch14-does-not-exist")


def test_q16_and_clip_score_load_a_users_clip_folder(tmp_path, tiny_clip_dir):
    """The loading path users take: a saved full CLIP checkpoint folder (tiny, random, projection 768) and a
    vision-only one; features equal the saved model's own."""
    from transformers import CLIPImageProcessor, CLIPModel

    from amsmooth.eval.clip import image_features
    from amsmooth.eval.metrics import ClipScore

    full = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    vision, processor = tiny_clip_vision()
    vision.save_pretrained(tmp_path / "vision")
    processor.save_pretrained(tmp_path / "vision")

    image = landscape(64, 64)
    pixels = CLIPImageProcessor()(images=[image], return_tensors="pt")["pixel_values"]
    q16 = make_detector("q16", clip=str(tiny_clip_dir))
    torch.testing.assert_close(q16.encoder([image]), image_features(full, pixels))
    assert q16.settings()["clip"] == str(tiny_clip_dir) and len(q16.detect([image])) == 1
    q16v = Q16Detector.from_pretrained(str(tmp_path / "vision"), threshold=0.7)
    with torch.no_grad():
        torch.testing.assert_close(q16v.encoder([image]), vision(pixel_values=pixels).image_embeds)
    assert q16v.threshold == 0.7
    score = ClipScore.from_pretrained(str(tiny_clip_dir)).update([image], ["a landscape"])
    assert score.shape == (1,) and 0 <= float(score) <= 100
