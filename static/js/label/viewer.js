// The image viewer: zoom (wheel, + / -), pan (drag), window and level (Shift-drag, sliders,
// presets with W), reset (0), and marks: while marking, a click marks a point and a drag a box,
// in pixels of the image itself at any zoom (the middle button or Alt + drag pans then).
// It shows what it is given and knows nothing of answers.

const MIN_SCALE = 1;
const MAX_SCALE = 12;
const CLICK_PX = 4; // a press that moves less than this (on screen) is a click: a point
const SVG = "http://www.w3.org/2000/svg";
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

// Window presets on the normalised image every reader gets (grey levels 0 to 1, not Hounsfield
// units: radiographs have none): the range [low, high] is stretched over the whole screen.
export const PRESETS = Object.freeze([
  { name: "Default", low: 0, high: 1 },
  { name: "Lung", low: 0, high: 0.55 }, // the dark range: lung fields, vessels, edges of the lung
  { name: "Mediastinum", low: 0.35, high: 0.9 }, // the middle: heart, mediastinum, soft tissue
  { name: "Bone", low: 0.55, high: 1 }, // the bright range: ribs, spine, clavicles, devices
]);

/** The filter's brightness b and contrast c (applied in that order, as apply() writes them) that
 * map grey level `low` to black and `high` to white: (v b - 1/2) c + 1/2. */
export function windowFilter(low, high) {
  const width = high - low;
  return { brightness: 1 / (width + 2 * low), contrast: 1 + (2 * low) / width };
}

export class Viewer {
  /** `enabled()` says whether the image may be moved now (on screen, not paused); `marking()`
   * whether a click or drag marks a region now, handed to `onMark({kind, x0, y0, x1, y1})`; the
   * marks are drawn in `marks`, an <svg> over the image. */
  constructor({
    stage,
    img,
    marks,
    contrastInput,
    brightnessInput,
    zoomReadout,
    resetButton,
    presetButton,
    enabled,
    marking = () => false,
    onMark = () => {},
  }) {
    Object.assign(this, {
      stage,
      img,
      marks,
      contrastInput,
      brightnessInput,
      zoomReadout,
      presetButton,
      enabled,
      marking,
      onMark,
    });
    this.view = { scale: 1, tx: 0, ty: 0, contrast: 1, brightness: 1 };
    this.preset = 0; // index into PRESETS; null once contrast or brightness is changed by hand
    presetButton.addEventListener("click", () => this.nextPreset());
    this.drag = null;
    stage.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    stage.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    stage.addEventListener("mousedown", (e) => e.button === 1 && e.preventDefault()); // no autoscroll
    stage.addEventListener("pointermove", (e) => this.onPointerMove(e));
    stage.addEventListener("pointerup", (e) => this.endDrag(e));
    stage.addEventListener("pointercancel", (e) => this.endDrag(e));
    contrastInput.addEventListener("input", () => {
      this.view.contrast = 2 ** Number(contrastInput.value);
      this.preset = null;
      this.apply();
    });
    brightnessInput.addEventListener("input", () => {
      this.view.brightness = 2 ** Number(brightnessInput.value);
      this.preset = null;
      this.apply();
    });
    resetButton.addEventListener("click", () => this.reset());
    window.addEventListener("resize", () => this.apply());
  }

  apply() {
    const { view, img } = this;
    const rect = this.stage.getBoundingClientRect();
    const maxX = (rect.width * view.scale) / 2;
    const maxY = (rect.height * view.scale) / 2;
    view.tx = view.scale === 1 ? 0 : clamp(view.tx, -maxX, maxX);
    view.ty = view.scale === 1 ? 0 : clamp(view.ty, -maxY, maxY);
    img.style.transform = view.scale === 1 ? "" : `translate(${view.tx}px, ${view.ty}px) scale(${view.scale})`;
    this.marks.style.transform = img.style.transform; // marks move with the image, not its window
    img.style.filter =
      view.contrast === 1 && view.brightness === 1
        ? ""
        : `brightness(${view.brightness.toFixed(4)}) contrast(${view.contrast.toFixed(4)})`;
    // The sliders are in powers of two, so that "unchanged" sits in the middle.
    this.contrastInput.value = String(Math.log2(view.contrast));
    this.brightnessInput.value = String(Math.log2(view.brightness));
    this.contrastInput.setAttribute("aria-valuetext", `${Math.round(view.contrast * 100)}%`);
    this.brightnessInput.setAttribute("aria-valuetext", `${Math.round(view.brightness * 100)}%`);
    this.zoomReadout.textContent = `${Math.round(view.scale * 100)}%`;
    const name = this.preset === null ? "Custom" : PRESETS[this.preset].name;
    this.presetButton.querySelector(".preset-name").textContent = name;
    this.presetButton.setAttribute("aria-label", `Window: ${name}. Next preset`);
  }

  reset() {
    Object.assign(this.view, { scale: 1, tx: 0, ty: 0, contrast: 1, brightness: 1 });
    this.preset = 0;
    this.apply();
  }

  /** The window preset after the current one (Default after a change by hand); zoom and pan stay. */
  nextPreset() {
    this.preset = this.preset === null ? 0 : (this.preset + 1) % PRESETS.length;
    const { low, high } = PRESETS[this.preset];
    Object.assign(this.view, windowFilter(low, high));
    this.apply();
  }

