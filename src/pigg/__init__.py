"""pigg: Personalized Interactive GUI Grounding.

Fine-tunes vision-language models into GUI agents: one global agent from many users' data,
then small per-user adapters. Every CLI command is a plain function in this package.
"""

__version__ = "0.1.0"

import logging

# bitsandbytes (QLoRA) warns at import, in every process, that it cannot fetch an optional CPU kernel from
# the Hugging Face Hub; its own fallback runs instead.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
