"""Colour control (nst_core.color): conversions, colour matching, the three ``colors`` modes."""

from __future__ import annotations

import pytest
import torch

import nst_core
from nst_core import color
from nst_core.cli import build_parser, main
from nst_core.image import load_image, resize


def correlated(h: int = 40, w: int = 56, seed: int = 0, mix=None) -> torch.Tensor:
    """A smooth image whose channels are correlated (a full-rank colour covariance), inside 0..1."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=gen), size=(h, w), mode="bilinear",
                                           align_corners=False)
    mix = torch.tensor(mix or [[0.6, 0.3, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7]])
    return torch.einsum("ij,bjhw->bihw", mix, base).clamp(0, 1)


def moment_errors(a: torch.Tensor, b: torch.Tensor):
    """(max |mean difference|, ‖Σa − Σb‖ / ‖Σb‖) of two images' RGB values."""
    ma, ca = color.color_moments(a)
    mb, cb = color.color_moments(b)
    return float((ma - mb).abs().max()), float(torch.linalg.norm(ca - cb) / torch.linalg.norm(cb))


def chroma_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of the Cb/Cr channels (0..1 scale) of two images of the same size."""
    return float((color.rgb_to_ycbcr(a)[:, 1:] - color.rgb_to_ycbcr(b)[:, 1:]).abs().mean())


# --------------------------------------------------------------------------- conversions


def test_known_ycbcr_values():
    px = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1]]).T.reshape(1, 3, 1, 4)
    ycc = color.rgb_to_ycbcr(px)[0, :, 0].T
    assert torch.allclose(ycc[0], torch.tensor([1.0, 0.5, 0.5]), atol=1e-6)  # white: no chroma
    assert torch.allclose(ycc[1], torch.tensor([0.0, 0.5, 0.5]), atol=1e-6)
    assert torch.allclose(ycc[2], torch.tensor([0.299, 0.5 - 0.168736, 1.0]), atol=1e-5)  # red: Cr at the top
    assert torch.allclose(ycc[3], torch.tensor([0.114, 1.0, 0.5 - 0.081312]), atol=1e-5)  # blue: Cb at the top


def test_rgb_ycbcr_round_trip(images):
    img = torch.cat([images.gradient(32, 48), images.noise(32, 48, seed=3)])
    back = color.ycbcr_to_rgb(color.rgb_to_ycbcr(img))
    assert (back - img).abs().max() < 1e-5


def test_luminance_is_gray_and_with_chroma_puts_the_colours_back(images):
    img = images.gradient(40, 56)
    gray = color.luminance(img)
    assert gray.shape == img.shape
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert (gray[:, 0] - color.rgb_to_ycbcr(img)[:, 0]).abs().max() < 1e-6
    # luminance + chroma of the same image is the image again
    assert (color.with_chroma(gray, img) - img).abs().max() < 1e-4
    # another image's luminance: the luma comes from it, the chroma from the content
    other = images.noise(40, 56, seed=1)
    mixed = color.rgb_to_ycbcr(color.with_chroma(color.luminance(other), img))
    target = color.rgb_to_ycbcr(img)
    inside = (color.with_chroma(color.luminance(other), img) > 0.001).all(1) & \
             (color.with_chroma(color.luminance(other), img) < 0.999).all(1)  # pixels not clamped
    assert (mixed[:, 1:] - target[:, 1:]).abs().amax(1)[inside].max() < 1e-4
    assert (mixed[:, 0] - color.rgb_to_ycbcr(other)[:, 0]).abs()[inside].max() < 1e-4


def test_with_chroma_resizes_the_content_and_checks_batches(images):
    out = color.with_chroma(color.luminance(images.noise(24, 32)), images.gradient(48, 64))
    assert out.shape == (1, 3, 24, 32)
    with pytest.raises(ValueError, match="content has a batch of 2"):
        color.with_chroma(images.noise(24, 32, batch=3), images.gradient(24, 32, batch=2))
    with pytest.raises(ValueError, match=r"luma_result must have shape \[B,3,H,W\]"):
        color.with_chroma(torch.rand(24, 32), images.gradient(24, 32))


# --------------------------------------------------------------------------- colour matching


def test_match_colors_gives_the_reference_mean_and_covariance_unclamped():
    image = correlated(seed=1)
    reference = correlated(48, 40, seed=2, mix=[[0.2, 0.1, 0.7], [0.1, 0.5, 0.1], [0.6, 0.3, 0.1]]) * 0.6 + 0.2
    out = color.match_colors(image, reference, clamp=False)
    mean_err, cov_err = moment_errors(out, reference)
    before = moment_errors(image, reference)
    assert before[1] > 0.2  # they really differed
    assert mean_err < 1e-3 and cov_err < 0.01, (mean_err, cov_err)


def test_match_colors_is_identity_on_the_reference_and_keeps_structure():
    image = correlated(seed=4)
    assert (color.match_colors(image, image) - image).abs().max() < 1e-3
    a, b = color.color_transfer_map(image, correlated(seed=5) * 0.5 + 0.25)
    assert a.dtype == torch.float64 and a.shape == (3, 3) and b.shape == (3,)
    assert torch.allclose(a, a.T, atol=1e-9)  # the optimal-transport map is symmetric positive definite
    assert float(torch.linalg.eigvalsh(a).min()) > 0


def test_match_colors_matches_each_image_of_a_batch_and_survives_flat_images():
    batch = torch.cat([correlated(seed=6), correlated(seed=7) * 0.5])
    reference = correlated(seed=8) * 0.8 + 0.1
    out = color.match_colors(batch, reference, clamp=False)
    for i in range(2):
        assert moment_errors(out[i:i + 1], reference)[1] < 0.01
    flat = color.match_colors(torch.full((1, 3, 8, 8), 0.3), reference)
    assert torch.isfinite(flat).all() and flat.min() >= 0 and flat.max() <= 1


def test_match_colors_on_the_sample_images(data_image):
    """Starry Night given Tübingen's colours; clamping to 0..1 moves the moments only a little."""
    style = load_image(str(data_image("starry_night.jpg")), 128)
    content = load_image(str(data_image("shipwreck.jpg")), 128)
    mean_err, cov_err = moment_errors(color.match_colors(style, content, clamp=False), content)
    assert mean_err < 1e-3 and cov_err < 0.01, (mean_err, cov_err)
    clamped = moment_errors(color.match_colors(style, content), content)
    assert clamped[0] < 0.01 and clamped[1] < 0.05, clamped


