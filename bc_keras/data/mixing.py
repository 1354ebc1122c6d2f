"""MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a training batch, as stateless
TensorFlow ops: every draw comes from the batch's seed, so a resumed run mixes as the
uninterrupted one did.

Each image i is mixed with a partner j of the same batch (a random permutation) and keeps the
share `lam` of itself: MixUp blends the pixels, `lam * x_i + (1 - lam) * x_j`; CutMix pastes a
box of j's pixels over i, and `lam` is the share of i's pixels left outside the box. The
label becomes `lam * y_i + (1 - lam) * y_j`. With class weights w, the image's weight becomes
`W = lam * w_i + (1 - lam) * w_j` and its target `(lam * w_i * y_i + (1 - lam) * w_j * y_j) / W`:
binary cross-entropy is linear in its target, so `W * BCE(target, p)` is exactly
`lam * w_i * BCE(y_i, p) + (1 - lam) * w_j * BCE(y_j, p)`, each image's own weighted loss.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


class MixedBatch(NamedTuple):
    """A mixed batch: images, targets and weights (None without class weights), with the
    share `lam` of each image kept and the index of the partner it was mixed with."""

    images: tf.Tensor
    labels: tf.Tensor
    weights: tf.Tensor | None
    share: tf.Tensor
    partner: tf.Tensor


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """The concentration of a Beta(alpha, alpha) mixing share: 0 (off) or positive."""
    alpha = float(alpha)
    if not alpha >= 0:
        raise ValueError(f"{name} must be 0 (off) or positive. Received: {name}={alpha}")
    return alpha


def beta_share(seed, alpha: float, batch):
    """`[batch]` float32 draws of Beta(alpha, alpha), as X / (X + Y) of two Gamma(alpha) draws
    (in float64: with a small alpha both can underflow float32)."""
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    shape = tf.reshape(tf.cast(batch, tf.int32), [1])
    x = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha, dtype=tf.float64)
    y = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha, dtype=tf.float64)
    total = x + y
    share = tf.where(total > 0, x / tf.where(total > 0, total, 1.0), 0.5)
    return tf.cast(share, tf.float32)


def partner_indices(seed, batch):
    """A random permutation of `range(batch)`: image i is mixed with image `partner[i]`."""
    return tf.argsort(tf.random.stateless_uniform(tf.reshape(batch, [1]), seed))


def mixed_targets(labels, share, partner, class_weight=None):
    """Targets and weights of mixed images (see the module docstring); weights None without
    `class_weight` (the pair (benign, malignant) of class weights)."""
    labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
    other = tf.gather(labels, partner)
    if class_weight is None:
        return share * labels + (1.0 - share) * other, None
    benign, malignant = (float(w) for w in class_weight)
    own_weight = benign + (malignant - benign) * labels
    other_weight = tf.gather(own_weight, partner)
    weight = share * own_weight + (1.0 - share) * other_weight
    target = (share * own_weight * labels + (1.0 - share) * other_weight * other) / weight
    return target, weight


def mixup(images, labels, seed, alpha: float, class_weight=None) -> MixedBatch:
    """MixUp of a float batch `[b, h, w, c]`: a share `lam ~ Beta(alpha, alpha)` per image."""
    alpha = check_alpha(alpha)
    images = tf.cast(images, tf.float32)
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    share = beta_share(seeds[0], alpha, batch)
    partner = partner_indices(seeds[1], batch)
    kept = share[:, None, None, None]
    mixed = kept * images + (1.0 - kept) * tf.gather(images, partner)
    targets, weights = mixed_targets(labels, share, partner, class_weight)
    return MixedBatch(mixed, targets, weights, share, partner)


def cutmix_boxes(seed, alpha: float, batch, height: int, width: int):
    """Boxes `(top, left, bottom, right)` (int32 `[batch]` each, bottom and right exclusive)
    as in Yun et al.: a drawn share `lam ~ Beta(alpha, alpha)` gives a box of sides
    `sqrt(1 - lam)` times the image's, centred on a uniform pixel and clipped to the image (so
    the share kept is recomputed from the box, see `cutmix`)."""
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    drawn = beta_share(seeds[0], alpha, batch)
    ratio = tf.sqrt(1.0 - drawn)
    cut_h = tf.cast(tf.floor(height * ratio), tf.int32)
    cut_w = tf.cast(tf.floor(width * ratio), tf.int32)
    shape = tf.reshape(tf.cast(batch, tf.int32), [1])
    centre_y = tf.random.stateless_uniform(shape, seeds[1], 0, height, dtype=tf.int32)
    centre_x = tf.random.stateless_uniform(shape, seeds[2], 0, width, dtype=tf.int32)
    top = tf.clip_by_value(centre_y - cut_h // 2, 0, height)
    bottom = tf.clip_by_value(centre_y + cut_h // 2, 0, height)
    left = tf.clip_by_value(centre_x - cut_w // 2, 0, width)
    right = tf.clip_by_value(centre_x + cut_w // 2, 0, width)
    return top, left, bottom, right


def cutmix(images, labels, seed, alpha: float, class_weight=None) -> MixedBatch:
    """CutMix of a float batch `[b, h, w, c]` with static height and width: image i keeps
    its pixels outside its box, takes its partner's inside, and `lam = 1 - box area / image
    area` (the box as clipped)."""
    alpha = check_alpha(alpha)
    images = tf.cast(images, tf.float32)
    height, width = int(images.shape[1]), int(images.shape[2])
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    top, left, bottom, right = cutmix_boxes(seeds[0], alpha, batch, height, width)
    partner = partner_indices(seeds[1], batch)
    rows = tf.range(height)[None, :]
    columns = tf.range(width)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    inside_columns = (columns >= left[:, None]) & (columns < right[:, None])
    box = inside_rows[:, :, None] & inside_columns[:, None, :]
    mixed = tf.where(box[..., None], tf.gather(images, partner), images)
    area = tf.cast((bottom - top) * (right - left), tf.float32)
    share = 1.0 - area / float(height * width)
    targets, weights = mixed_targets(labels, share, partner, class_weight)
    return MixedBatch(mixed, targets, weights, share, partner)


def mix_batch(
    images, labels, seed, *, mixup_alpha=0.0, cutmix_alpha=0.0, class_weight=None
) -> MixedBatch:
    """MixUp, CutMix, or, with both alphas set, one of the two per batch by a fair coin (as
    timm does); the seed is the batch's."""
    mixup_alpha = check_alpha(mixup_alpha, "mixup_alpha")
    cutmix_alpha = check_alpha(cutmix_alpha, "cutmix_alpha")
    if not (mixup_alpha or cutmix_alpha):
        raise ValueError("mix_batch needs mixup_alpha or cutmix_alpha above 0")
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    if not cutmix_alpha:
        return mixup(images, labels, seeds[0], mixup_alpha, class_weight)
    if not mixup_alpha:
        return cutmix(images, labels, seeds[1], cutmix_alpha, class_weight)
    blended = mixup(images, labels, seeds[0], mixup_alpha, class_weight)
    pasted = cutmix(images, labels, seeds[1], cutmix_alpha, class_weight)
    use_cutmix = tf.random.stateless_uniform([], seeds[2]) < 0.5
    return MixedBatch(
        *(
            None if a is None else tf.where(use_cutmix, b, a)
            for a, b in zip(blended, pasted, strict=True)
        )
    )
