"""Coordinating workers beyond one collective step: parameter servers, synchronous and asynchronous
updates, load balancing, fault tolerance. Imports only `core` and `parallel`."""
