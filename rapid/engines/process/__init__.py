"""The engine in a child process of its own (``overlap=True``): ``client.ProcessEngine`` is the parent's handle,
``launch`` places the child (cores, GPU) and shuts it down, ``worker`` is the child itself (``python -m
rapid.engines.process.worker``), and the weights reach it through ``shared_weights`` (one shared-memory buffer) or
``weight_channel`` (a NCCL / gloo broadcast group)."""
