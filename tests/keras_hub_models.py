"""Tiny random KerasHub causal LMs of every supported family, with tiny tokenizers made
here (byte-pair vocabularies / SentencePiece protos trained on a few sentences), saved
as local presets. Used by tests/test_keras_hub.py and the KerasHub scripts."""

import io
import os

import keras

TEXTS = ["the cat sat on the mat", "1 + 2 = 3", "3 + 4 = 7", "a dog ran home",
         "hello world!", "the end of the text", "! ? ! ?", "seven plus one is eight"]
FAMILIES = ("gpt2", "gemma", "gemma3", "llama3", "mistral", "qwen2", "qwen3")

_BPE_SPECIALS = {
    "gpt2": ["<|endoftext|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eot_id|>"],
    "qwen2": ["<|endoftext|>"],
    "qwen3": ["<|endoftext|>", "<|im_end|>"],
}


_GQA = dict(num_query_heads=2, num_key_value_heads=1)
# KerasHub class-name prefix and backbone options of each byte-pair family.
_BPE_CLASSES = {
    "gpt2": ("GPT2", dict(num_heads=2, max_sequence_length=64)),
    "llama3": ("Llama3", _GQA),
    "qwen2": ("Qwen", _GQA),
    "qwen3": ("Qwen3", dict(_GQA, head_dim=8)),
}


def bpe_vocabulary(specials):
    """Every byte of GPT-2's byte-level alphabet (id 0 is "!"), a few merges, the
    special tokens last."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode
    vocabulary = {char: i for i, char in enumerate(bytes_to_unicode()[1])}
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "a t", "Ġ =", "Ġ +"]
    for merge in merges:
        vocabulary.setdefault(merge.replace(" ", ""), len(vocabulary))
    for token in specials:
        vocabulary[token] = len(vocabulary)
    return vocabulary, merges


def sentence_piece_proto(layout):
    """A small SentencePiece model; `layout` "gemma" (pad 0, eos 1, bos 2, unk 3) or
    "llama" (unk 0, <s> 1, </s> 2, no pad)."""
    import sentencepiece as spm
    model = io.BytesIO()
    ids = (dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
                eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>")
           if layout == "gemma" else
           dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>",
                bos_piece="<s>", eos_piece="</s>"))
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS * 4), model_writer=model, vocab_size=60,
        model_type="bpe", character_coverage=1.0, byte_fallback=False,
        hard_vocab_limit=False, minloglevel=2, **ids)
    return model.getvalue()


def build_causal_lm(family, seed=0, sequence_length=32, **backbone_options):
    """A tiny random `CausalLM` of `family` with its preprocessor."""
    import keras_hub
    models = keras_hub.models
    keras.utils.set_random_seed(seed)
    small = dict(num_layers=2, hidden_dim=16, intermediate_dim=32)
    if family in _BPE_SPECIALS:
        prefix, options = _BPE_CLASSES[family]
        vocabulary, merges = bpe_vocabulary(_BPE_SPECIALS[family])
        tokenizer = getattr(models, prefix + "Tokenizer")(vocabulary=vocabulary, merges=merges)
        backbone = getattr(models, prefix + "Backbone")(
            vocabulary_size=len(vocabulary), **options, **small, **backbone_options)
        preprocessor = getattr(models, prefix + "CausalLMPreprocessor")(
            tokenizer, sequence_length=sequence_length)
        return getattr(models, prefix + "CausalLM")(backbone, preprocessor)
    if family == "mistral":
        tokenizer = models.MistralTokenizer(proto=sentence_piece_proto("llama"))
        backbone = models.MistralBackbone(vocabulary_size=tokenizer.vocabulary_size(),
                                          num_query_heads=2, num_key_value_heads=1,
                                          sliding_window=4, **small, **backbone_options)
        return models.MistralCausalLM(backbone, models.MistralCausalLMPreprocessor(
            tokenizer, sequence_length=sequence_length))
    proto = sentence_piece_proto("gemma")
    if family == "gemma":
        # Gemma 2's options: soft caps, post norms, sliding window on every other layer.
        tokenizer = models.GemmaTokenizer(proto=proto)
        backbone = models.GemmaBackbone(
            vocabulary_size=tokenizer.vocabulary_size(), num_query_heads=2,
            num_key_value_heads=1, head_dim=8, attention_logit_soft_cap=50.0,
            final_logit_soft_cap=30.0, use_post_ffw_norm=True, use_post_attention_norm=True,
            use_sliding_window_attention=True, sliding_window_size=4, **small,
            **backbone_options)
        return models.GemmaCausalLM(backbone, models.GemmaCausalLMPreprocessor(
            tokenizer, sequence_length=sequence_length))
    if family == "gemma3":
        tokenizer = models.Gemma3Tokenizer(proto=proto, has_vision_tokens=False)
        backbone = models.Gemma3Backbone(
            vocabulary_size=tokenizer.vocabulary_size(), image_size=16, num_query_heads=2,
            num_key_value_heads=1, head_dim=8, use_sliding_window_attention=True,
            sliding_window_size=4, vision_encoder=None, **small, **backbone_options)
        return models.Gemma3CausalLM(backbone=backbone, preprocessor=(
            models.Gemma3CausalLMPreprocessor(tokenizer, sequence_length=sequence_length)))
    raise ValueError(f"unknown family {family!r}")


def save_preset(family, directory, **options):
    """Builds the tiny `family` model and writes it to `directory` as a KerasHub preset."""
    path = os.path.join(os.fspath(directory), family)
    build_causal_lm(family, **options).save_to_preset(path)
    return path
