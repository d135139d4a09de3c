"""agg.tools.screen: what a terminal would obey is shown escaped, and cutting
counts the columns a terminal draws."""

from agg.tools.screen import fit, visible, width


def test_visible_escapes_what_a_terminal_would_act_on() -> None:
    assert visible("user.created") == "user.created"
    assert visible("a\x1b[31mb\x07c\r\n\x7f") == "a\\x1b[31mb\\x07c\\x0d\\x0a\\x7f"
    assert visible("\x9b2J") == "\\x9b2J"  # C1 CSI: one byte, as good as ESC [
    assert visible("ab\u202edc\u200b\u2028") == "ab\\u202edc\\u200b\\u2028"  # bidi, zero width, line sep
    assert visible("caf\u00e9 \u5b57") == "caf\u00e9 \u5b57"  # printable text stays itself
    assert visible("\ud800") == "\\ud800"


def test_fit_counts_terminal_columns() -> None:
    assert fit("abcdef", 6) == "abcdef" and fit("abcdef", 4) == "abc~"
    assert width("\u5b57\u5b57") == 4 and fit("\u5b57\u5b57\u5b57", 4) == "\u5b57~"
    assert width("e\u0301") == 1  # a combining accent takes no column
    assert all(width(fit("\u5b57x" * 20, n)) <= n for n in range(1, 30))
