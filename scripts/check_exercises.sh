#!/usr/bin/env bash
# CI check of the graded exercises (docs/design.md, "Exercises and grading"):
#   1. against solutions/        every graded test must pass   (the tests are satisfiable)
#   2. against labs/exercises/   every graded test must fail   (a test that passes on a stub grades nothing)
#   3. a fixed, seeded sample of mutants of solutions/ (scripts/mutate.py): at least MUTATION_MIN_SCORE
#      (0.95) must be killed (docs/instructor.md, "Mutation testing").
#      Which mutants the seed draws changes with every edit of solutions/. MUTATION_SAMPLE=0 skips it;
#      `make mutation` runs every mutant
# Run by `make test`. In a student handout (no solutions/) it has nothing to check and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"

if [ ! -d solutions ]; then
    echo "check_exercises: solutions/ is not here (student handout); grade your work with: llama-course grade"
    exit 0
fi

echo "check_exercises: graded tests against solutions/ (all must pass)"
"$PY" -m pytest -q -p no:cacheprovider tests/exercises --impl solutions

echo "check_exercises: graded tests against the stubs in labs/exercises/ (all must fail)"
"$PY" -m pytest -q -p no:cacheprovider -rN tests/exercises --impl labs --stubs-must-fail

SAMPLE="${MUTATION_SAMPLE:-60}"
MIN_SCORE="${MUTATION_MIN_SCORE:-0.95}"
if [ "$SAMPLE" != 0 ]; then
    echo "check_exercises: $SAMPLE mutants of solutions/ (seed 0) against the graded tests ($MIN_SCORE must be killed)"
    "$PY" scripts/mutate.py --sample "$SAMPLE" --seed 0 --jobs 2 --min-score "$MIN_SCORE"
fi
