"""Plausible wrong answers, one module each, and the graded tests each must fail (tests/test_wrong_answers.py).

A module takes the reference solution of its concept and replaces one or more functions with a wrong answer
a student could plausibly hand in: right numbers, wrong systems behaviour (the wrong bytes on the wire, the
wrong order of fsyncs and renames, the course's implementation called instead of written). It declares

    CONCEPT = "data_parallel"
    WRONG = [{"exercise": "3.4", "fails": ["test_zero2_reduce_scatters_on_the_wire"], "message": "all_reduce",
                  "why": "all-reduce then slice: ZeRO-1's traffic"}]

and tests/test_wrong_answers.py grades it in place of the concept's module
(LLAMA_COURSE_EXERCISE_MODULES=concept=wrong_answers.<module>): every test named in `fails` must fail, with
`message` in its first failure line. Instructor material: these modules import solutions/, and
scripts/make_handout.py leaves them out of the student handout.
"""
