"""Model compression after training: pruning, quantization, distillation. Imports only `core`."""
