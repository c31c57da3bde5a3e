"""Self-checks for the course exercises: a learner's function or module against segedu's reference.

Every ``check_*`` function follows the same recipe:

1. build the segedu reference with random weights (large enough that attention is not uniform and
   every layer matters), on fixed seeds, without touching the learner's random-number stream;
2. build the learner's module with the same constructor arguments and copy the reference weights
   into it with ``load_state_dict`` (so parameter names and shapes must match segedu's);
3. compare outputs on a few small random inputs (non-square, several heads / reduction ratios);
4. on a mismatch, recompute the output with each classic mistake and, if one matches, name it.

A failed check raises ``AssertionError`` whose message names the concept that went wrong (where it can,
the classic mistake that reproduces the output) and where to read about it (paper section, equation, the
official code); the fix itself comes as a last line ``Hint: ...`` only when the same check fails the same way
again, or when it is called with ``hint=True`` (``_core.teaches``). A passed check prints one line. Modules and
blocks with stochastic depth are also probed in training mode, and norms must have the official eps. An unsolved
exercise (a stub that raises ``NotImplementedError``, as nbgrader's student version does) lets that error through
unchanged. The checks are deterministic, so a notebook that calls them prints the same thing on every machine.

One module per notebook; every ``check_*`` is re-exported here (``from segedu.checks import check_mix_ffn``).
"""
from .basics import *  # noqa: F401,F403  (00: labels and metrics)
from .tokens import *  # noqa: F401,F403  (01: pixels to tokens)
from .attention import *  # noqa: F401,F403  (02: self-attention)
from .setr import *  # noqa: F401,F403  (03: ViT and the SETR decoders)
from .swin import *  # noqa: F401,F403  (04: Swin and SSformer)
from .segformer import *  # noqa: F401,F403  (05a-05c: SegFormer)
from .segnext import *  # noqa: F401,F403  (06: SegNeXt)
from .training import *  # noqa: F401,F403  (07: training)
from .evaluation import *  # noqa: F401,F403  (08: evaluation and inference)
from .inside import *  # noqa: F401,F403  (09: looking inside)
from .full_scale import *  # noqa: F401,F403  (10: going full scale)
