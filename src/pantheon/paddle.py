"""PaddlePaddle adapter: Paddle teachers for the knowledge service.

Importing this module imports ``paddle`` (``pip install 'pantheon-kd[paddle]'``); the rest of
Pantheon never does unless a Paddle object is given to it.

``Teacher.start_knowledge_service`` recognises Paddle programs by itself, as the seed took
them: a ``paddle.static.Program`` with ``feed_list`` and ``schema`` naming its Variables and
``exe`` an ``Executor``, a place, ``"gpu:0"``, a list of devices or a number of CPU workers;
or a ``paddle.nn.Layer`` (dynamic graph). Paddle tensors are accepted wherever knowledge or
messages are (``dump``, ``send``).

* :class:`PaddleProgram`: a static program, one clone, scope and executor per worker.
* :class:`PaddleLayerProgram`: a ``paddle.nn.Layer``, one copy per device.
"""

from __future__ import annotations

from ._service.paddle_layer import PaddleLayerProgram
from ._service.paddle_program import PaddleProgram

__all__ = ["PaddleLayerProgram", "PaddleProgram"]
