"""The passes of an optpipe build, one per module (installed as ``optpipe.passes``).

Modules are imported lazily by the build so that ``import optpipe`` never
imports torch or ONNX Runtime.
"""
