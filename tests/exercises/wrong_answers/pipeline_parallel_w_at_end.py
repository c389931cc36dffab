"""Zero bubble with every W deferred to the end: each rank holds the activations of all m micro-batches until
its W's run (GPipe's memory, not p), and the last stage's m W's, run after its last B, leave the bubble
where 1F1B has it: 3(m + p - 1), not 3m + p - 1. ZB-H1 defers only r of rank r's W's."""

from solutions.pipeline_parallel import *  # noqa: F403

CONCEPT = "pipeline_parallel"
WRONG = [{"exercise": "5.6", "fails": ["test_zero_bubble_order_holds_at_most_p_in_flight"],
          "message": "peak in flight", "why": "every W at the end: m micro-batches in flight"},
         {"exercise": "5.6", "fails": ["test_zero_bubble_order_is_valid_and_fills_the_bubble"],
          "message": "3m + p - 1", "why": "every W at the end: the last stage's W's end the step late"},
         {"exercise": "5.6", "fails": ["test_zero_bubble_order_matches_the_simulator"], "message": "ZB-H1 runs",
          "why": "every W at the end: not ZB-H1's order"}]


def zero_bubble_order(p, m, rank):
    warm = min(p - rank - 1, m)
    order = [("F", i) for i in range(warm)]
    for i in range(m - warm):
        order += [("F", warm + i), ("B", i)]
    order += [("B", i) for i in range(m - warm, m)]
    return order + [("W", i) for i in range(m)]
