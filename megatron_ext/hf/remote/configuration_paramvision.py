"""Config of an exported parameter-space vision model: a Qwen2 or Llama text config, a vision
encoder config, and the injection settings."""

from transformers import AutoConfig, PretrainedConfig


def _vision_config(values: dict):
    """A transformers vision config, or the config of a tower shipped beside this file
    (EfficientNet-Lite, efficientnet.py: not a transformers model)."""
    if values.get("model_type") == "efficientnet_lite":
        from .efficientnet import EfficientNetLiteConfig
        return EfficientNetLiteConfig(**values)
    return AutoConfig.for_model(**values)


class ParamVisionConfig(PretrainedConfig):
    model_type = "paramvision"

    def __init__(self, text_config=None, vision_config=None, method="rose", injection=None,
                 feature_layer=-1, **kwargs):
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        if isinstance(vision_config, dict):
            vision_config = _vision_config(vision_config)
        self.text_config = text_config
        self.vision_config = vision_config
        self.method = method
        self.injection = injection or {}
        self.feature_layer = feature_layer
        super().__init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        for key in ("text_config", "vision_config"):
            value = getattr(self, key)
            out[key] = value.to_dict() if value is not None else None
        return out

    def get_text_config(self, *args, **kwargs):
        return self.text_config
