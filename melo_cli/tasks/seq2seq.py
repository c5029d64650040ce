"""Encoder-decoder models (T5): the target is the decoder's output; keys come from the encoder."""

from __future__ import annotations

from .base import IGNORE, Encoded, Task, ids, pad


class Seq2Seq(Task):
    name = "seq2seq"
    auto_model = "AutoModelForSeq2SeqLM"
    mapping = "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"
    architecture_suffixes = ("ForConditionalGeneration",)
    target_ends_with_eos = True

    def lora_stacks(self, stacks):
        return stacks  # encoder and decoder

    def encode(self, backbone, inputs, targets=None) -> Encoded:
        enc = backbone.tokenizer(list(inputs), padding=True, return_tensors="pt", truncation=True)
        model_inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if targets is None:
            return Encoded(model_inputs, enc["attention_mask"])
        labels = pad([ids(backbone.tokenizer, t) for t in targets], IGNORE, left=False)
        model_inputs["labels"] = labels
        return Encoded(model_inputs, enc["attention_mask"], labels)

    def forward(self, model, inputs):
        """Without labels or decoder inputs only the encoder runs (the key layer is in it)."""
        if "labels" not in inputs and "decoder_input_ids" not in inputs:
            return model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        return model(**inputs)
