"""kdns.labelselector: the API server's labelSelector text, read and matched as the API server
does (Kubernetes "Labels and Selectors": equality- and set-based requirements)."""

from __future__ import annotations

import pytest

from kdns.labelselector import SelectorError, parse

WEB = {"app": "web", "tier": "front", "replicas": "3"}
BARE: dict[str, str] = {}

CASES = [
    # (selector, labels, selected?)
    ("", BARE, True),
    ("app=web", WEB, True),
    ("app==web", WEB, True),
    ("app=api", WEB, False),
    ("app!=api", WEB, True),
    ("app!=api", BARE, True),  # != holds for an object without the label
    ("app!=web", WEB, False),
    ("app", WEB, True),
    ("app", BARE, False),
    ("!app", BARE, True),
    ("!app", WEB, False),
    ("tier in (front, back)", WEB, True),
    ("tier in (back)", WEB, False),
    ("tier in (front)", BARE, False),
    ("tier notin (back)", WEB, True),
    ("tier notin (back)", BARE, True),
    ("tier notin (front,back)", WEB, False),
    ("app=web,tier in (front,back),!canary", WEB, True),
    ("app=web,canary", WEB, False),
    ("replicas>2", WEB, True),
    ("replicas<3", WEB, False),
    ("replicas>2", BARE, False),
    ("app>2", WEB, False),  # not a number: never greater
    ("example.com/team=dns", {"example.com/team": "dns"}, True),
    ("app=", {"app": ""}, True),
]


@pytest.mark.parametrize("text, labels, selected", CASES)
def test_matches_as_the_api_server_does(text: str, labels: dict[str, str], selected: bool) -> None:
    assert parse(text).matches(labels) is selected


@pytest.mark.parametrize(
    "text, sent",
    [
        ("app == web ,  tier in ( a , b )", "app=web,tier in (a,b)"),
        ("!canary", "!canary"),
        ("", ""),
    ],
)
def test_the_text_sent_to_the_api_server(text: str, sent: str) -> None:
    assert str(parse(text)) == sent


@pytest.mark.parametrize(
    "text, message",
    [
        ("app=web,", "'': expected KEY"),
        ("tier in (a,b", "unbalanced parentheses"),
        ("tier in ()", "a set needs at least one value"),
        ("-app=web", "'-app' is not a label key"),
        ("app=we b", "expected KEY"),
        ("app=-web", "'-web' is not a label value"),
        ("replicas>three", "> takes a whole number"),
        ("tier within (a)", "expected KEY"),
    ],
)
def test_what_the_api_server_refuses(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message.replace("(", r"\(")):
        parse(text)
