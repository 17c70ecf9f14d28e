"""The pass infrastructure: the Pass base and build context, the pipeline and its instruments, the registry."""
