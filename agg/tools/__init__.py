"""Tools that use agg from outside, as its users do: ``agg-publish`` (the
demo publisher), ``agg-stats`` (the statistics, once or live) and
``agg-bench`` (the benchmark). None of the actors imports them."""