  /** Zoom by `factor` keeping the point (mx, my), relative to the stage centre, in place. */
  zoomAt(factor, mx = 0, my = 0) {
    const { view } = this;
    const scale = clamp(view.scale * factor, MIN_SCALE, MAX_SCALE);
    const k = scale / view.scale;
    view.tx = mx - k * (mx - view.tx);
    view.ty = my - k * (my - view.ty);
    view.scale = scale;
    this.apply();
  }

  zoom(factor) {
    if (this.enabled()) this.zoomAt(factor);
  }

  onWheel(e) {
    if (!this.enabled()) return;
    e.preventDefault();
    const rect = this.stage.getBoundingClientRect();
    const lines = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? rect.height : 1;
    const factor = Math.exp(-e.deltaY * lines * 0.0015);
    this.zoomAt(factor, e.clientX - rect.left - rect.width / 2, e.clientY - rect.top - rect.height / 2);
  }

  /** The image pixel under a point on the screen (clamped to the image), and whether it is on it. */
  imagePoint(clientX, clientY) {
    const { naturalWidth: w, naturalHeight: h } = this.img;
    const rect = this.img.getBoundingClientRect(); // zoom and pan included
    const s = Math.min(rect.width / w, rect.height / h); // object-fit: contain
    const x = (clientX - rect.left - (rect.width - w * s) / 2) / s;
    const y = (clientY - rect.top - (rect.height - h * s) / 2) / s;
    return {
      x: clamp(Math.floor(x), 0, w - 1),
      y: clamp(Math.floor(y), 0, h - 1),
      inside: x >= 0 && x < w && y >= 0 && y < h,
    };
  }

  /** Draw `mark` (the reader's) and `earlier` (an answer's, dashed); either may be null. */
  showMarks(mark, earlier = null) {
    const { marks, img } = this;
    marks.replaceChildren();
    if (!img.naturalWidth) return;
    marks.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
    if (earlier) marks.append(markShape(earlier, "mark is-earlier", img.naturalWidth));
    if (mark) marks.append(markShape(mark, "mark", img.naturalWidth));
  }

  onPointerDown(e) {
    if (!this.enabled() || (e.button !== 0 && e.button !== 1)) return;
    if (e.target !== this.stage && e.target !== this.img && !this.marks.contains(e.target)) return;
    const marking = e.button === 0 && !e.shiftKey && !e.altKey && this.marking();
    const start = marking ? this.imagePoint(e.clientX, e.clientY) : null;
    if (marking && !start.inside) return; // beside the image: nothing to mark
    e.preventDefault();
    this.stage.setPointerCapture(e.pointerId);
    const { view } = this;
    this.drag = {
      id: e.pointerId,
      x: e.clientX,
      y: e.clientY,
      windowing: e.button === 0 && e.shiftKey,
      marking: start,
      tx: view.tx,
      ty: view.ty,
      contrast: view.contrast,
      brightness: view.brightness,
    };
    this.stage.classList.add(marking ? "is-drawing" : this.drag.windowing ? "is-windowing" : "is-panning");
  }

  /** The region a marking drag ends on: a point for a click, else the box between its corners. */
  dragMark(e, drag = this.drag) {
    const start = drag.marking;
    if (Math.hypot(e.clientX - drag.x, e.clientY - drag.y) < CLICK_PX) {
      return { kind: "point", x0: start.x, y0: start.y, x1: start.x, y1: start.y };
    }
    const end = this.imagePoint(e.clientX, e.clientY);
    return {
      kind: "box",
      x0: Math.min(start.x, end.x),
      y0: Math.min(start.y, end.y),
      x1: Math.max(start.x, end.x),
      y1: Math.max(start.y, end.y),
    };
  }

  onPointerMove(e) {
    const { drag, view } = this;
    if (!drag || e.pointerId !== drag.id) return;
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    if (drag.marking) {
      const mark = this.dragMark(e);
      if (mark.kind === "box") this.showMarks(mark); // the box as it is drawn
      return;
    }
    if (drag.windowing) {
      view.contrast = clamp(drag.contrast * 2 ** (dx / 150), 2 ** -2, 2 ** 2);
      view.brightness = clamp(drag.brightness * 2 ** (-dy / 150), 2 ** -1.5, 2 ** 1.5);
      this.preset = null;
    } else {
      view.tx = drag.tx + dx;
      view.ty = drag.ty + dy;
    }
    this.apply();
  }

  endDrag(e) {
    const { drag } = this;
    if (!drag || e.pointerId !== drag.id) return;
    this.drag = null;
    this.stage.classList.remove("is-windowing", "is-panning", "is-drawing");
    if (drag.marking && e.type === "pointerup") this.onMark(this.dragMark(e, drag));
  }
}

/** A point (a ring, sized to the image) or a box, in image pixels; strokes keep their width at any zoom. */
function markShape(mark, className, side) {
  let shape;
  if (mark.kind === "point") {
    shape = document.createElementNS(SVG, "circle");
    shape.setAttribute("cx", String(mark.x0 + 0.5));
    shape.setAttribute("cy", String(mark.y0 + 0.5));
    shape.setAttribute("r", String(Math.max(4, side / 40)));
  } else {
    shape = document.createElementNS(SVG, "rect");
    shape.setAttribute("x", String(mark.x0));
    shape.setAttribute("y", String(mark.y0));
    shape.setAttribute("width", String(mark.x1 - mark.x0 + 1));
    shape.setAttribute("height", String(mark.y1 - mark.y0 + 1));
  }
  shape.setAttribute("class", className);
  shape.setAttribute("vector-effect", "non-scaling-stroke");
  return shape;
}
