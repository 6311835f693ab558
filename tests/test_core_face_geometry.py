"""Face geometry without any network: template, similarity transform, warp, official mask, paste-back.

Synthetic photos carry a "face" of five Gaussian dots drawn at known landmarks (the FFHQ template moved by a
known rotation, scale and translation). Alignment must bring the dots onto the template; paste-back must bring
them back onto the landmarks; both are measured by dot centroids (sub-pixel). The warp and the mask are also
compared with plain loop implementations of OpenCV's documented semantics (pixel centres at integers, bilinear
with a constant border, rectangular erosion ignoring the outside, REFLECT_101 Gaussian blur).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffbir_core.face import align, alignment, morphology, paste
from diffbir_core.face.detection import Detections

pytestmark = pytest.mark.usefixtures("one_thread")

DOT = 1 / 50  # dot radius (sigma) as a fraction of the crop size: dots stay apart, in crop and photo alike


def similarity(theta_deg: float, scale: float, tx: float, ty: float) -> torch.Tensor:
    t = math.radians(theta_deg)
    a, b = scale * math.cos(t), scale * math.sin(t)
    return torch.tensor([[a, -b, tx], [b, a, ty]], dtype=torch.float64)


def dots_image(points: torch.Tensor, h: int, w: int, sigma: float, background=None) -> torch.Tensor:
    """(3, h, w): a Gaussian dot (peak 1) at each point, on `background` (3, h, w) or black."""
    ys = torch.arange(h, dtype=torch.float64).view(h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, w)
    img = torch.zeros(h, w, dtype=torch.float64)
    for x, y in points.tolist():
        img = img + torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma * sigma))
    out = img.float().expand(3, h, w).clone()
    return out if background is None else torch.clamp(out + background, 0, 1)


def centroid(img: torch.Tensor, near: tuple[float, float], radius: float) -> tuple[float, float]:
    """Intensity centroid of channel 0 within `radius` of `near`."""
    h, w = img.shape[-2:]
    ys = torch.arange(h, dtype=torch.float64).view(h, 1)
    xs = torch.arange(w, dtype=torch.float64).view(1, w)
    weight = img[0].double() * (((xs - near[0]) ** 2 + (ys - near[1]) ** 2) <= radius * radius)
    total = weight.sum()
    return float((weight * xs).sum() / total), float((weight * ys).sum() / total)


def max_dot_error(img: torch.Tensor, points: torch.Tensor, radius: float) -> float:
    errs = [math.dist(centroid(img, tuple(p), radius), tuple(p)) for p in points.tolist()]
    return max(errs)


def face_in_photo(theta, scale, tx, ty, face_size=128):
    """Landmarks in photo pixels: the template at `face_size` mapped by a known similarity."""
    return align.apply_affine(similarity(theta, scale, tx, ty), align.face_template(face_size))


# ------------------------------------------------------------------------------------------------ transforms


def test_template_is_the_official_ffhq_points():
    t = align.face_template(512)
    assert t.shape == (5, 2)
    assert t[0].tolist() == pytest.approx([192.98138, 239.94708])
    assert t[4].tolist() == pytest.approx([313.08905, 371.15118])
    assert torch.allclose(align.face_template(256), t / 2)


def test_similarity_recovers_a_known_transform_and_is_least_squares():
    src = align.face_template(512)
    true = similarity(-37.0, 0.42, 311.5, -20.25)
    dst = align.apply_affine(true, src)
    assert torch.allclose(align.similarity_transform(src, dst), true, atol=1e-9)
    # with noisy points: the least-squares optimum (independent closed form, Umeyama without reflection)
    g = torch.Generator().manual_seed(3)
    noisy = dst + torch.randn(dst.shape, generator=g, dtype=torch.float64) * 2.0
    m = align.similarity_transform(src, noisy).numpy()
    s, d = src.numpy(), noisy.numpy()
    sc, dc = s - s.mean(0), d - d.mean(0)
    a = (sc * dc).sum() / (sc**2).sum()
    b = (sc[:, 0] * dc[:, 1] - sc[:, 1] * dc[:, 0]).sum() / (sc**2).sum()
    t = d.mean(0) - np.array([[a, -b], [b, a]]) @ s.mean(0)
    np.testing.assert_allclose(m, np.array([[a, -b, t[0]], [b, a, t[1]]]), atol=1e-9)


def test_invert_and_compose():
    m = similarity(12.0, 1.7, -4.0, 9.0)
    ident = align.compose_affine(align.invert_affine(m), m)
    assert torch.allclose(ident, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64), atol=1e-12)


def _reference_warp(img: np.ndarray, m: np.ndarray, h: int, w: int, border) -> np.ndarray:
    """cv2.warpAffine semantics, one pixel at a time: dst(x, y) = bilinear src(M^-1 (x, y)), constant border."""
    c, hs, ws = img.shape
    a = np.vstack([m, [0, 0, 1]])
    inv = np.linalg.inv(a)
    out = np.zeros((c, h, w))
    for y in range(h):
        for x in range(w):
            sx, sy, _ = inv @ np.array([x, y, 1.0])
            x0, y0 = math.floor(sx), math.floor(sy)
            fx, fy = sx - x0, sy - y0
            acc = np.zeros(c)
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    yy, xx = y0 + dy, x0 + dx
                    v = img[:, yy, xx] if 0 <= yy < hs and 0 <= xx < ws else np.asarray(border, dtype=float)
                    acc += wy * wx * v
            out[:, y, x] = acc
    return out


def test_warp_matches_opencv_semantics_with_grey_border():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 13, 17, generator=g)
    m = similarity(23.0, 1.3, 2.5, -3.0)
    ours = align.warp_affine(img, m, (15, 16), align.CROP_BORDER_RGB)
    ref = _reference_warp(img.double().numpy(), m.numpy(), 15, 16, align.CROP_BORDER_RGB)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-5)


# ------------------------------------------------------------------------------------------------ align / round trip

CASES = [  # (rotation degrees, photo pixels per crop pixel, centre x, centre y): faces rotated and scaled
    (0.0, 0.8, 40.0, 30.0),
    (25.0, 0.6, 60.0, 50.0),
    (-40.0, 1.1, 40.0, 70.0),
    (170.0, 0.45, 110.0, 100.0),
]


@pytest.mark.parametrize("theta,scale,tx,ty", CASES)
def test_align_then_paste_back_round_trip_within_a_pixel(theta, scale, tx, ty):
    face_size, h, w = 128, 180, 200
    points = face_in_photo(theta, scale, tx, ty, face_size)
    assert points.min() > 10 and points[:, 0].max() < w - 10 and points[:, 1].max() < h - 10
    sigma = DOT * face_size  # in crop pixels
    photo = dots_image(points, h, w, sigma * scale)
    dets = Detections(torch.zeros(1, 4), torch.ones(1), points[None].float())
    crops, record = alignment.align_faces(photo[None], [dets], face_size)
    assert crops.shape == (1, 3, face_size, face_size) and record.image_index == (0,)
    template = align.face_template(face_size)
    err_crop = max_dot_error(crops[0], template, 3 * sigma)
    assert err_crop < 0.1, f"dots land {err_crop:.3f} px from the template in the crop"

    out, _, masks = alignment.paste_back(torch.zeros(1, 3, h, w), crops, record)
    err_back = max_dot_error(out[0], points, 3 * sigma * scale)
    assert err_back < 0.1, f"round trip moves the dots by {err_back:.3f} px"
    inside = masks[0] >= 1.0 - 1e-6
    assert inside.sum() > 0.3 * (face_size * scale) ** 2
    mae = (out[0] - photo).abs()[:, inside].mean()
    assert mae < 0.01, f"round trip changes the face by {mae:.4f} on average inside the mask"


def test_crop_outside_the_photo_is_the_official_grey():
    points = face_in_photo(0.0, 1.0, -60.0, -60.0, 128)  # face mostly above-left of the photo
    photo = torch.rand(3, 64, 64)
    crops, _ = alignment.align_faces(photo[None], [Detections(torch.zeros(1, 4), torch.ones(1), points[None].float())], 128)
    grey = torch.tensor(align.CROP_BORDER_RGB).view(3, 1, 1)
    assert torch.allclose(crops[0, :, :10, :10], grey.expand(3, 10, 10), atol=1e-6)


# ------------------------------------------------------------------------------------------------ official mask


def test_edge_sizes_are_exactly_the_official_integers():
    for side in range(0, 5000):
        assert paste.edge_size(side, 0.1) == 2 * (side // 20)


def _ref_erode(m: np.ndarray, k: int) -> np.ndarray:
    k = 3 if k == 0 else k
    a = k // 2
    h, w = m.shape
    out = np.empty_like(m)
    for y in range(h):
        for x in range(w):
            ys = slice(max(0, y - a), min(h, y - a + k))
            xs = slice(max(0, x - a), min(w, x - a + k))
            out[y, x] = m[ys, xs].min()
    return out


def _ref_blur(m: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return m.copy()
    table = {3: [0.25, 0.5, 0.25], 5: [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16],
             7: [1 / 32, 3.5 / 32, 7 / 32, 9 / 32, 7 / 32, 3.5 / 32, 1 / 32]}
    if k in table:
        ker = np.array(table[k])
    else:
        s = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
        x = np.arange(k) - (k - 1) / 2
        ker = np.exp(-x * x / (2 * s * s))
        ker /= ker.sum()
    r = k // 2
    p = np.pad(m, r, mode="reflect")  # numpy's "reflect" is OpenCV's REFLECT_101
    rows = np.stack([np.convolve(row, ker, mode="valid") for row in p])
    return np.stack([np.convolve(col, ker, mode="valid") for col in rows.T]).T


@pytest.mark.parametrize("face_side,theta", [(24, 10.0), (60, 33.0), (100, -15.0)])
def test_soft_mask_matches_the_official_recipe(face_side, theta):
    face_size, h, w = 32, 120, 130
    inv = similarity(theta, face_side / face_size, 20.0, 15.0)
    eroded, soft = paste.paste_masks(inv, (face_size, face_size), (h, w))
    inv_mask = align.warp_affine(torch.ones(1, face_size, face_size), inv, (h, w))[0].double().numpy()
    ref_eroded = _ref_erode(inv_mask, 2)
    side = int(ref_eroded.sum() ** 0.5)
    w_edge = side // 20
    ref_soft = _ref_blur(_ref_erode(ref_eroded, 2 * w_edge), 2 * w_edge + 1)
    np.testing.assert_allclose(eroded.numpy(), ref_eroded, atol=1e-6)
    np.testing.assert_allclose(soft.numpy(), ref_soft, atol=1e-5)
    assert soft.max() == pytest.approx(1.0, abs=1e-6) and soft.min() == 0.0


def test_gaussian_kernel_table_and_formula():
    assert morphology.gaussian_kernel(5).tolist() == [0.0625, 0.25, 0.375, 0.25, 0.0625]
    k = morphology.gaussian_kernel(11)
    assert float(k.sum()) == pytest.approx(1.0) and k.argmax() == 5


# ------------------------------------------------------------------------------------------------ paste-back


def _photo_batch(seed: int, b: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_pixels_outside_every_mask_are_bit_identical():
    h, w, face_size = 150, 170, 64
    bg = _photo_batch(1, 1, h, w)
    faces = [face_in_photo(15.0, 0.5, 30.0, 25.0, face_size), face_in_photo(-20.0, 0.7, 100.0, 60.0, face_size)]
    dets = Detections(torch.zeros(2, 4), torch.ones(2), torch.stack(faces).float())
    crops, record = alignment.align_faces(bg, [dets], face_size)
    restored = torch.rand(crops.shape, generator=torch.Generator().manual_seed(2))
    out, faces_only, masks = alignment.paste_back(bg, restored, record)
    outside = masks[0] == 0
    assert 0.2 < float(outside.float().mean()) < 0.95
    assert torch.equal(out[0][:, outside], bg[0][:, outside])
    assert torch.equal(faces_only[0][:, outside], torch.zeros_like(faces_only[0][:, outside]))
    inside = masks[0] > 0.5
    assert float((out[0] - bg[0]).abs()[:, inside].mean()) > 0.1  # the faces did change the photo


def test_window_equals_whole_image_computation():
    """Each face is pasted in a window around it: the result equals the same maths on the whole photo."""
    h, w, face_size = 140, 160, 48
    bg = _photo_batch(3, 1, h, w)[0]
    inv = similarity(30.0, 1.4, 70.0, 5.0)  # crop -> photo, touching the top edge
    face = torch.rand(3, face_size, face_size, generator=torch.Generator().manual_seed(4))
    got = paste.paste_faces(bg, [face], inv[None])
    eroded, soft = paste.paste_masks(inv, (face_size, face_size), (h, w))
    want = soft * (eroded * align.warp_affine(face, inv, (h, w))) + (1 - soft) * bg
    torch.testing.assert_close(got.image, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.mask, soft, atol=1e-6, rtol=0)


def test_faces_at_the_border_paste_up_to_the_edge():
    h, w, face_size = 100, 120, 64
    points = face_in_photo(5.0, 0.9, -20.0, 40.0, face_size)  # left third of the face outside the photo
    bg = _photo_batch(5, 1, h, w)
    crops, record = alignment.align_faces(bg, [Detections(torch.zeros(1, 4), torch.ones(1), points[None].float())],
                                          face_size)
    out, _, masks = alignment.paste_back(bg, torch.ones_like(crops), record)
    # OpenCV's erosion ignores the outside: the mask is not eaten away at the photo's left edge
    assert float(masks[0][60:75, 0].min()) > 0.99
    assert torch.allclose(out[0][:, 60:75, 0], torch.ones(3, 15), atol=1e-5)
    # a face wholly outside the photo is skipped, the photo is unchanged
    far = face_in_photo(0.0, 0.5, 500.0, 500.0, face_size)
    crops2, record2 = alignment.align_faces(bg, [Detections(torch.zeros(1, 4), torch.ones(1), far[None].float())],
                                            face_size)
    out2, _, masks2 = alignment.paste_back(bg, crops2, record2)
    assert torch.equal(out2, bg) and float(masks2.max()) == 0.0


def test_batches_paste_each_face_into_its_own_photo():
    h, w, face_size = 90, 100, 48
    bg = _photo_batch(6, 3, h, w)
    a = face_in_photo(0.0, 0.6, 20.0, 20.0, face_size)
    b = face_in_photo(10.0, 0.5, 50.0, 40.0, face_size)
    dets = [Detections(torch.zeros(1, 4), torch.ones(1), a[None].float()), Detections.empty(),
            Detections(torch.zeros(2, 4), torch.ones(2), torch.stack([a, b]).float())]
    crops, record = alignment.align_faces(bg, dets, face_size)
    assert record.image_index == (0, 2, 2) and crops.shape[0] == 3
    out, _, masks = alignment.paste_back(bg, torch.zeros_like(crops), record)
    assert torch.equal(out[1], bg[1]) and float(masks[1].max()) == 0.0  # no face in photo 2
    assert float(masks[0].max()) == pytest.approx(1.0) and float(masks[2].max()) == pytest.approx(1.0)
    assert float(masks[2].sum()) > float(masks[0].sum()) * 1.5  # two faces there


def test_restored_crops_of_another_size_land_on_the_same_place():
    h, w, face_size = 160, 160, 64
    points = face_in_photo(20.0, 1.0, 40.0, 30.0, face_size)
    sigma = DOT * face_size
    photo = dots_image(points, h, w, sigma)
    crops, record = alignment.align_faces(photo[None], [Detections(torch.zeros(1, 4), torch.ones(1),
                                                                   points[None].float())], face_size)
    big = torch.nn.functional.interpolate(crops, scale_factor=2, mode="bilinear", align_corners=False)
    out, _, _ = alignment.paste_back(torch.zeros(1, 3, h, w), big, record)
    assert max_dot_error(out[0], points, 3 * sigma) < 0.1


def test_no_face_passes_the_background_through():
    bg = _photo_batch(7, 2, 40, 50)
    crops, record = alignment.align_faces(bg, [Detections.empty(), Detections.empty()], 64)
    assert record.placeholder and record.num_faces == 0 and crops.shape == (1, 3, 64, 64)
    out, faces_only, masks = alignment.paste_back(bg, crops * 0.3, record)
    assert torch.equal(out, bg) and float(masks.abs().max()) == 0.0 and float(faces_only.abs().max()) == 0.0


def test_inputs_that_do_not_belong_together_are_refused():
    bg = _photo_batch(8, 2, 60, 70)
    points = face_in_photo(0.0, 0.5, 20.0, 10.0, 64)
    dets = [Detections(torch.zeros(1, 4), torch.ones(1), points[None].float()), Detections.empty()]
    crops, record = alignment.align_faces(bg, dets, 64)
    with pytest.raises(alignment.FaceInputError, match=r"^faces: a batch of 2 .* holds 1 face crop.*same order"):
        alignment.paste_back(bg, torch.cat([crops, crops]), record)
    with pytest.raises(alignment.FaceInputError, match=r"^background: a batch of 1 .* made on 2"):
        alignment.paste_back(bg[:1], crops, record)
    with pytest.raises(alignment.FaceInputError, match=r"^background: 140 x 120 .* aligned on 70 x 60 .*another "
                                                       r"image size.*Face Detect & Align"):
        alignment.paste_back(torch.zeros(2, 3, 120, 140), crops, record)
    with pytest.raises(alignment.FaceInputError, match=r"^alignment: expected the FACE_ALIGNMENT"):
        alignment.paste_back(bg, crops, {"not": "an alignment"})
