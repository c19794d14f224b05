"""Instructions are Markdown from researchers: only formatting and http(s)/mailto links reach readers."""

from html.parser import HTMLParser

import pytest

from studies.models import Study
from tests.studies.study_fixtures import make_open_study

pytestmark = pytest.mark.django_db

HOSTILE = """Label each image **real** or **fake**. See [the protocol](https://example.org/protocol)
or [write to us](mailto:team@example.org).

[click me](javascript:alert(document.cookie)) [again](JaVaScRiPt:alert(1)) [data](data:text/html,<b>x</b>)
[vb](vbscript:msgbox(1)) ![tracker](https://tracker.example/pixel.png) <script>alert(1)</script>
<img src="https://tracker.example/raw.png"> <a href="javascript:alert(2)">raw</a>
"""


def study_with(reader, instructions: str) -> Study:
    study = make_open_study(reader, images=2)
    study.instructions = instructions
    study.save(update_fields=["instructions"])
    return study


def instructions_of(client, study: Study) -> str:
    html = client.get(f"/study/{study.pk}/").content.decode()
    start = html.index('id="instructions"')
    return html[start : html.index("</aside>", start)]


def test_instructions_keep_their_formatting_and_web_links(client, reader):
    study = study_with(reader, HOSTILE)
    client.force_login(reader)
    shown = instructions_of(client, study)
    assert "<strong>real</strong>" in shown
    assert '<a href="https://example.org/protocol" rel="noopener noreferrer">the protocol</a>' in shown
    assert 'href="mailto:team@example.org"' in shown


def test_no_script_link_and_no_remote_image_reaches_the_reader(client, reader):
    study = study_with(reader, HOSTILE)
    client.force_login(reader)
    tags = Tags()
    tags.feed(instructions_of(client, study))
    hrefs = [attrs.get("href") for tag, attrs in tags.found if tag == "a" and "href" in attrs]
    assert hrefs == ["https://example.org/protocol", "mailto:team@example.org"]
    assert not {"img", "script"} & {tag for tag, _ in tags.found}


class Tags(HTMLParser):
    """Every element of a piece of HTML with its attributes (text that only looks like a tag is text)."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))
