// The simplex widget: for a file with exactly 3 rewards, a triangle with the reward names at its corners. Dragging
// its handle writes barycentric weights (summing to 1) into the three sliders, which stay the only stored value:
// the triangle is never serialized and comes after every input widget, so the positional widgets_values of saved
// workflows and the queued prompt are the same with or without it. ComfyUI also loads this file as an extension
// of its own (it imports every .js of the pack); it registers nothing by itself.
import { app } from "../../../scripts/app.js";

const WIDGET_TYPE = "pareto_simplex";
const HEIGHT = 200;
const PAD = { side: 12, top: 22, bottom: 22 }; // room for the corner names
const HANDLE_RADIUS = 6;
const HANDLE_COLOR = "#3d8fe0";

// The sliders' step: written weights are hundredths that sum to exactly 1.
const STEPS = 100;

/** Corners (reward 1 at the top, 2 bottom left, 3 bottom right) of the largest equilateral triangle that fits. */
export function corners(width, height) {
  const side = Math.min(width - 2 * PAD.side, ((height - PAD.top - PAD.bottom) * 2) / Math.sqrt(3));
  const h = (side * Math.sqrt(3)) / 2;
  const top = PAD.top + (height - PAD.top - PAD.bottom - h) / 2;
  const x = width / 2;
  return [[x, top], [x - side / 2, top + h], [x + side / 2, top + h]];
}

function barycentric([a, b, c], [x, y]) {
  const det = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1]);
  const l1 = ((b[1] - c[1]) * (x - c[0]) + (c[0] - b[0]) * (y - c[1])) / det;
  const l2 = ((c[1] - a[1]) * (x - c[0]) + (a[0] - c[0]) * (y - c[1])) / det;
  return [l1, l2, 1 - l1 - l2];
}

/** Euclidean projection onto the probability simplex (Duchi et al. 2008). The triangle is equilateral, so this is
 * also the nearest point of the drawn triangle: dragging outside it follows its edge or sticks to a corner. */
function projectToSimplex(v) {
  const sorted = [...v].sort((p, q) => q - p);
  let sum = 0;
  let theta = 0;
  sorted.forEach((u, i) => {
    sum += u;
    if (u - (sum - 1) / (i + 1) > 0) theta = (sum - 1) / (i + 1);
  });
  return v.map((u) => Math.max(u - theta, 0));
}

/** Largest-remainder rounding to the sliders' step, so that the three sliders sum to exactly 1. */
function toSteps(w) {
  const scaled = w.map((u) => u * STEPS);
  const steps = scaled.map(Math.floor);
  const left = STEPS - steps.reduce((p, q) => p + q, 0);
  const byRemainder = scaled.map((u, i) => [u - steps[i], i]).sort((p, q) => q[0] - p[0]);
  for (const [, i] of byRemainder.slice(0, left)) steps[i] += 1;
  return steps.map((s) => s / STEPS);
}

function cssColor(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

function paint(canvas, names, weights, title) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  const [a, b, c] = corners(width, height);
  ctx.beginPath();
  ctx.moveTo(...a);
  ctx.lineTo(...b);
  ctx.lineTo(...c);
  ctx.closePath();
  ctx.fillStyle = cssColor("--comfy-input-bg", "#222");
  ctx.fill();
  ctx.strokeStyle = cssColor("--border-color", "#4e4e4e");
  ctx.lineWidth = 1;
  ctx.stroke();

  ctx.fillStyle = cssColor("--input-text", "#ddd");
  ctx.font = "12px Arial, sans-serif";
  ctx.textAlign = "center";
  ctx.textBaseline = "bottom";
  ctx.fillText(names[0], a[0], a[1] - 4, width - 4);
  ctx.textBaseline = "top";
  // under their corners, pushed inwards where a long name would run off the widget
  const half = (name) => Math.min(ctx.measureText(name).width, width / 2 - 4) / 2;
  ctx.fillText(names[1], Math.max(b[0], half(names[1]) + 2), b[1] + 4, width / 2 - 4);
  ctx.fillText(names[2], Math.min(c[0], width - half(names[2]) - 2), c[1] + 4, width / 2 - 4);
  if (title) {
    ctx.textAlign = "left";
    ctx.fillText(title, 2, 2);
  }

  const total = weights.reduce((p, q) => p + q, 0);
  if (!(total > 0)) return; // all-zero weights are a node error: no point to show
  const [x, y] = [0, 1].map((k) => (weights[0] * a[k] + weights[1] * b[k] + weights[2] * c[k]) / total);
  ctx.beginPath();
  ctx.arc(x, y, HANDLE_RADIUS, 0, 2 * Math.PI);
  ctx.fillStyle = HANDLE_COLOR;
  ctx.fill();
  ctx.strokeStyle = "#fff";
  ctx.stroke();
}

function addSimplex(node, prefix, names) {
  const sliders = [1, 2, 3].map((i) => node.widgets.find((w) => w.name === `${prefix}${i}`));
  const canvas = document.createElement("canvas");
  canvas.style.touchAction = "none";
  canvas.style.cursor = "crosshair";
  const title = prefix.replace(/_?w$/, "");
  let painted = "";
  const widget = node.addDOMWidget(`simplex_${prefix}`, WIDGET_TYPE, canvas, {
    serialize: false,
    // the 1.27 frontend lays out hidden widgets too: a hidden triangle takes no room
    getMinHeight: () => (widget.hidden ? 0 : HEIGHT),
    getMaxHeight: () => (widget.hidden ? 0 : HEIGHT),
    // called on every canvas frame that draws the node: repaint only when a slider, the names or the size changed
    onDraw: () => {
      const weights = sliders.map((w) => Number(w.value));
      const key = JSON.stringify([widget.names, weights, canvas.clientWidth, canvas.clientHeight]);
      if (key === painted || !canvas.clientWidth) return;
      painted = key;
      paint(canvas, widget.names, weights, title);
    },
  });
  widget.serialize = false; // LGraphNode.serialize/configure read this one, graphToPrompt the option
  widget.names = names;

  const drag = (event) => {
    const rect = canvas.getBoundingClientRect();
    const scale = canvas.clientWidth / rect.width; // the element is CSS-scaled with the canvas zoom
    const point = [(event.clientX - rect.left) * scale, (event.clientY - rect.top) * scale];
    const weights = toSteps(projectToSimplex(barycentric(corners(canvas.clientWidth, canvas.clientHeight), point)));
    sliders.forEach((w, i) => w.setValue(weights[i], { node, canvas: app.canvas }));
    node.setDirtyCanvas(true, true);
  };
  // no preventDefault: the compatibility mouseup is what ComfyUI's change tracker (undo, "modified") listens to
  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    canvas.setPointerCapture(event.pointerId);
    drag(event);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (canvas.hasPointerCapture(event.pointerId)) drag(event);
  });
}

/** Show the triangles (one per slider group: w1.., or start_w1.. and end_w1..) when the file has exactly 3 rewards,
 * hide them otherwise. Hidden rather than removed: a DOM widget stays registered with the node's onAdded hook. */
export function syncSimplex(node, names) {
  const show = names?.length === 3;
  const prefixes = (node.widgets ?? []).map((w) => /^((?:[a-z]+_)?w)1$/.exec(w.name)?.[1]).filter(Boolean);
  for (const prefix of prefixes) {
    const widget = node.widgets.find((w) => w.name === `simplex_${prefix}`);
    if (widget) {
      widget.hidden = !show;
      if (show) widget.names = names;
    } else if (show) {
      addSimplex(node, prefix, names);
    }
  }
}
