"""engine/: the real PyTorch+Triton engine, its kernels, recorded runs and validation against the simulator."""
