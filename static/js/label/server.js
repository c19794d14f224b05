// Talking to the server: the reader's state, answers and images, with the same retries and the
// same reading of every failure wherever a request is made.

// Back-off for requests that failed on the server's side: short, so that an answer kept
// through an outage is sent within seconds of the server's return.
export const RETRY_DELAYS_S = [1, 2, 3, 5];
export const RETRY_AFTER_MAX_S = 30; // the most a server's Retry-After is waited for

export class HttpError extends Error {
  constructor(status, data, retryAfter = 0) {
    super(`HTTP ${status}`);
    this.status = status;
    this.data = data;
    this.retryAfter = retryAfter; // seconds the server asked to wait (503, 429)
  }
}

export class SessionEnded extends Error {}

/** A response's Retry-After in seconds (a number of seconds or an HTTP date), or 0. */
export function retryAfterS(res) {
  const value = res.headers.get("Retry-After");
  if (!value) return 0;
  const seconds = /^\d+$/.test(value.trim()) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
  return Number.isFinite(seconds) ? Math.min(Math.max(seconds, 0), RETRY_AFTER_MAX_S) : 0;
}

/** Retry on network failures and server trouble (5xx, 429); anything else is thrown. */
export const retryable = (err) =>
  err instanceof TypeError || (err instanceof HttpError && (err.status >= 500 || err.status === 429));

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

/** What the page says when it must stop for `err`: {title, text, link?}. */
export function stopReason(err, { loginUrl, here }) {
  if (err instanceof SessionEnded) {
    return {
      title: "Your session has ended",
      text: "Log in again to continue where you left off. Your saved answers are kept.",
      link: { href: loginUrl, text: "Log in" },
    };
  }
  if (err instanceof HttpError && err.status === 409 && err.data?.session_full) {
    return { title: "Time for a break", text: err.data.error };
  }
  if (err instanceof HttpError && err.status === 409) {
    return { title: "This study is closed", text: "It no longer takes answers. Thank you for your work on it." };
  }
  if (err instanceof HttpError && err.status === 404) {
    return { title: "This image is no longer available", text: "The study may have been closed or changed." };
  }
  if (err instanceof HttpError && err.status === 403) {
    return { title: "This page has expired", text: "Reload it to continue where you left off.", link: { href: here, text: "Reload" } };
  }
  console.error(err);
  return { title: "Something went wrong", text: "Reload the page to continue where you left off.", link: { href: here, text: "Reload" } };
}

export class Server {
  /** `onStatus(text, tone)` shows what a retry is waiting for ("" when it is over). */
  constructor({ stateUrl, answerTemplate, sessionUrl, checkUrl, loginUrl, csrfToken, placeholder, onStatus }) {
    this.stateUrl = stateUrl;
    this.sessionUrl = sessionUrl;
    this.checkUrl = checkUrl;
    this.answerTemplate = answerTemplate;
    this.loginPath = new URL(loginUrl, location.href).pathname;
    this.csrfToken = csrfToken;
    this.placeholder = placeholder;
    this.onStatus = onStatus;
  }

  isLoginRedirect(res) {
    return res.redirected && new URL(res.url).pathname === this.loginPath;
  }

  async readJson(res) {
    if (this.isLoginRedirect(res)) throw new SessionEnded();
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

  async withRetry(task, describe) {
    for (let attempt = 0; ; attempt++) {
      try {
        const result = await task();
        if (attempt > 0) this.onStatus("");
        return result;
      } catch (err) {
        if (!retryable(err)) throw err;
        const backoff = RETRY_DELAYS_S[Math.min(attempt, RETRY_DELAYS_S.length - 1)];
        const delay = Math.ceil(Math.max(backoff, err.retryAfter || 0));
        this.onStatus(`${describe} Trying again in ${delay} s.`, "warn");
        await retryWait(delay);
        this.onStatus(`${describe} Trying again now…`, "warn");
      }
    }
  }

  /** The reader's state: the current presentation and the next (or one answered, `at`). */
  state(at = null) {
    const url = new URL(this.stateUrl, location.href);
    if (at) url.searchParams.set("at", at);
    return this.withRetry(
      async () => this.readJson(await fetch(url, { credentials: "same-origin", cache: "no-store" })),
      "Could not reach the server.",
    );
  }

  /** POST `fields` (pairs), sent again until the server takes them; its JSON answer. */
  post(url, fields, describe) {
    const body = new URLSearchParams(fields);
    return this.withRetry(async () => {
      const res = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": this.csrfToken, Accept: "application/json" },
        body,
      });
      return this.readJson(res);
    }, describe);
  }

  /** Send an answer; kept and sent again until the server takes it. The state that follows. */
  answer(presentationId, fields) {
    const url = this.answerTemplate.replace(this.placeholder, presentationId);
    return this.post(url, fields, "Your answer has not reached the server yet; it is kept here.");
  }

  /** Begin (or go on with) the reader's reading session, saying what screen the page is on. */
  session(fields) {
    return this.post(this.sessionUrl, fields, "Could not reach the server.");
  }

  /** The reader's answers to the display check (none: skipped). The session as it stands. */
  displayCheck(fields) {
    return this.post(this.checkUrl, fields, "Could not reach the server.");
  }

  /** An image as a blob: URL (the DOM never holds its address). */
  async image(src) {
    const res = await fetch(src, { credentials: "same-origin", cache: "no-store" });
    if (this.isLoginRedirect(res)) throw new SessionEnded();
    if (!res.ok) throw new HttpError(res.status, null, retryAfterS(res));
    const blob = await res.blob();
    if (!blob.type.startsWith("image/")) throw new HttpError(res.status, null);
    return URL.createObjectURL(blob);
  }

  imageWithRetry(src) {
    return this.withRetry(() => this.image(src), "The image did not load.");
  }
}
