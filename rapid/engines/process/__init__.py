"""The engine in a child process of its own (``overlap=True``): ``client.ProcessEngine`` is the parent's handle,
``worker`` the child (``python -m rapid.engines.process.worker``), ``weight_channel`` the NCCL/gloo weight broadcast."""
