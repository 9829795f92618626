"""One module per merge method; each exposes ``SPEC`` (a ``MethodSpec``) and its ``Params``."""
