"""Detection of image references in message text, at their exact positions."""

from __future__ import annotations

import pytest

from bridge.media import RefKind, find_references, media_reference

SHA = "ab" * 32


def spans(text: str) -> list[tuple[RefKind, str, str]]:
    return [(r.kind, text[r.start:r.end], r.target) for r in find_references(text)]


def test_every_kind_is_found_at_its_position():
    text = (
        "look: /srv/pics/a.jpg, ~/p/b.png and ./c.webp (../d.gif) "
        f"file:///srv/pics/e%20f.jpg {media_reference(SHA)} end"
    )
    assert spans(text) == [
        (RefKind.ABSOLUTE, "/srv/pics/a.jpg", "/srv/pics/a.jpg"),
        (RefKind.HOME, "~/p/b.png", "~/p/b.png"),
        (RefKind.RELATIVE, "./c.webp", "./c.webp"),
        (RefKind.RELATIVE, "../d.gif", "../d.gif"),
        (RefKind.FILE_URL, "file:///srv/pics/e%20f.jpg", "file:///srv/pics/e%20f.jpg"),
        (RefKind.MEDIA, f"media:{SHA}", SHA),
    ]
    first = find_references(text)[0]
    assert (first.start, first.end) == (6, 21)


def test_quoted_paths_may_hold_spaces():
    text = 'compare "/srv/My Photos/a b.jpg" with `~/x y.png` please'
    assert spans(text) == [
        (RefKind.ABSOLUTE, '"/srv/My Photos/a b.jpg"', "/srv/My Photos/a b.jpg"),
        (RefKind.HOME, "`~/x y.png`", "~/x y.png"),
    ]


@pytest.mark.parametrize("text, expected", [
    ("what is /tmp/a.png?", "/tmp/a.png"),
    ("see (/tmp/a.png).", "/tmp/a.png"),
    ("![alt](/tmp/a.png)", "/tmp/a.png"),
    ("/tmp/(1).png!", "/tmp/(1).png"),
    ("at the start: ./x.jpg", "./x.jpg"),
    (f"this: media:{SHA.upper()}.", f"media:{SHA.upper()}"),
])
def test_trailing_punctuation_is_not_part_of_the_path(text, expected):
    assert [written for _kind, written, _target in spans(text)] == [expected]


@pytest.mark.parametrize("text", [
    "https://example.com/cat.jpg",
    "http://127.0.0.1:8080/a.png",
    "and/or 1/2 a//b",
    "// comment",
    "media:" + SHA[:63],  # too short for a sha256
    "media:" + SHA + "0",  # too long
    "nomedia:" + SHA,
    "~user/a.png",
    "./ ../",
])
def test_not_references(text):
    assert find_references(text) == []


def test_media_ids_are_normalised_to_lower_case():
    (ref,) = find_references("media:" + SHA.upper())
    assert ref.kind is RefKind.MEDIA
    assert ref.target == SHA
