// The labelling page: one image at a time, answered with R / F / U (and 1-5).
//
// What the page knows about a presentation is its random id and its image URL,
// both kept in JS variables only: the DOM shows a blob: URL and nothing else.
//
// Its modules: machine.js (the states and their transitions, one table), server.js (requests,
// retries, what each failure means), viewer.js (zoom, pan, window / level, marks), keys.js (the keys).
import { Machine } from "./machine.js";
import { HttpError, Server, stopReason } from "./server.js";
import { Viewer } from "./viewer.js";
import { bindKeys } from "./keys.js";
import { runDisplayCheck } from "./check.js";

const PLACEHOLDER = "00000000-0000-0000-0000-000000000000";
const SETTLE_MS = 350; // input is ignored this long after a new image appears (double presses)
const LABEL_WORDS = { real: "real", fake: "fake", unsure: "unsure" };

const app = document.getElementById("label-app");
if (app) start(app);

function start(app) {
  const cfg = {
    stateUrl: app.dataset.stateUrl,
    answerTemplate: app.dataset.answerUrlTemplate,
    doneUrl: app.dataset.doneUrl,
    loginUrl: app.dataset.loginUrl,
    askConfidence: app.dataset.askConfidence === "true",
    allowUnsure: app.dataset.allowUnsure === "true",
    allowBack: app.dataset.allowBack === "true",
    askReasons: app.dataset.askReasons || "never", // never | fake | always
    reasonsRequired: app.dataset.reasonsRequired === "true",
    askRegion: app.dataset.askRegion || "never", // never | fake | always
    regionRequired: app.dataset.regionRequired === "true",
    timeLimitMs: Number(app.dataset.timeLimitMs || 0),
    displayCheck: app.dataset.displayCheck || "off", // off | offered | required
    breakImages: Number(app.dataset.breakImages || 0),
    breakMinutes: Number(app.dataset.breakMinutes || 0),
  };

  const $ = (id) => document.getElementById(id);
  const stage = $("stage");
  const img = $("radiograph");
  const loadingNote = $("stage-loading");
  const statusEl = $("status");
  const pauseOverlay = $("pause-overlay");
  const stopOverlay = $("stop-overlay");
  const timeupOverlay = $("timeup-overlay");
  const feedbackOverlay = $("feedback-overlay");
  const feedbackContinue = $("feedback-continue");
  const backBtn = $("back-btn");
  const progressText = $("progress-text");
  const progressBar = $("progress-bar");
  const pauseBtn = $("pause-btn");
  const resumeBtn = $("resume-btn");
  const instructions = $("instructions");
  const instructionsToggle = $("instructions-toggle");
  const labelButtons = [...document.querySelectorAll(".label-btn")];
  const confButtons = [...document.querySelectorAll(".conf-btn")];
  const answerGroup = document.querySelector(".answer-group");
  const confGroup = document.querySelector(".confidence-group");
  const reasonsPanel = $("reasons-panel");
  const reasonButtons = [...document.querySelectorAll(".reason-btn")];
  const reasonText = $("reason-text");
  const reasonChoices = $("reason-choices");
  const regionHint = $("region-hint");
  const regionClear = $("region-clear");

  const machine = new Machine("loading");
  const server = new Server({
    stateUrl: cfg.stateUrl,
    answerTemplate: cfg.answerTemplate,
    sessionUrl: app.dataset.sessionUrl,
    checkUrl: app.dataset.checkUrl,
    loginUrl: cfg.loginUrl,
    csrfToken: document.querySelector('meta[name="csrf-token"]')?.content ?? "",
    placeholder: PLACEHOLDER,
    onStatus: setStatus,
  });
  const viewer = new Viewer({
    stage,
    img,
    marks: $("marks"),
    contrastInput: $("contrast"),
    brightnessInput: $("brightness"),
    zoomReadout: $("zoom-readout"),
    resetButton: $("reset-view"),
    presetButton: $("window-preset"),
    enabled: () => machine.is("viewing", "sending", "explaining"),
    marking: () => machine.is("explaining") && regionAsked(choice.label),
    onMark: (mark) => {
      choice.region = mark;
      setStatus("");
      render();
    },
  });

  // ---- What belongs to the image on screen ---------------------------------------------
  let current = null; // {id, image, n, total, previous, answer} of the image on screen
  let shownUrl = null; // blob: URL on screen
  let prefetched = null; // {id, promise of a blob: URL or null}
  let choice = { label: null, confidence: null, reasons: new Set(), region: null, labelMs: null };
  // Back at an answered image: its earlier answer, marked apart from `choice`, which
  // starts empty so that a change is sent only once label (and confidence) are chosen anew.
  let earlier = null;
  let acceptAfter = Infinity;
  let focusBack = null;
  let timeUp = false; // the study's time limit hid the image; answering is still open
  let afterFeedback = null; // the state to go on to once the reader has read a practice answer
  const clock = { start: 0, pausedMs: 0, pauseStart: null };
  // Since the session began, or the reader's last break: for the study's break reminders.
  const sinceBreak = { answers: 0, since: 0 };
  let resting = null; // resolves when the reader goes on after a break reminder

  const now = () => performance.now();
  machine.subscribe(() => render());

  // ---- Rendering -----------------------------------------------------------------------
  function canAnswer() {
    return machine.is("viewing") && now() >= acceptAfter;
  }

  function setStatus(text, tone = "") {
    statusEl.textContent = text;
    statusEl.dataset.tone = tone;
    statusEl.hidden = !text;
  }

  function render() {
    const active = canAnswer();
    const paused = machine.is("paused");
    const focused = document.activeElement;
    if (!active && (labelButtons.includes(focused) || confButtons.includes(focused))) focusBack = focused;
    for (const button of labelButtons) {
      button.disabled = !active;
      button.setAttribute("aria-pressed", String(button.dataset.label === choice.label));
      button.classList.toggle("is-earlier", earlier?.label === button.dataset.label);
    }
    for (const button of confButtons) {
      button.disabled = !active;
      button.setAttribute("aria-pressed", String(Number(button.dataset.confidence) === choice.confidence));
      button.classList.toggle("is-earlier", earlier?.confidence === Number(button.dataset.confidence));
    }
    if (reasonsPanel) {
      const explaining = machine.is("explaining");
      const withReasons = explaining && reasonsAsked(choice.label);
      const withRegion = explaining && regionAsked(choice.label);
      reasonsPanel.hidden = !explaining;
      if (reasonChoices) reasonChoices.hidden = !withReasons;
      if (regionHint) regionHint.hidden = !withRegion;
      if (regionClear) regionClear.disabled = !choice.region;
      stage.classList.toggle("is-marking", withRegion);
      viewer.showMarks(withRegion ? choice.region : null, withRegion ? earlier?.region : null);
      for (const button of reasonButtons) {
        button.disabled = !withReasons;
        button.setAttribute("aria-pressed", String(choice.reasons.has(button.dataset.reason)));
        button.classList.toggle("is-earlier", Boolean(earlier?.reasons?.includes(button.dataset.reason)));
      }
    }
    if (cfg.askConfidence) {
      answerGroup.classList.toggle("needs", active && choice.confidence !== null && choice.label === null);
      confGroup.classList.toggle("needs", active && choice.label !== null && choice.confidence === null);
    }
    pauseBtn.disabled = !machine.is("viewing", "paused");
    pauseBtn.setAttribute("aria-pressed", String(paused));
    pauseBtn.querySelector(".pause-word").textContent = paused ? "Resume" : "Pause";
    pauseOverlay.hidden = !paused;
    timeupOverlay.hidden = !timeUp || !machine.is("viewing");
    img.classList.toggle("is-timeup", timeUp);
    if (backBtn) backBtn.disabled = !active || !current?.previous;
    img.classList.toggle("is-paused", paused);
    stage.classList.toggle("is-viewable", machine.is("viewing", "sending"));
    loadingNote.hidden = !machine.is("loading");
    app.dataset.machine = machine.state; // the state of machine.js's table (data-state: coarser, older)
    app.dataset.state = machine.is("stopped")
      ? "stopped"
      : paused
        ? "paused"
        : active
          ? "ready"
          : machine.is("sending")
            ? "sending"
            : machine.is("explaining")
              ? "explaining"
              : "busy";
    if (active && focusBack && (document.activeElement === document.body || document.activeElement === null)) {
      if (focusBack.isConnected && !focusBack.disabled) focusBack.focus({ preventScroll: true });
      focusBack = null;
    }
  }

  function showProgress(item) {
    progressText.textContent = item.practice ? `Practice ${item.n} of ${item.total}` : `${item.n} of ${item.total}`;
    progressBar.max = item.total;
    progressBar.value = item.n - 1;
    progressBar.setAttribute("aria-valuetext", `${item.n - 1} of ${item.total} labelled`);
  }

  /** Stop the page for `err`, saying what the reader can do; the one place every failure ends. */
  function stopFor(err) {
    showStop(stopReason(err, { loginUrl: cfg.loginUrl, here: location.href }));
  }

  /** Stop the page with a card: what happened and what the reader can do. */
  function showStop({ title, text, link }) {
    if (!machine.send("failed")) return;
    setStatus("");
    $("stop-title").textContent = title;
    $("stop-text").textContent = text;
    const a = $("stop-link");
    if (link) {
      a.href = link.href;
      a.textContent = link.text;
    }
    stopOverlay.hidden = false;
    render();
    a.focus({ preventScroll: true });
  }

  /** Run a step that talks to the server; whatever it throws stops the page. */
  const guarded =
    (step) =>
    async (...args) => {
      try {
        await step(...args);
      } catch (err) {
        stopFor(err);
      }
    };

  // ---- Viewing clock and pause ---------------------------------------------------------
  function viewingMs() {
    const pausedNow = clock.pauseStart === null ? 0 : now() - clock.pauseStart;
    return Math.max(0, Math.round(now() - clock.start - clock.pausedMs - pausedNow));
  }

  // The time limit counts viewing time only: a pause stops it, like the clock.
  setInterval(() => {
    if (!cfg.timeLimitMs || timeUp || !machine.is("viewing")) return;
    if (viewingMs() >= cfg.timeLimitMs) {
      timeUp = true;
      render();
    }
  }, 100);

  function setPaused(value) {
    if (value) {
      if (!machine.is("viewing")) return;
      clock.pauseStart = now();
      machine.send("pause");
      resumeBtn.focus({ preventScroll: true });
      return;
    }
    if (!machine.is("paused")) return;
    if (clock.pauseStart !== null) clock.pausedMs += now() - clock.pauseStart;
    clock.pauseStart = null;
    // A brief settle after resuming too, so the key that resumed cannot answer.
    acceptAfter = Math.max(acceptAfter, now() + SETTLE_MS);
    setTimeout(render, SETTLE_MS + 20);
    machine.send("resume");
    if (document.activeElement === resumeBtn || document.activeElement === document.body) {
      pauseBtn.focus({ preventScroll: true });
    }
  }

  // ---- Images ----------------------------------------------------------------------------
  function prefetch(item) {
    if (prefetched && item && prefetched.id === item.id) return;
    dropPrefetch();
    if (!item) return;
    prefetched = { id: item.id, promise: server.image(item.image).catch(() => null) };
  }

  function dropPrefetch() {
    if (!prefetched) return;
    prefetched.promise.then((url) => url && URL.revokeObjectURL(url));
    prefetched = null;
  }

  async function imageUrlFor(item) {
    if (prefetched && prefetched.id === item.id) {
      const taken = prefetched;
      prefetched = null;
      const url = await taken.promise;
      if (url) return url;
    }
    return server.imageWithRetry(item.image);
  }

  /** Show a presentation (in state loading): load its image, swap it in, reset the view, start the clock. */
  async function show(item, nextItem) {
    clearChoice();
    earlier = null;
    acceptAfter = Infinity;
    timeUp = false;
    img.classList.add("is-hidden");
    render();

    const url = await imageUrlFor(item);
    prefetch(nextItem);
    const probe = new Image();
    probe.src = url;
    try {
      await probe.decode();
    } catch {
      URL.revokeObjectURL(url);
      throw new HttpError(0, null);
    }

    const old = shownUrl;
    shownUrl = url;
    current = item;
    viewer.reset();
    img.src = url;
    img.hidden = false;
    showProgress(item);
    if (old) URL.revokeObjectURL(old);
    // Start the clock when the frame with the new image is painted.
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    img.classList.remove("is-hidden");
    clock.start = now();
    clock.pausedMs = 0;
    clock.pauseStart = null;
    acceptAfter = clock.start + SETTLE_MS;
    if (item.answer) {
      // Back at an answered image: its answer is marked (not chosen); answering again, the same
      // or another, goes on. Nothing chosen before going back carries over to this image.
      earlier = item.answer;
      const confidence = cfg.askConfidence && earlier.confidence ? `, confidence ${earlier.confidence}` : "";
      const both = cfg.askConfidence ? "label and confidence" : "an answer";
      setStatus(
        `Your earlier answer (marked): ${LABEL_WORDS[earlier.label]}${confidence}. ` +
          `Choose ${both} again to change it or keep it.`,
      );
    }
    machine.send("shown");
    setTimeout(render, SETTLE_MS + 20);
    if (document.visibilityState === "hidden") setPaused(true);
  }

  /** Go where the server's state says (in state loading): the next image, or the end page. */
  async function follow(state) {
    if (state.wait_until) {
      // The repeats wait for the study's washout: the page says when they open.
      dropPrefetch();
      showStop({ title: "Come back later", text: state.waiting });
      return;
    }
    if (state.done || !state.current) {
      machine.send("finished");
      dropPrefetch();
      location.assign(cfg.doneUrl);
      return;
    }
    if (breakDue()) await takeBreak();
    await show(state.current, state.next);
  }

  // ---- Sessions: breaks --------------------------------------------------------------------
  function breakDue() {
    const minutes = (now() - sinceBreak.since) / 60000;
    return (
      (cfg.breakImages > 0 && sinceBreak.answers >= cfg.breakImages) ||
      (cfg.breakMinutes > 0 && minutes >= cfg.breakMinutes && sinceBreak.answers > 0)
    );
  }

  /** The reminder between two images (in state loading); over when the reader goes on. */
  function takeBreak() {
    const minutes = Math.round((now() - sinceBreak.since) / 60000);
    $("rest-text").textContent =
      `You have read ${sinceBreak.answers} image${sinceBreak.answers === 1 ? "" : "s"} in ${minutes} minute${minutes === 1 ? "" : "s"} ` +
      "since your last break. A short break keeps your reading fresh; your place is kept whenever you stop.";
    machine.send("rest");
    $("rest-overlay").hidden = false;
    $("rest-continue").focus({ preventScroll: true });
    return new Promise((resolve) => {
      resting = () => {
        resting = null;
        $("rest-overlay").hidden = true;
        Object.assign(sinceBreak, { answers: 0, since: now() });
        machine.send("resume");
        resolve();
      };
    });
  }

  // ---- Answering -------------------------------------------------------------------------
  function clearChoice() {
    choice = { label: null, confidence: null, reasons: new Set(), region: null, labelMs: null };
    if (reasonText) reasonText.value = "";
  }

  const asked = (when, label) => when === "always" || (when === "fake" && label === "fake");
  const reasonsAsked = (label) => asked(cfg.askReasons, label);
  const regionAsked = (label) => asked(cfg.askRegion, label);

  function choose(label) {
    if (!canAnswer()) return;
    if (label === "unsure" && !cfg.allowUnsure) return;
    choice.label = label;
    maybeSubmit();
  }

  function chooseConfidence(value) {
    if (!cfg.askConfidence || !canAnswer()) return;
    choice.confidence = value;
    maybeSubmit();
  }

  function maybeSubmit() {
    setStatus("");
    if (choice.label === null || (cfg.askConfidence && choice.confidence === null)) {
      render();
      return;
    }
    choice.labelMs = viewingMs(); // the viewing time is up to the label; reasons are extra
    if (reasonsAsked(choice.label) || regionAsked(choice.label)) {
      machine.send("explain");
      $("reasons-send")?.focus({ preventScroll: true }); // off the disabled labels; Enter sends
      return;
    }
    submit();
  }

  function toggleReason(index) {
    const button = reasonButtons[index];
    if (!machine.is("explaining") || !button) return false;
    const reason = button.dataset.reason;
    if (choice.reasons.has(reason)) choice.reasons.delete(reason);
    else choice.reasons.add(reason);
    render();
  }

  function clearMark() {
    if (!machine.is("explaining") || !choice.region) return false;
    choice.region = null;
    render();
  }

  function sendReasons() {
    if (!machine.is("explaining")) return false;
    const missing = [];
    if (cfg.reasonsRequired && reasonsAsked(choice.label) && choice.reasons.size === 0 && !reasonText?.value.trim()) {
      missing.push(`give at least one reason${reasonText ? " or a note" : ""}`);
    }
    if (cfg.regionRequired && regionAsked(choice.label) && !choice.region) {
      missing.push("mark where on the image (click for a point, drag for a box)");
    }
    if (missing.length) {
      const text = missing.join(", and ");
      setStatus(`${text[0].toUpperCase()}${text.slice(1)}, then send.`, "warn");
      return;
    }
    submit();
  }

  function cancelReasons() {
    if (!machine.is("explaining")) return false;
    clearChoice();
    setStatus("");
    machine.send("cancel");
  }

  const submit = guarded(async () => {
    const fields = [
      ["label", choice.label],
      ["viewing_ms", String(choice.labelMs ?? viewingMs())],
    ];
    if (cfg.askConfidence) fields.push(["confidence", String(choice.confidence)]);
    if (machine.is("explaining")) {
      // In the study's order, as the buttons are.
      for (const button of reasonButtons) {
        if (choice.reasons.has(button.dataset.reason)) fields.push(["reasons", button.dataset.reason]);
      }
      if (reasonText?.value.trim()) fields.push(["reason_text", reasonText.value.trim()]);
      if (choice.region) {
        fields.push(["region_kind", choice.region.kind]);
        for (const corner of ["x0", "y0", "x1", "y1"]) fields.push([`region_${corner}`, String(choice.region[corner])]);
      }
    }
    machine.send("answer");
    let state;
    try {
      state = await server.answer(current.id, fields);
    } catch (err) {
      if (err instanceof HttpError && err.status === 400) {
        // Something the reader can fix (e.g. a confidence was missing): ask again.
        clearChoice();
        setStatus(err.data?.error || "That answer was not accepted. Please answer again.", "warn");
        machine.send("refused");
        return;
      }
      throw err;
    }
    sinceBreak.answers += current.answer ? 0 : 1; // a changed answer is not another image
    if (state.session_full) throw new HttpError(409, { session_full: true, error: state.session_full });
    if (state.feedback) {
      showFeedback(state);
      return;
    }
    machine.send("accepted");
    await follow(state);
  });

  // ---- Practice feedback and going back --------------------------------------------------
  function showFeedback(state) {
    const truth = state.feedback.truth;
    afterFeedback = state;
    $("feedback-title").textContent = truth === "real" ? "A real radiograph" : "A synthetic image";
    const verdict = choice.label === truth ? "right" : choice.label === "unsure" ? "unsure" : "not right";
    $("feedback-text").textContent =
      `You answered ${LABEL_WORDS[choice.label]}: ${verdict}. ` +
      "Practice only: the study's own images never show the truth.";
    feedbackOverlay.hidden = false;
    machine.send("feedback");
    feedbackContinue.focus({ preventScroll: true });
  }

  const leaveFeedback = guarded(async () => {
    if (!machine.is("feedback")) return;
    feedbackOverlay.hidden = true;
    const state = afterFeedback;
    afterFeedback = null;
    machine.send("continue");
    await follow(state);
  });

  const goBack = guarded(async () => {
    if (!cfg.allowBack || !canAnswer() || !current?.previous) return;
    machine.send("back");
    await follow(await server.state(current.previous));
  });

  // ---- Instructions ----------------------------------------------------------------------
  function setInstructions(open) {
    if (!open && instructions.contains(document.activeElement)) instructionsToggle.focus({ preventScroll: true });
    instructions.hidden = !open;
    instructionsToggle.setAttribute("aria-expanded", String(open));
    viewer.apply();
  }
  instructionsToggle.addEventListener("click", () => setInstructions(instructions.hidden));
  $("instructions-close").addEventListener("click", () => setInstructions(false));

  // ---- Buttons and keys ------------------------------------------------------------------
  for (const button of labelButtons) button.addEventListener("click", () => choose(button.dataset.label));
  for (const button of confButtons) {
    button.addEventListener("click", () => chooseConfidence(Number(button.dataset.confidence)));
  }
  pauseBtn.addEventListener("click", () => setPaused(!machine.is("paused")));
  feedbackContinue.addEventListener("click", leaveFeedback);
  if (backBtn) backBtn.addEventListener("click", goBack);
  resumeBtn.addEventListener("click", () => setPaused(false));
  $("rest-continue").addEventListener("click", () => resting?.());
  reasonButtons.forEach((button, index) => button.addEventListener("click", () => toggleReason(index)));
  $("reasons-send")?.addEventListener("click", sendReasons);
  $("reasons-cancel")?.addEventListener("click", cancelReasons);
  regionClear?.addEventListener("click", clearMark);
  // In the note, Enter sends and Escape leaves the field (its other keys are the reader's text).
  reasonText?.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.isComposing) {
      e.preventDefault();
      sendReasons();
    } else if (e.key === "Escape") {
      e.preventDefault();
      reasonText.blur();
    }
  });

  const actions = {
    real: () => choose("real"),
    fake: () => choose("fake"),
    unsure: () => (cfg.allowUnsure ? choose("unsure") : false),
    digit: (key) => {
      if (machine.is("explaining")) return toggleReason(Number(key) - 1);
      return cfg.askConfidence && Number(key) <= 5 ? chooseConfidence(Number(key)) : false;
    },
    pause: () => setPaused(!machine.is("paused")),
    back: () => (cfg.allowBack ? goBack() : false),
    instructions: () => setInstructions(instructions.hidden),
    escape: () => {
      if (!instructions.hidden) return setInstructions(false);
      return cancelReasons();
    },
    zoomIn: () => viewer.zoom(1.25),
    zoomOut: () => viewer.zoom(1 / 1.25),
    resetView: () => viewer.reset(),
    windowPreset: () => viewer.nextPreset(),
    clearMark: () => clearMark(),
    continue: (key) => {
      if (machine.is("feedback")) return leaveFeedback();
      if (machine.is("resting")) return resting?.();
      return key === "Enter" ? sendReasons() : false; // Space on a focused reason turns it on or off
    },
  };
  // While a practice answer's truth is shown, only going on does anything.
  bindKeys(
    Object.fromEntries(
      Object.entries(actions).map(([name, act]) => [
        name,
        (key) => (machine.is("feedback") && name !== "continue" ? false : act(key)),
      ]),
    ),
  );

  // Time away from the page is not viewing time.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") setPaused(true);
  });
  window.addEventListener("pagehide", () => {
    if (shownUrl) URL.revokeObjectURL(shownUrl);
    dropPrefetch();
  });
  // Back from the end page through the back/forward cache: the state may have moved on.
  window.addEventListener("pageshow", (e) => {
    if (e.persisted) location.reload();
  });

  // ---- Start -------------------------------------------------------------------------------
  setStatus("");
  render();
  guarded(async () => {
    const session = await server.session([
      ["screen_width", String(window.screen.width)],
      ["screen_height", String(window.screen.height)],
      ["pixel_ratio", String(window.devicePixelRatio || 1)],
    ]);
    if (session.full) throw new HttpError(409, { session_full: true, error: session.full });
    // Counting from the session's start: a reload goes on counting where it was.
    Object.assign(sinceBreak, { answers: session.answers, since: now() - session.seconds_so_far * 1000 });
    if (session.check_needed) {
      machine.send("check");
      await runDisplayCheck({
        send: (fields) => server.displayCheck(fields),
        required: cfg.displayCheck === "required",
      });
      machine.send("checked");
    }
    const state = await server.state();
    if (state.current && state.current.n === 1 && instructions.hidden) setInstructions(true);
    await follow(state);
  })();
}
