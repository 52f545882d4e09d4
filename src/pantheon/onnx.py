"""ONNX Runtime adapter: an ``.onnx`` model as a knowledge service program.

``Teacher.start_knowledge_service(program="model.onnx", ...)`` wraps the path in
:class:`OnnxProgram` automatically; build one yourself to choose providers or session options.
Needs ``onnxruntime`` (``pip install 'pantheon-kd[onnx]'``), imported when a session is made.
"""

from __future__ import annotations

from ._service.onnx_program import OnnxProgram

__all__ = ["OnnxProgram"]
