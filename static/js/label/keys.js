// The page's keys: one table from key to action; what an action does is main.js's.

/** key (as KeyboardEvent.key, letters lower-cased) -> action name */
export const KEYS = Object.freeze({
  r: "real",
  f: "fake",
  u: "unsure",
  1: "digit",
  2: "digit",
  3: "digit",
  4: "digit",
  5: "digit",
  6: "digit",
  7: "digit",
  8: "digit",
  9: "digit",
  p: "pause",
  b: "back",
  i: "instructions",
  Escape: "escape",
  "+": "zoomIn",
  "=": "zoomIn",
  "-": "zoomOut",
  _: "zoomOut",
  0: "resetView",
  w: "windowPreset",
  Delete: "clearMark",
  Backspace: "clearMark",
  Enter: "continue",
  " ": "continue",
});

/** Call `actions[name](key)` for each key of the table; an action that returns false leaves the
 * key to the browser. Keys typed into a field, repeats and shortcuts with modifiers are ignored. */
export function bindKeys(actions) {
  document.addEventListener("keydown", (e) => {
    if (e.repeat || e.ctrlKey || e.altKey || e.metaKey || e.isComposing) return;
    const t = e.target;
    if (t instanceof HTMLElement && (t.isContentEditable || t.matches("input:not([type=range]), textarea, select"))) {
      return;
    }
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    const action = actions[KEYS[key]];
    if (action && action(key) !== false) e.preventDefault();
  });
}
