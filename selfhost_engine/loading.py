"""One model load at a time in a process.

transformers 5.x is not thread-safe while it loads: `from_pretrained` swaps class-wide methods for
the duration of a load (`PreTrainedModel.tie_weights` becomes a no-op), so a model loaded on one
thread while another thread loads comes out with its tied weights never tied (SmolLM2's
`lm_head` left on the meta device: "Cannot copy out of meta tensor"), and two overlapping loads
can leave tying disabled for the rest of the process. The gateway loads several models on worker
threads at startup (this engine, and the MiniLM of embeddings, the semantic cache and the
router): each holds this lock while it builds or loads a model. Stdlib only, so any package can
import it without importing torch.
"""
from __future__ import annotations

import threading

MODEL_LOAD_LOCK = threading.RLock()
