"""The foundation every other layer builds on: the model, data and tokenizer, optimizers and the learning-rate
schedule, process groups, checkpoints, evaluation, profiling and plots. Imports nothing above it."""
