"""Processor of an exported model: the encoder's image processor + the LLM's tokenizer.
The image does not enter the token sequence (it enters the weights), so text and pixels are
simply returned side by side."""

from transformers import BatchFeature, ProcessorMixin


class ParamVisionProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, image_token=None, image_tokens=0, **kwargs):
        # VoRA puts the image in the sequence: `image_tokens` placeholders precede the text
        self.image_token, self.image_tokens = image_token, image_tokens
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs):
        out = {}
        if images is not None and self.image_tokens and text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            text = [self.image_token * self.image_tokens + t for t in texts]
        if text is not None:
            out.update(self.tokenizer(text, return_tensors=return_tensors, **kwargs))
        if images is not None:
            out["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(out, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
