"""The RAPID objective: ``algorithms`` (rapid / grpg / grpo losses over fused kernels), ``forward`` (the packed
training forward to hidden states), ``sampling`` (the behaviour distribution both engines and the loss share)."""
