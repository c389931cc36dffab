"""Zero bubble with each W run right after its B: 1F1B with the backward split in two. Every task is there,
in a valid order, but nothing fills 1F1B's bubble (the step takes 3(m + p - 1), not 3m + p - 1) and rank r
frees each micro-batch as early as 1F1B does (p - r in flight): it is not ZB-H1's order."""

from solutions.pipeline_parallel import *  # noqa: F403

CONCEPT = "pipeline_parallel"
WRONG = [{"exercise": "5.6", "fails": ["test_zero_bubble_order_is_valid_and_fills_the_bubble"],
          "message": "3m + p - 1", "why": "W right after its B: 1F1B's bubble"},
         {"exercise": "5.6", "fails": ["test_zero_bubble_order_holds_at_most_p_in_flight"],
          "message": "peak in flight", "why": "W right after its B: 1F1B's p - r in flight"},
         {"exercise": "5.6", "fails": ["test_zero_bubble_order_matches_the_simulator"], "message": "ZB-H1 runs",
          "why": "W right after its B: not ZB-H1's order"}]


def zero_bubble_order(p, m, rank):
    warm = min(p - rank - 1, m)
    order = [("F", i) for i in range(warm)]
    for i in range(m - warm):
        order += [("F", warm + i), ("B", i), ("W", i)]
    for i in range(m - warm, m):
        order += [("B", i), ("W", i)]
    return order
