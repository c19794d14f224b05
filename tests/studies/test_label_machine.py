"""The labelling page's state machine (static/js/label/machine.js) in Chromium: every transition
of its table, every event it refuses, and the states a reader's session really passes through."""

import re

import pytest
from playwright.sync_api import expect

from studies.lifecycle import study_close
from tests.studies.study_fixtures import make_open_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

# The table as the page must have it: state -> event -> next state.
TABLE = {
    "loading": {
        "shown": "viewing",
        "finished": "leaving",
        "check": "checking",
        "rest": "resting",
        "failed": "stopped",
    },
    "checking": {"checked": "loading", "failed": "stopped"},
    "resting": {"resume": "loading", "failed": "stopped"},
    "viewing": {
        "answer": "sending",
        "explain": "explaining",
        "pause": "paused",
        "back": "loading",
        "failed": "stopped",
    },
    "explaining": {"answer": "sending", "cancel": "viewing", "failed": "stopped"},
    "paused": {"resume": "viewing", "failed": "stopped"},
    "sending": {"accepted": "loading", "feedback": "feedback", "refused": "viewing", "failed": "stopped"},
    "feedback": {"continue": "loading", "failed": "stopped"},
    "leaving": {},
    "stopped": {},
}
EVENTS = sorted({event for moves in TABLE.values() for event in moves})

WALK = """async ([events]) => {
  const { Machine, TRANSITIONS, STATES } = await import("/static/js/label/machine.js");
  const found = { table: TRANSITIONS, states: STATES, moves: {}, heard: [] };
  for (const state of STATES) {
    found.moves[state] = {};
    for (const event of events) {
      const machine = new Machine(state);
      machine.subscribe((next, previous, by) => found.heard.push([previous, by, next]));
      const moved = machine.send(event);
      found.moves[state][event] = moved ? machine.state : null;
      if (!moved && machine.state !== state) found.moves[state][event] = "changed on refusal";
    }
  }
  return found;
}"""


def test_every_transition_of_the_table_and_nothing_else(tabs, reader):
    make_open_study(reader, images=2)
    tab = tabs()
    tab.log_in("reader", "reader-pass")
    found = tab.page.evaluate(WALK, [EVENTS])
    assert found["table"] == TABLE and found["states"] == list(TABLE)
    for state, moves in found["moves"].items():
        for event, landed in moves.items():
            assert landed == TABLE[state].get(event), (state, event, landed)
    expected = sorted([state, event, to] for state, moves in TABLE.items() for event, to in moves.items())
    assert sorted(found["heard"]) == expected  # each listener told of each move, once


def test_a_session_passes_through_the_states_of_the_table(tabs, reader):
    study = make_open_study(reader, images=4, practice=2, allow_back=True)
    tab = tabs()
    page = tab.page
    tab.log_in("reader", "reader-pass")
    tab.open_study(study)
    machine = page.locator("#label-app")
    page.keyboard.press("Escape")  # the instructions, open on a first visit
    tab.wait_ready()
    expect(machine).to_have_attribute("data-machine", "viewing")
    page.keyboard.press("p")
    expect(machine).to_have_attribute("data-machine", "paused")
    page.keyboard.press("p")
    expect(machine).to_have_attribute("data-machine", "viewing")
    tab.wait_ready()
    page.keyboard.press("r")  # practice: sending, then feedback
    expect(machine).to_have_attribute("data-machine", "feedback")
    page.keyboard.press("f")  # only going on does anything while the truth is shown
    expect(machine).to_have_attribute("data-machine", "feedback")
    page.keyboard.press("Enter")
    tab.wait_ready()
    expect(machine).to_have_attribute("data-machine", "viewing")
    page.keyboard.press("r")
    expect(machine).to_have_attribute("data-machine", "feedback")
    page.keyboard.press("Enter")
    tab.wait_ready()
    page.keyboard.press("f")  # the first study image
    tab.wait_ready()
    expect(tab.progress()).to_have_text("2 of 4")
    page.keyboard.press("b")  # back: loading, then viewing the answered image
    tab.wait_ready()
    expect(tab.progress()).to_have_text("1 of 4")
    expect(machine).to_have_attribute("data-machine", "viewing")
    page.keyboard.press("f")
    tab.wait_ready()
    study_close(study=study)
    page.keyboard.press("r")  # the study closed meanwhile: the answer is refused for good
    expect(machine).to_have_attribute("data-machine", "stopped")
    expect(page.locator("#stop-title")).to_have_text("This study is closed")
    page.keyboard.press("p")  # nothing leaves the stopped state
    expect(machine).to_have_attribute("data-machine", "stopped")
    expect(page).to_have_url(re.compile(rf"/study/{study.pk}/$"))
