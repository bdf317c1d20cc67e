"""llama2_minimal: the Llama 2 recipe rebuilt end to end at toy scale, in PyTorch.

The model follows Meta's llama/model.py (model.py); checkpoints load and save Meta's and Hugging Face's layouts
(checkpoint.py); tokenizer.py, chat.py and generation.py follow Meta's tokenizer and generation code.
"""

__version__ = "0.1.0"

from .model import ModelArgs, Transformer, count_parameters  # noqa: E402

__all__ = ["ModelArgs", "Transformer", "count_parameters", "__version__"]
