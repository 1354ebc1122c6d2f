"""The backbone registry: one TensorFlow-free record per keras.applications backbone, read by the
configs, the weights lookup, preprocessing, the benchmarks, the study and the report.

Adding a backbone is one `Backbone` record here (or `register_backbone` at run time) and its
tests; nothing else names backbones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bc_keras.errors import ConfigError

KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """What the project knows of one backbone.

    Attributes:
        name: the `--backbone` value and the key everywhere (config.json, run names).
        title: how figures and tables name it.
        application: the `keras.applications` builder (e.g. "ResNet50").
        preprocess_module: the `keras.applications` module whose `preprocess_input` the
            backbone's own preprocessing is.
        weights_file: the no-top ImageNet weights file name; `{alpha}` and `{size}` are
            filled for backbones with width multipliers and per-size weights.
        weights_folder: the file's folder under the keras-applications URL.
        weights_hash: the MD5 Keras checks the file against (None where Keras checks none).
        alphas: the width multipliers with ImageNet weights, as (value, text in the file name);
            empty for a backbone without `alpha`.
        weight_sizes: the input sizes with weights of their own (others use `default_size`).
        default_size: the input side the ImageNet weights were trained at.
        min_image_size: the smallest input side keras.applications accepts.
        builder_options: extra keyword arguments of the keras.applications builder.
        in_report: whether the original report published transfer results with it.
    """

    name: str
    title: str
    application: str
    preprocess_module: str
    weights_file: str
    weights_folder: str
    weights_hash: str | None = None
    alphas: tuple[tuple[float, str], ...] = ()
    weight_sizes: tuple[int, ...] = ()
    default_size: int = 224
    min_image_size: int = 32
    builder_options: dict = field(default_factory=dict)
    # Whether the original report published transfer results with this backbone.
    in_report: bool = False

    @property
    def has_alpha(self) -> bool:
        return bool(self.alphas)

    @property
    def smallest_alpha(self) -> float:
        """The narrowest width multiplier with ImageNet weights (1.0 without multipliers)."""
        return min((a for a, _ in self.alphas), default=1.0)

    def check_alpha(self, alpha: float) -> None:
        """Raises ConfigError for a width multiplier this backbone does not take."""
        if alpha <= 0:
            raise ConfigError(f"--alpha must be positive. Received: alpha={alpha}")
        if not self.has_alpha and alpha != 1.0:
            raise ConfigError(
                f"--alpha (the width multiplier) applies to "
                f"{', '.join(b.name for b in BACKBONES.values() if b.has_alpha)} only; drop it "
                f"for {self.name}"
            )

    def weights_file_name(self, image_size: int, alpha: float = 1.0) -> str | None:
        """The no-top ImageNet file for this input size and alpha; None if there is none."""
        texts = dict(self.alphas)
        if self.has_alpha and float(alpha) not in texts:
            return None
        size = image_size if image_size in self.weight_sizes else self.default_size
        return self.weights_file.format(alpha=texts.get(float(alpha), ""), size=size)


BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Adds (or replaces) a backbone record; returns it."""
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    """The record of `name`; ConfigError naming the choices for an unknown one."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


# The hashes are those of keras/src/applications/{resnet,vgg16}.py; Keras checks no hash for
# MobileNet's files.
register_backbone(
    Backbone(
        name="resnet50",
        title="ResNet50",
        application="ResNet50",
        preprocess_module="resnet50",
        weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_folder="resnet/",
        weights_hash="4d473c1dd8becc155b73f8504c6f6626",
        in_report=True,
    )
)
register_backbone(
    Backbone(
        name="vgg16",
        title="VGG16",
        application="VGG16",
        preprocess_module="vgg16",
        weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_folder="vgg16/",
        weights_hash="6d6bbae143d832006294945121d1f1fc",
    )
)
register_backbone(
    Backbone(
        name="mobilenet",
        title="MobileNet",
        application="MobileNet",
        preprocess_module="mobilenet",
        weights_file="mobilenet_{alpha}_{size}_tf_no_top.h5",
        weights_folder="mobilenet/",
        alphas=((1.0, "1_0"), (0.75, "7_5"), (0.5, "5_0"), (0.25, "2_5")),
        weight_sizes=(128, 160, 192, 224),
    )
)
