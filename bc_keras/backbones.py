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
        weights_folder: the file's folder under `weights_url`.
        weights_hash: the MD5 Keras checks the file against (None where Keras checks none).
        alphas: the width multipliers with ImageNet weights, as (value, text in the file name);
            empty for a backbone without `alpha`.
        alpha_hashes: the MD5 of each width multiplier's file, as (value, hash), where the
            files of the widths differ in their hash (`weights_hash` for the others).
        weight_sizes: the input sizes with weights of their own (others use `default_size`).
        default_size: the input side the ImageNet weights were trained at.
        min_image_size: the smallest input side keras.applications accepts.
        builder_options: extra keyword arguments of the keras.applications builder.
        includes_preprocessing: whether the model preprocesses its inputs itself (a Rescaling,
            and for EfficientNet a Normalization, layer first): it takes float pixels in
            [0, 255], and its own preprocessing is the identity.
        stddev_as_variance: the channel standard deviations Keras' ImageNet file stores as the
            variance of the model's input Normalization layer (EfficientNet,
            tensorflow/tensorflow#49930); Keras divides by their square roots once more, in an
            extra Rescaling layer, when it loads the file itself. Empty for other backbones.
        weights_url: the folder URL `weights_folder` is under.
        hard_sigmoid_layers: build the builder's `hard_sigmoid` (MobileNetV3's squeeze-excite
            gate) from Keras layers rather than the raw ops Keras' .h5 loader cannot rebuild.
        in_report: whether the original report published transfer results with it.
        light: a lightweight backbone for deployment (issue 20; the report's future work):
            the study trains these in its full profile only.
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
    alpha_hashes: tuple[tuple[float, str], ...] = ()
    includes_preprocessing: bool = False
    stddev_as_variance: tuple[float, ...] = ()
    weights_url: str = KERAS_APPLICATIONS_URL
    hard_sigmoid_layers: bool = False
    # Whether the original report published transfer results with this backbone.
    in_report: bool = False
    light: bool = False

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

    def weights_file_hash(self, alpha: float = 1.0) -> str | None:
        """The MD5 Keras checks the no-top ImageNet file of this alpha against (or None)."""
        return dict(self.alpha_hashes).get(float(alpha), self.weights_hash)


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

# The no-top MD5s of keras/src/applications/mobilenet_v3.py (WEIGHTS_HASHES[...][1]), keyed as
# there: "{small|large}[_minimalistic]_224_{alpha}_float".
_MOBILENET_V3_HASHES = {
    "large_224_0.75_float": "40af19a13ebea4e2ee0c676887f69a2e",
    "large_224_1.0_float": "07fb09a5933dd0c8eaafa16978110389",
    "large_minimalistic_224_1.0_float": "ec5221f64a2f6d1ef965a614bdae7973",
    "small_224_0.75_float": "ebdb5cc8e0b497cd13a7c275d475c819",
    "small_224_1.0_float": "d3e8ec802a04aa4fc771ee12a9a9b836",
    "small_minimalistic_224_1.0_float": "cde8136e733e811080d9fcd8a252f7e4",
}


def mobilenet_v3(model_type: str, minimalistic: bool = False) -> Backbone:
    """The record of MobileNetV3Small ("small") or MobileNetV3Large ("large"), or of its
    minimalistic variant (3x3 kernels, ReLU, no squeeze-excite; `mobilenet_v3_small_minimalistic`),
    with the file names and hashes Keras uses: ImageNet weights exist for alpha 1.0 and 0.75,
    and 1.0 alone for the minimalistic models, at 224 pixels only (Keras loads them at any size).
    """
    if model_type not in ("small", "large"):
        raise ValueError(f"model_type must be 'small' or 'large'. Received: {model_type=!r}")
    variant = model_type + ("_minimalistic" if minimalistic else "")
    alphas = ((1.0, "1.0"),) if minimalistic else ((1.0, "1.0"), (0.75, "0.75"))
    return Backbone(
        name=f"mobilenet_v3_{variant}",
        title=f"MobileNetV3-{model_type.title()}" + (" (minimalistic)" if minimalistic else ""),
        application=f"MobileNetV3{model_type.title()}",
        preprocess_module="mobilenet_v3",
        weights_file=f"weights_mobilenet_v3_{variant}_{{size}}_{{alpha}}_float_no_top_v2.h5",
        weights_folder="mobilenet_v3/",
        alphas=alphas,
        alpha_hashes=tuple(
            (alpha, _MOBILENET_V3_HASHES[f"{variant}_224_{text}_float"]) for alpha, text in alphas
        ),
        builder_options={"minimalistic": minimalistic, "include_preprocessing": True},
        includes_preprocessing=True,
        light=True,
        hard_sigmoid_layers=True,
    )


# MobileNetV3 and EfficientNet(V2) preprocess inside the model (include_preprocessing=True, the
# Keras default): they take float pixels in [0, 255].
register_backbone(mobilenet_v3("small"))
register_backbone(mobilenet_v3("large"))
# The hashes are those of keras/src/applications/efficientnet{,_v2}.py (WEIGHTS_HASHES["b0"][1]).
register_backbone(
    Backbone(
        name="efficientnet_b0",
        title="EfficientNet-B0",
        application="EfficientNetB0",
        preprocess_module="efficientnet",
        weights_file="efficientnetb0_notop.h5",
        weights_folder="",
        weights_hash="50bc09e76180e00e4465e1a485ddc09d",
        weights_url="https://storage.googleapis.com/keras-applications/",
        includes_preprocessing=True,
        light=True,
        # keras/src/applications/efficientnet.py: IMAGENET_STDDEV_RGB.
        stddev_as_variance=(0.229, 0.224, 0.225),
    )
)
register_backbone(
    Backbone(
        name="efficientnetv2_b0",
        title="EfficientNetV2-B0",
        application="EfficientNetV2B0",
        preprocess_module="efficientnet_v2",
        weights_file="efficientnetv2-b0_notop.h5",
        weights_folder="efficientnet_v2/",
        weights_hash="893217f2bb855e2983157299931e43ff",
        builder_options={"include_preprocessing": True},
        includes_preprocessing=True,
        light=True,
    )
)