# --------------------------------------------------------------------------- the modes


def test_color_inputs(images):
    content, style = images.gradient(40, 56), images.checkerboard(48, 48)
    same = color.color_inputs("style", content, [style])
    assert same[0] is content and same[1][0] is style
    c, (s,) = color.color_inputs("luminance", content, [style])
    assert torch.equal(c[:, 0], c[:, 2]) and torch.equal(s[:, 0], s[:, 1])
    c, s = color.color_inputs("match", content, style)
    assert c is content and isinstance(s, torch.Tensor) and s.shape == style.shape
    assert moment_errors(s, content)[0] < 0.02
    choices = r"\['style', 'luminance', 'match'\]"
    with pytest.raises(ValueError, match=rf"colors 'sepia' is not supported; choose one of {choices}"):
        color.color_inputs("sepia", content, [style])


def test_color_targets_keep_layers_weights_and_change_only_images(rand_ext, images):
    content = nst_core.ContentTarget.create(rand_ext, images.gradient(40, 56), "relu3_1", 0.5)
    style = nst_core.StyleTarget.create(rand_ext, [images.checkerboard(48, 48), images.stripes(40, 40)],
                                        ["relu1_1", "relu2_1"], [3, 1], "gram", [1, 2])
    assert color.color_targets("style", rand_ext, content, style) == (content, style)
    c, s = color.color_targets("luminance", rand_ext, content, style)
    assert (c.layer, c.weight) == ("relu3_1", 0.5)
    assert torch.equal(c.image[:, 0], c.image[:, 1])
    assert (s.layers, s.layer_weights, s.statistic, s.blend_weights) == (
        style.layers, style.layer_weights, style.statistic, style.blend_weights)
    assert all(torch.equal(im[:, 0], im[:, 2]) for im in s.images)
    c, regions = color.color_targets("match", rand_ext, content, (style,))
    assert c is content and isinstance(regions, tuple) and len(regions[0].images) == 2
    for im in regions[0].images:
        assert moment_errors(im, content.image)[0] < 0.02
    assert torch.equal(style.images[0], images.checkerboard(48, 48))  # the original target is untouched
    with pytest.raises(ValueError, match="no content target"):
        color.color_targets("luminance", rand_ext, None, style)


