"""Processor of an exported model: the encoder's image processor + the LLM's tokenizer.
The image does not enter the token sequence (it enters the weights), so text and pixels are
simply returned side by side. Prompt it the standard way (what lmms-eval's generic chat model
does): `apply_chat_template(messages)` (the training prompt format; image parts render nothing),
then `processor(images=, text=)`, then `model.generate`."""

from transformers import BatchFeature, ProcessorMixin


class ParamVisionProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, image_token=None, patch_size=0, chat_template=None, **kwargs):
        # VoRA and LLaVA put the image in the sequence: placeholders precede the text, one per
        # `patch_size` x `patch_size` pixels of the processed image (VoRA resamples its learned
        # positions and a CNN tower reads any size, so the count follows the image processor's size).
        # chat_template is named so that from_pretrained passes chat_template.jinja in.
        self.image_token, self.patch_size = image_token, patch_size
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, videos=None, audios=None, return_tensors="pt", **kwargs):
        if videos or audios:
            raise ValueError("this model reads images only: pass no videos or audios")
        texts = None if text is None else [text] if isinstance(text, str) else list(text)
        images = None if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        if images and texts is not None and len(images) != len(texts):
            raise ValueError(f"one image per text: got {len(images)} images for {len(texts)} texts")
        out = {}
        if images:
            out["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        if texts is not None:
            if images and self.patch_size:
                h, w = out["pixel_values"].shape[-2:]
                texts = [self.image_token * ((h // self.patch_size) * (w // self.patch_size)) + t for t in texts]
            # the chat template renders every special token training saw (no BOS of the tokenizer's)
            kwargs.setdefault("add_special_tokens", False)
            out.update(self.tokenizer(texts, return_tensors=return_tensors, **kwargs))
        return BatchFeature(out, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
