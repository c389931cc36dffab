"""The command line: one module per `llama-course` subcommand (and the demo). The top layer."""
