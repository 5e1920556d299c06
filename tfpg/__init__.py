"""tfpg: policy-gradient fine-tuning of Keras language models.

>>> import tfpg
>>> tok = tfpg.Tokenizer.from_texts(["one plus two is three"], level="word")
>>> policy = tfpg.PolicyNetwork(tok.vocabulary_size, embedding_dim=32, hidden_dim=64)
>>> out = tfpg.generate(policy, [tok.encode("one plus")], max_new_tokens=4, seed=0)
"""

__version__ = "0.1.0"

from tfpg import advantages, algorithms, callbacks, data, envs, losses, rewards, tasks, testing
from tfpg.export import export_saved_model, load
from tfpg.generation import GenerationOutput, generate
from tfpg.models import PolicyNetwork, ValueNetwork
from tfpg.text import Tokenizer

__all__ = [
    "Tokenizer", "PolicyNetwork", "ValueNetwork", "generate", "GenerationOutput",
    "export_saved_model", "load", "advantages", "algorithms", "callbacks", "data", "envs",
    "losses", "rewards", "tasks", "testing",
]
