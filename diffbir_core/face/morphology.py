"""OpenCV's rectangular erosion and Gaussian blur on float masks, as the official paste-back mask uses them.

Only the semantics the mask depends on are reproduced:

* ``cv2.erode(mask, np.ones((k, k)))``: minimum over a k x k window anchored at (k // 2, k // 2); pixels
  outside the image do not count (OpenCV's default border value for erosion is +inf); an empty kernel
  (k = 0, which the official code produces for faces under 20 x 20 pixels) means OpenCV's 3 x 3 default.
* ``cv2.GaussianBlur(mask, (k, k), 0)``: separable kernel with sigma ``0.3 * ((k - 1) / 2 - 1) + 0.8``,
  except that sizes up to 7 use OpenCV's fixed binomial tables; borders are BORDER_REFLECT_101.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# cv2.getGaussianKernel's small_gaussian_tab, used when ksize <= 7 and sigma <= 0.
_SMALL_GAUSSIAN = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}


def erode(mask: torch.Tensor, ksize: int) -> torch.Tensor:
    """``cv2.erode(mask, np.ones((ksize, ksize)))`` of a (H, W) float mask."""
    if ksize <= 0:
        ksize = 3
    if ksize == 1:
        return mask.clone()
    before, after = ksize // 2, ksize - 1 - ksize // 2
    # erosion = -dilation(-x); padding -x with -inf keeps outside pixels out of every minimum. A rectangle's
    # minimum is the minimum of the row minima: two 1-D passes instead of k x k comparisons per pixel.
    neg = F.pad(-mask[None, None], (0, 0, before, after), value=-math.inf)
    neg = F.max_pool2d(neg, (ksize, 1), stride=1)
    neg = F.pad(neg, (before, after, 0, 0), value=-math.inf)
    return -F.max_pool2d(neg, (1, ksize), stride=1)[0, 0]


def gaussian_kernel(ksize: int, dtype=torch.float32) -> torch.Tensor:
    """``cv2.getGaussianKernel(ksize, 0)``: the 1-D kernel GaussianBlur uses when sigma is 0."""
    if ksize % 2 == 0 or ksize < 1:
        raise ValueError(f"Gaussian kernel size must be odd and positive, got {ksize}")
    if ksize in _SMALL_GAUSSIAN:
        return torch.tensor(_SMALL_GAUSSIAN[ksize], dtype=dtype)
    sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).to(dtype)


def _reflect101_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Source index of each padded position under BORDER_REFLECT_101 (any pad, even wider than n)."""
    idx = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * n - 2
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def gaussian_blur(mask: torch.Tensor, ksize: int) -> torch.Tensor:
    """``cv2.GaussianBlur(mask, (ksize, ksize), 0)`` of a (H, W) float mask."""
    if ksize == 1:
        return mask.clone()
    k = gaussian_kernel(ksize, mask.dtype).to(mask.device)
    r = ksize // 2
    h, w = mask.shape
    x = mask.index_select(0, _reflect101_index(h, r, r, mask.device))
    x = x.index_select(1, _reflect101_index(w, r, r, mask.device))
    x = F.conv2d(x[None, None], k.view(1, 1, -1, 1))
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return x[0, 0]
