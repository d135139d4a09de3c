"""Tools that use agg from outside, as its users do: ``agg-publish`` (the
demo publisher, or one's own events from JSON lines), ``agg-stats`` (the
statistics, once or live), ``agg-tail`` (a topic's events as they arrive) and
``agg-bench`` (the benchmark). ``console`` holds what they do alike (exit
statuses, ``--version``), ``screen`` keeps publishers' text from acting on a
terminal. None of the actors imports them."""
