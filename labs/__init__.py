"""Labs: notebooks `NN_<concept>.ipynb` and the exercise stubs in `labs.exercises` (see docs/design.md)."""
