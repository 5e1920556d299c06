"""Hugging Face checkpoints in and out.

Reading a transformers checkpoint directory (`config.json`, `*.safetensors`,
`tokenizer.json`, chat templates) into a tfpg policy, and writing a policy back as a
transformers checkpoint or PEFT adapters. Needs the `hub` extra
(`pip install "tfpg[hub]"`).
"""