def test_finish_colors_and_init(images):
    out, content = images.noise(24, 32) * 0.5 + 0.25, images.gradient(24, 32)  # little clamping
    assert color.finish_colors("style", out, content) is out
    assert color.finish_colors("match", out, content) is out
    assert chroma_distance(color.finish_colors("luminance", out, content), content) < 1e-2
    assert color.color_init("luminance", "content") == "content"
    gray = color.color_init("luminance", images.gradient(24, 32))
    assert torch.equal(gray[:, 0], gray[:, 1])
    assert color.color_init("match", out) is out


def test_transfer_colors_luminance_runs_and_previews_show_content_chroma(rand_ext, images):
    content = images.gradient(40, 56)
    shown = []
    out = nst_core.transfer(rand_ext, content, images.checkerboard(48, 48), preset="fast", steps=2,
                            min_size=10_000, colors="luminance", preview=lambda s, im: shown.append(im),
                            preview_every=1)
    assert out.shape == content.shape
    assert chroma_distance(out, content) < 0.01
    assert shown and chroma_distance(shown[-1], content) < 0.01


def test_cli_colors_option(images, tmp_path):
    from nst_core.image import save_image

    assert build_parser().parse_args(["transfer", "c.png", "s.png", "-o", "o.png"]).colors == "style"
    save_image(images.gradient(40, 56), str(tmp_path / "c.png"))
    save_image(images.checkerboard(48, 48), str(tmp_path / "s.png"))
    out = tmp_path / "o.png"
    code = main(["transfer", str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o", str(out), "--colors", "match",
                 "--weights", "random", "--size", "48", "--steps", "2", "--preset", "fast", "--device", "cpu",
                 "--quiet"])
    assert code == 0 and out.is_file()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["transfer", "c.png", "s.png", "-o", "o.png", "--colors", "sepia"])


# --------------------------------------------------------------------------- real weights


@pytest.mark.slow
def test_luminance_transfer_keeps_the_content_chroma_and_match_keeps_its_palette(real_ext, data_image):
    """Real weights, 128 px, 12 steps: chroma distance to the content for each mode."""
    content = load_image(str(data_image("shipwreck.jpg")), 128)
    style = load_image(str(data_image("starry_night.jpg")), 256)
    runs = {mode: nst_core.transfer(real_ext, content, style, preset="quality", steps=12, colors=mode)
            for mode in color.COLOR_MODES}
    dist = {mode: chroma_distance(out, content) for mode, out in runs.items()}
    luma_change = float((color.luminance(runs["luminance"]) - color.luminance(content)).abs().mean())
    print("chroma distance to the content:", {k: round(v, 4) for k, v in dist.items()},
          "luminance change:", round(luma_change, 4))
    assert dist["luminance"] < 0.01, dist
    assert dist["luminance"] < 0.2 * dist["style"], dist
    assert dist["match"] < dist["style"], dist
    assert luma_change > 0.03  # the luminance itself was stylised, not only copied


def test_cli_colors_on_a_folder_is_honoured_not_ignored(images, tmp_path):
    """A folder of stills takes --colors too: luminance keeps each photo's chroma."""
    from nst_core.color import rgb_to_ycbcr
    from nst_core.image import load_image, save_image

    (tmp_path / "in").mkdir()
    photo = images.gradient(40, 56)
    save_image(photo, str(tmp_path / "in" / "a.png"))
    save_image(images.checkerboard(48, 48), str(tmp_path / "s.png"))
    code = main(["transfer", str(tmp_path / "in"), str(tmp_path / "s.png"), "-o", str(tmp_path / "out"),
                 "--colors", "luminance", "--weights", "random", "--device", "cpu", "--quiet", "--steps", "2",
                 "--content-layer", "relu2_1", "--style-layers", "relu1_1,relu2_1", "--size", "56"])
    assert code == 0
    out = load_image(str(tmp_path / "out" / "a.png"))
    chroma = lambda im: rgb_to_ycbcr(im)[:, 1:]  # noqa: E731
    assert float((chroma(out) - chroma(photo)).abs().mean()) < 0.02
