"""What observes or protects a training run: callbacks, atomic checkpoints, run folders and their lock, the
TensorBoard logger, each process's share of the CPU cores, and what a finished run prints. ``threads`` imports
no Lightning, so that commands that train nothing can share the cores too."""
