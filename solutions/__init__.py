"""Reference solutions: the same modules and functions as `labs.exercises`. Not part of the student handout."""
