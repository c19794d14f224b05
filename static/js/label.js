// The labelling page: one image at a time, answered with R / F / U (and 1-5).
//
// What the page knows about a presentation is its random id and its image URL,
// both kept in JS variables only: the DOM shows a blob: URL and nothing else.
"use strict";

(() => {
  const app = document.getElementById("label-app");
  if (!app) return;

  const PLACEHOLDER = "00000000-0000-0000-0000-000000000000";
  const SETTLE_MS = 350; // input is ignored this long after a new image appears (double presses)
  // Back-off for requests that failed on the server's side: short, so that an answer kept
  // through an outage is sent within seconds of the server's return.
  const RETRY_DELAYS_S = [1, 2, 3, 5];
  const RETRY_AFTER_MAX_S = 30; // the most a server's Retry-After is waited for
  const MIN_SCALE = 1;
  const MAX_SCALE = 12;

  const cfg = {
    stateUrl: app.dataset.stateUrl,
    answerTemplate: app.dataset.answerUrlTemplate,
    doneUrl: app.dataset.doneUrl,
    loginUrl: app.dataset.loginUrl,
    askConfidence: app.dataset.askConfidence === "true",
    allowUnsure: app.dataset.allowUnsure === "true",
    allowBack: app.dataset.allowBack === "true",
    timeLimitMs: Number(app.dataset.timeLimitMs || 0),
  };
  const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
  const loginPath = new URL(cfg.loginUrl, location.href).pathname;

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
  const contrastInput = $("contrast");
  const brightnessInput = $("brightness");
  const zoomReadout = $("zoom-readout");
  const labelButtons = [...document.querySelectorAll(".label-btn")];
  const confButtons = [...document.querySelectorAll(".conf-btn")];
  const answerGroup = document.querySelector(".answer-group");
  const confGroup = document.querySelector(".confidence-group");

  // ---- State -------------------------------------------------------------------
  let phase = "loading"; // loading | viewing | sending | feedback | stopped
  let paused = false;
  let current = null; // {id, image, n, total} of the image on screen
  let shownUrl = null; // blob: URL on screen
  let prefetched = null; // {id, promise of a blob: URL or null}
  let choice = { label: null, confidence: null };
  // Back at an answered image: its earlier answer, marked apart from `choice`, which
  // starts empty so that a change is sent only once label (and confidence) are chosen anew.
  let earlier = null;
  let acceptAfter = Infinity;
  let focusBack = null;
  let timeUp = false; // the study's time limit hid the image; answering is still open
  let afterFeedback = null; // the state to go on to once the reader has read a practice answer
  const clock = { start: 0, pausedMs: 0, pauseStart: null };
  const view = { scale: 1, tx: 0, ty: 0, contrast: 1, brightness: 1 };

  // ---- Small helpers -------------------------------------------------------------
  const now = () => performance.now();
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Wait for a retry: the delay, or less if the browser comes back online or the page is shown again. */
  function retryWait(seconds) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        window.removeEventListener("online", done);
        document.removeEventListener("visibilitychange", shown);
        resolve();
      };
      const shown = () => document.visibilityState === "visible" && done();
      const timer = setTimeout(done, seconds * 1000);
      window.addEventListener("online", done);
      document.addEventListener("visibilitychange", shown);
    });
  }

  /** A response's Retry-After in seconds (a number of seconds or an HTTP date), or 0. */
  function retryAfterS(res) {
    const value = res.headers.get("Retry-After");
    if (!value) return 0;
    const seconds = /^\d+$/.test(value.trim()) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
    return Number.isFinite(seconds) ? Math.min(Math.max(seconds, 0), RETRY_AFTER_MAX_S) : 0;
  }

  class HttpError extends Error {
    constructor(status, data, retryAfter = 0) {
      super(`HTTP ${status}`);
      this.status = status;
      this.data = data;
      this.retryAfter = retryAfter; // seconds the server asked to wait (503, 429)
    }
  }
  class SessionEnded extends Error {}

  function isLoginRedirect(res) {
    return res.redirected && new URL(res.url).pathname === loginPath;
  }

  async function readJson(res) {
    if (isLoginRedirect(res)) throw new SessionEnded();
    const type = res.headers.get("Content-Type") || "";
    let data = null;
    if (type.includes("application/json")) {
      try {
        data = await res.json();
      } catch {
        data = null;
      }
    }
    if (!res.ok) throw new HttpError(res.status, data, retryAfterS(res));
    if (data === null) throw new HttpError(res.status, null); // e.g. an HTML page where JSON was due
    return data;
  }

  /** Retry on network failures and server trouble (5xx, 429); anything else is thrown. */
  const retryable = (err) =>
    err instanceof TypeError || (err instanceof HttpError && (err.status >= 500 || err.status === 429));

  async function withRetry(task, describe) {
    for (let attempt = 0; ; attempt++) {
      try {
        const result = await task();
        if (attempt > 0) setStatus("");
        return result;
      } catch (err) {
        if (!retryable(err)) throw err;
        const backoff = RETRY_DELAYS_S[Math.min(attempt, RETRY_DELAYS_S.length - 1)];
        const delay = Math.ceil(Math.max(backoff, err.retryAfter || 0));
        setStatus(`${describe} Trying again in ${delay} s.`, "warn");
        await retryWait(delay);
        setStatus(`${describe} Trying again now…`, "warn");
      }
    }
  }

  // ---- Rendering -----------------------------------------------------------------
  function canAnswer() {
    return phase === "viewing" && !paused && now() >= acceptAfter;
  }

  function setStatus(text, tone = "") {
    statusEl.textContent = text;
    statusEl.dataset.tone = tone;
    statusEl.hidden = !text;
  }

  function render() {
    const active = canAnswer();
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
    if (cfg.askConfidence) {
      answerGroup.classList.toggle("needs", active && choice.confidence !== null && choice.label === null);
      confGroup.classList.toggle("needs", active && choice.label !== null && choice.confidence === null);
    }
    pauseBtn.disabled = phase !== "viewing";
    pauseBtn.setAttribute("aria-pressed", String(paused));
    pauseBtn.querySelector(".pause-word").textContent = paused ? "Resume" : "Pause";
    pauseOverlay.hidden = !paused;
    timeupOverlay.hidden = !timeUp || paused || phase !== "viewing";
    img.classList.toggle("is-timeup", timeUp);
    if (backBtn) backBtn.disabled = !active || !current?.previous;
    img.classList.toggle("is-paused", paused);
    stage.classList.toggle("is-viewable", (phase === "viewing" || phase === "sending") && !paused);
    loadingNote.hidden = phase !== "loading";
    app.dataset.state =
      phase === "stopped" ? "stopped" : paused ? "paused" : active ? "ready" : phase === "sending" ? "sending" : "busy";
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

  function stop(title, text, link) {
    phase = "stopped";
    paused = false;
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

  function stopFor(err) {
    if (err instanceof SessionEnded) {
      stop("Your session has ended", "Log in again to continue where you left off. Your saved answers are kept.", {
        href: cfg.loginUrl,
        text: "Log in",
      });
    } else if (err instanceof HttpError && err.status === 409) {
      stop("This study is closed", "It no longer takes answers. Thank you for your work on it.");
    } else if (err instanceof HttpError && err.status === 404) {
      stop("This image is no longer available", "The study may have been closed or changed.");
    } else if (err instanceof HttpError && err.status === 403) {
      stop("This page has expired", "Reload it to continue where you left off.", {
        href: location.href,
        text: "Reload",
      });
    } else {
      stop("Something went wrong", "Reload the page to continue where you left off.", {
        href: location.href,
        text: "Reload",
      });
      console.error(err);
    }
  }

  // ---- Viewing clock ---------------------------------------------------------------
  function viewingMs() {
    const pausedNow = clock.pauseStart === null ? 0 : now() - clock.pauseStart;
    return Math.max(0, Math.round(now() - clock.start - clock.pausedMs - pausedNow));
  }

  // The time limit counts viewing time only: a pause stops it, like the clock.
  setInterval(() => {
    if (!cfg.timeLimitMs || timeUp || phase !== "viewing" || paused) return;
    if (viewingMs() >= cfg.timeLimitMs) {
      timeUp = true;
      render();
    }
  }, 100);

  function setPaused(value) {
    if (value === paused || (value && phase !== "viewing") || phase === "stopped") return;
    paused = value;
    if (paused) {
      clock.pauseStart = now();
    } else {
      if (clock.pauseStart !== null) clock.pausedMs += now() - clock.pauseStart;
      clock.pauseStart = null;
      // A brief settle after resuming too, so the key that resumed cannot answer.
      acceptAfter = Math.max(acceptAfter, now() + SETTLE_MS);
      setTimeout(render, SETTLE_MS + 20);
    }
    render();
    if (paused) resumeBtn.focus({ preventScroll: true });
    else if (document.activeElement === resumeBtn || document.activeElement === document.body) {
      pauseBtn.focus({ preventScroll: true });
    }
  }

  // ---- Images ------------------------------------------------------------------------
  async function fetchImageUrl(src) {
    const res = await fetch(src, { credentials: "same-origin", cache: "no-store" });
    if (isLoginRedirect(res)) throw new SessionEnded();
    if (!res.ok) throw new HttpError(res.status, null, retryAfterS(res));
    const blob = await res.blob();
    if (!blob.type.startsWith("image/")) throw new HttpError(res.status, null);
    return URL.createObjectURL(blob);
  }

  function prefetch(item) {
    if (prefetched && item && prefetched.id === item.id) return;
    dropPrefetch();
    if (!item) return;
    prefetched = { id: item.id, promise: fetchImageUrl(item.image).catch(() => null) };
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
    return withRetry(() => fetchImageUrl(item.image), "The image did not load.");
  }

  /** Show a presentation: load its image, swap it in, reset the view, start the clock. */
  async function show(item, nextItem) {
    phase = "loading";
    paused = false;
    clock.pauseStart = null;
    choice = { label: null, confidence: null };
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
    resetView();
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
    phase = "viewing";
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
    render();
    setTimeout(render, SETTLE_MS + 20);
    if (document.visibilityState === "hidden") setPaused(true);
  }

  async function follow(state) {
    if (state.done || !state.current) {
      phase = "loading";
      render();
      dropPrefetch();
      location.assign(cfg.doneUrl);
      return;
    }
    await show(state.current, state.next);
  }

  // ---- Answering ------------------------------------------------------------------------
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
    submit();
  }

  async function submit() {
    const body = new URLSearchParams({ label: choice.label, viewing_ms: String(viewingMs()) });
    if (cfg.askConfidence) body.set("confidence", String(choice.confidence));
    const url = cfg.answerTemplate.replace(PLACEHOLDER, current.id);
    phase = "sending";
    render();
    let state;
    try {
      state = await withRetry(async () => {
        const res = await fetch(url, {
          method: "POST",
          credentials: "same-origin",
          headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
          body,
        });
        return readJson(res);
      }, "Your answer has not reached the server yet; it is kept here.");
    } catch (err) {
      if (err instanceof HttpError && err.status === 400) {
        // Something the reader can fix (e.g. a confidence was missing): ask again.
        phase = "viewing";
        choice = { label: null, confidence: null };
        setStatus(err.data?.error || "That answer was not accepted. Please answer again.", "warn");
        render();
        return;
      }
      stopFor(err);
      return;
    }
    if (state.feedback) {
      showFeedback(state);
      return;
    }
    try {
      await follow(state);
    } catch (err) {
      stopFor(err);
    }
  }

  // ---- Practice feedback and going back ----------------------------------------------------
  const LABEL_WORDS = { real: "real", fake: "fake", unsure: "unsure" };

  function showFeedback(state) {
    const truth = state.feedback.truth;
    phase = "feedback";
    afterFeedback = state;
    $("feedback-title").textContent = truth === "real" ? "A real radiograph" : "A synthetic image";
    const verdict = choice.label === truth ? "right" : choice.label === "unsure" ? "unsure" : "not right";
    $("feedback-text").textContent =
      `You answered ${LABEL_WORDS[choice.label]}: ${verdict}. ` +
      "Practice only: the study's own images never show the truth.";
    feedbackOverlay.hidden = false;
    render();
    feedbackContinue.focus({ preventScroll: true });
  }

  async function leaveFeedback() {
    if (phase !== "feedback") return;
    feedbackOverlay.hidden = true;
    const state = afterFeedback;
    afterFeedback = null;
    try {
      await follow(state);
    } catch (err) {
      stopFor(err);
    }
  }

  async function goBack() {
    if (!cfg.allowBack || !canAnswer() || !current?.previous) return;
    const url = new URL(cfg.stateUrl, location.href);
    url.searchParams.set("at", current.previous);
    phase = "loading";
    render();
    try {
      const state = await withRetry(
        async () => readJson(await fetch(url, { credentials: "same-origin", cache: "no-store" })),
        "Could not reach the server.",
      );
      await follow(state);
    } catch (err) {
      stopFor(err);
    }
  }

  // ---- Zoom, pan, window / level ---------------------------------------------------------
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  function applyView() {
    const rect = stage.getBoundingClientRect();
    const maxX = (rect.width * view.scale) / 2;
    const maxY = (rect.height * view.scale) / 2;
    view.tx = view.scale === 1 ? 0 : clamp(view.tx, -maxX, maxX);
    view.ty = view.scale === 1 ? 0 : clamp(view.ty, -maxY, maxY);
    img.style.transform =
      view.scale === 1 ? "" : `translate(${view.tx}px, ${view.ty}px) scale(${view.scale})`;
    img.style.filter =
      view.contrast === 1 && view.brightness === 1
        ? ""
        : `contrast(${view.contrast.toFixed(3)}) brightness(${view.brightness.toFixed(3)})`;
    // The sliders are in powers of two, so that "unchanged" sits in the middle.
    contrastInput.value = String(Math.log2(view.contrast));
    brightnessInput.value = String(Math.log2(view.brightness));
    contrastInput.setAttribute("aria-valuetext", `${Math.round(view.contrast * 100)}%`);
    brightnessInput.setAttribute("aria-valuetext", `${Math.round(view.brightness * 100)}%`);
    zoomReadout.textContent = `${Math.round(view.scale * 100)}%`;
  }

  function resetView() {
    Object.assign(view, { scale: 1, tx: 0, ty: 0, contrast: 1, brightness: 1 });
    applyView();
  }

  /** Zoom by `factor` keeping the point (mx, my), relative to the stage centre, in place. */
  function zoomAt(factor, mx = 0, my = 0) {
    const scale = clamp(view.scale * factor, MIN_SCALE, MAX_SCALE);
    const k = scale / view.scale;
    view.tx = mx - k * (mx - view.tx);
    view.ty = my - k * (my - view.ty);
    view.scale = scale;
    applyView();
  }

  const viewable = () => (phase === "viewing" || phase === "sending") && !paused;

  stage.addEventListener(
    "wheel",
    (e) => {
      if (!viewable()) return;
      e.preventDefault();
      const rect = stage.getBoundingClientRect();
      const lines = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? rect.height : 1;
      const factor = Math.exp(-e.deltaY * lines * 0.0015);
      zoomAt(factor, e.clientX - rect.left - rect.width / 2, e.clientY - rect.top - rect.height / 2);
    },
    { passive: false },
  );

  let drag = null;
  stage.addEventListener("pointerdown", (e) => {
    if (!viewable() || e.button !== 0 || (e.target !== stage && e.target !== img)) return;
    e.preventDefault();
    stage.setPointerCapture(e.pointerId);
    drag = {
      id: e.pointerId,
      x: e.clientX,
      y: e.clientY,
      windowing: e.shiftKey,
      tx: view.tx,
      ty: view.ty,
      contrast: view.contrast,
      brightness: view.brightness,
    };
    stage.classList.add(drag.windowing ? "is-windowing" : "is-panning");
  });
  stage.addEventListener("pointermove", (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    if (drag.windowing) {
      view.contrast = clamp(drag.contrast * 2 ** (dx / 150), 2 ** -2, 2 ** 2);
      view.brightness = clamp(drag.brightness * 2 ** (-dy / 150), 2 ** -1.5, 2 ** 1.5);
    } else {
      view.tx = drag.tx + dx;
      view.ty = drag.ty + dy;
    }
    applyView();
  });
  const endDrag = (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    drag = null;
    stage.classList.remove("is-windowing", "is-panning");
  };
  stage.addEventListener("pointerup", endDrag);
  stage.addEventListener("pointercancel", endDrag);

  contrastInput.addEventListener("input", () => {
    view.contrast = 2 ** Number(contrastInput.value);
    applyView();
  });
  brightnessInput.addEventListener("input", () => {
    view.brightness = 2 ** Number(brightnessInput.value);
    applyView();
  });
  $("reset-view").addEventListener("click", resetView);
  window.addEventListener("resize", applyView);

  // ---- Instructions -------------------------------------------------------------------
  function setInstructions(open) {
    if (!open && instructions.contains(document.activeElement)) instructionsToggle.focus({ preventScroll: true });
    instructions.hidden = !open;
    instructionsToggle.setAttribute("aria-expanded", String(open));
    applyView();
  }
  instructionsToggle.addEventListener("click", () => setInstructions(instructions.hidden));
  $("instructions-close").addEventListener("click", () => setInstructions(false));

  // ---- Buttons and keys ---------------------------------------------------------------
  for (const button of labelButtons) button.addEventListener("click", () => choose(button.dataset.label));
  for (const button of confButtons) {
    button.addEventListener("click", () => chooseConfidence(Number(button.dataset.confidence)));
  }
  pauseBtn.addEventListener("click", () => setPaused(!paused));
  feedbackContinue.addEventListener("click", leaveFeedback);
  if (backBtn) backBtn.addEventListener("click", goBack);
  resumeBtn.addEventListener("click", () => setPaused(false));

  document.addEventListener("keydown", (e) => {
    if (e.repeat || e.ctrlKey || e.altKey || e.metaKey || e.isComposing) return;
    const t = e.target;
    if (t instanceof HTMLElement && (t.isContentEditable || t.matches("input:not([type=range]), textarea, select"))) {
      return;
    }
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (phase === "feedback") {
      if (key === "Enter" || key === " ") {
        e.preventDefault();
        leaveFeedback();
      }
      return;
    }
    let handled = true;
    switch (key) {
      case "r":
        choose("real");
        break;
      case "f":
        choose("fake");
        break;
      case "u":
        if (cfg.allowUnsure) choose("unsure");
        else handled = false;
        break;
      case "1":
      case "2":
      case "3":
      case "4":
      case "5":
        if (cfg.askConfidence) chooseConfidence(Number(key));
        else handled = false;
        break;
      case "p":
        setPaused(!paused);
        break;
      case "b":
        if (cfg.allowBack) goBack();
        else handled = false;
        break;
      case "i":
        setInstructions(instructions.hidden);
        break;
      case "Escape":
        if (!instructions.hidden) setInstructions(false);
        else handled = false;
        break;
      case "+":
      case "=":
        if (viewable()) zoomAt(1.25);
        break;
      case "-":
      case "_":
        if (viewable()) zoomAt(1 / 1.25);
        break;
      case "0":
        resetView();
        break;
      default:
        handled = false;
    }
    if (handled) e.preventDefault();
  });

  // Time away from the page is not viewing time.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden" && phase === "viewing") setPaused(true);
  });
  window.addEventListener("pagehide", () => {
    if (shownUrl) URL.revokeObjectURL(shownUrl);
    dropPrefetch();
  });
  // Back from the end page through the back/forward cache: the state may have moved on.
  window.addEventListener("pageshow", (e) => {
    if (e.persisted) location.reload();
  });

  // ---- Start ------------------------------------------------------------------------------
  async function start() {
    render();
    try {
      const state = await withRetry(
        async () => readJson(await fetch(cfg.stateUrl, { credentials: "same-origin", cache: "no-store" })),
        "Could not reach the server.",
      );
      if (state.current && state.current.n === 1 && instructions.hidden) setInstructions(true);
      await follow(state);
    } catch (err) {
      stopFor(err);
    }
  }

  setStatus("");
  start();
})();
