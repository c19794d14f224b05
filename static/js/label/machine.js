// The labelling page's one state machine: every state, and the events that move it, in one table.
//
// A transition not in the table is refused (and reported on the console): a key pressed while
// an answer is on its way, a second click on Continue, cannot move the page anywhere unplanned.

/** state -> event -> next state */
export const TRANSITIONS = Object.freeze({
  // An image (or the first state) is on its way from the server.
  loading: { shown: "viewing", finished: "leaving", check: "checking", rest: "resting", failed: "stopped" },
  // The display check, before a reading session's first image.
  checking: { checked: "loading", failed: "stopped" },
  // A break reminder between two images (the study's every N images or minutes).
  resting: { resume: "loading", failed: "stopped" },
  // The image is on screen; the clock runs.
  viewing: { answer: "sending", explain: "explaining", pause: "paused", back: "loading", failed: "stopped" },
  // The label is chosen; the reader says what gave the image away (where the study asks), or not.
  explaining: { answer: "sending", cancel: "viewing", failed: "stopped" },
  // The image is hidden and the clock stopped (a key, a button, or the tab left).
  paused: { resume: "viewing", failed: "stopped" },
  // An answer is on its way (kept and sent again through an outage).
  sending: { accepted: "loading", feedback: "feedback", refused: "viewing", failed: "stopped" },
  // A practice image's truth is shown until the reader goes on.
  feedback: { continue: "loading", failed: "stopped" },
  // Every image answered: the page leaves for the end page.
  leaving: {},
  // Something the reader must act on (a closed study, a session ended): the page stops here.
  stopped: {},
});

export const STATES = Object.freeze(Object.keys(TRANSITIONS));

export class Machine {
  constructor(initial = "loading", table = TRANSITIONS) {
    if (!(initial in table)) throw new Error(`Unknown state ${initial}`);
    this.table = table;
    this.state = initial;
    this.listeners = [];
  }

  /** Whether `event` may happen now. */
  can(event) {
    return event in this.table[this.state];
  }

  is(...states) {
    return states.includes(this.state);
  }

  /** Move on by `event`; returns whether it did. A transition not in the table changes nothing. */
  send(event) {
    const next = this.table[this.state][event];
    if (next === undefined) {
      console.warn(`label: "${event}" is not allowed in state "${this.state}"`);
      return false;
    }
    const previous = this.state;
    this.state = next;
    for (const listener of this.listeners) listener(next, previous, event);
    return true;
  }

  /** Call `listener(state, previous, event)` after every transition. */
  subscribe(listener) {
    this.listeners.push(listener);
  }
}
