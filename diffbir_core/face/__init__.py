"""Faces in whole photos (the official `unaligned_face` task), as plain tensor functions.

* `priors`: RetinaFace prior boxes, box / landmark decoding and NMS (facexlib's formulas).
* `detection`: running a RetinaFace network on an image and picking the faces to restore.
* `align`: the FFHQ five-point template, the least-squares similarity transform and the affine warp.
* `alignment`: the record that travels from detection to paste-back (matrices, boxes, landmarks, sizes).
* `morphology`: the OpenCV-equivalent erosion and Gaussian blur the official mask uses.
* `paste`: the official soft, eroded, blurred square mask and the paste-back through the inverse affine.

Images are float tensors (C, H, W) or (N, C, H, W) in [0, 1]; pixel coordinates follow OpenCV (pixel
centres at integers), because the official matrices come from `cv2.estimateAffinePartial2D` and are
applied with `cv2.warpAffine`.
"""
