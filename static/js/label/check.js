// The display check before a reading session's first image: a grey-level pattern in the spirit of
// AAPM TG18-QC (a ramp from black to white, a 5% patch on black and a 95% patch on white, each in a
// corner drawn at random), and where the reader sees each patch. Passed when both are seen where
// they are; the server records the answers with the session.

export const PLACES = ["top left", "top right", "bottom left", "bottom right"];
const RAMP_STEPS = 11; // 0%, 10%, ... 100%
const DARK_PATCH = 0.05;
const BRIGHT_PATCH = 0.95;

const grey = (level) => {
  const v = Math.round(level * 255);
  return `rgb(${v}, ${v}, ${v})`;
};

function randomPlace() {
  const pick = new Uint8Array(1);
  crypto.getRandomValues(pick);
  return PLACES[pick[0] % PLACES.length];
}

/** Draw the pattern on `canvas` (sized in CSS pixels by its attributes, sharp on any pixel ratio). */
export function drawPattern(canvas, shown) {
  const width = Number(canvas.getAttribute("width"));
  const height = Number(canvas.getAttribute("height"));
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.imageSmoothingEnabled = false;
  g.fillStyle = grey(0.5);
  g.fillRect(0, 0, width, height);
  const pad = 16;
  const rampHeight = 40;
  const labelHeight = 14;
  const step = (width - 2 * pad) / RAMP_STEPS;
  g.font = "11px sans-serif";
  g.textAlign = "center";
  g.textBaseline = "top";
  for (let k = 0; k < RAMP_STEPS; k++) {
    const level = k / (RAMP_STEPS - 1);
    g.fillStyle = grey(level);
    g.fillRect(pad + k * step, pad, Math.ceil(step), rampHeight);
    g.fillStyle = grey(0); // each step named, the one as grey as the background too
    g.fillText(`${Math.round(level * 100)}%`, pad + (k + 0.5) * step, pad + rampHeight + 2);
  }
  // LAYOUT below is what the tests read the patches by: keep them in step.
  const top = 2 * pad + rampHeight + labelHeight;
  const side = Math.min((width - 3 * pad) / 2, height - top - pad);
  square(g, pad, top, side, 0, DARK_PATCH, shown.dark);
  square(g, width - pad - side, top, side, 1, BRIGHT_PATCH, shown.bright);
}

function square(g, x, y, side, background, patch, place) {
  g.fillStyle = grey(background);
  g.fillRect(x, y, side, side);
  const p = side / 4;
  const px = place.endsWith("left") ? x + p / 2 : x + side - p - p / 2;
  const py = place.startsWith("top") ? y + p / 2 : y + side - p - p / 2;
  g.fillStyle = grey(patch);
  g.fillRect(Math.round(px), Math.round(py), Math.round(p), Math.round(p));
}

/** Run the check in its overlay until it is passed, or (where only offered) done or skipped.
 * `send(fields)` posts the answers and returns the session; resolves with it. */
export function runDisplayCheck({ send, required }) {
  const $ = (id) => document.getElementById(id);
  const overlay = $("check-overlay");
  const canvas = $("check-pattern");
  const result = $("check-result");
  const done = $("check-done");
  const skip = $("check-skip");
  const goOn = $("check-go-on");
  let shown;

  function fresh() {
    shown = { dark: randomPlace(), bright: randomPlace() };
    drawPattern(canvas, shown);
    for (const input of overlay.querySelectorAll("input[type=radio]")) input.checked = false;
    result.textContent = "";
    if (goOn) goOn.hidden = true;
    done.textContent = "Done";
  }

  const chosen = (name) => overlay.querySelector(`input[name=check-${name}]:checked`)?.value;

  return new Promise((resolve, reject) => {
    let busy = false;
    const finish = (session) => {
      overlay.hidden = true;
      resolve(session);
    };
    async function submit(fields) {
      if (busy) return null;
      busy = true;
      try {
        return await send(fields);
      } catch (err) {
        reject(err);
        return null;
      } finally {
        busy = false;
      }
    }
    done.addEventListener("click", async () => {
      if (done.textContent === "Try again") {
        fresh();
        return;
      }
      const seen = { dark: chosen("dark"), bright: chosen("bright") };
      if (!seen.dark || !seen.bright) {
        result.textContent = "Answer for both squares (or choose “I can't see it”).";
        return;
      }
      const session = await submit([
        ["dark_shown", shown.dark],
        ["bright_shown", shown.bright],
        ["dark_seen", seen.dark],
        ["bright_seen", seen.bright],
      ]);
      if (!session) return;
      if (session.check === "passed") {
        finish(session);
        return;
      }
      const missed = ["dark", "bright"]
        .filter((name) => seen[name] !== shown[name])
        .map((name) => `in the ${name === "dark" ? "black" : "white"} square it was ${shown[name]}`);
      result.textContent =
        `Not quite: ${missed.join(", and ")}. Dim the room light or adjust the screen's brightness and ` +
        `contrast, then try again with a new pattern.${required ? " This study needs the check passed." : ""}`;
      done.textContent = "Try again";
      if (goOn) {
        goOn.hidden = false;
        goOn.onclick = () => finish(session);
      }
    });
    skip?.addEventListener("click", async () => {
      const session = await submit([]);
      if (session) finish(session);
    });
    fresh();
    overlay.hidden = false;
    overlay.querySelector("input[type=radio]")?.focus({ preventScroll: true });
  });
}
