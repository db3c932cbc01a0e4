"""Processor of an exported model: the encoder's image processor + the LLM's tokenizer.
The image does not enter the token sequence (it enters the weights), so text and pixels are
simply returned side by side."""

from transformers import BatchFeature, ProcessorMixin


class ParamVisionProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs):
        out = {}
        if text is not None:
            out.update(self.tokenizer(text, return_tensors=return_tensors, **kwargs))
        if images is not None:
            out["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(out, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
