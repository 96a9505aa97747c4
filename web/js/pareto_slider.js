// ParetoSlider web extension: names each weight slider after its reward and hides the sliders the chosen file
// does not use (setting them to 0, which the nodes require); for 3 rewards it adds a triangle to drag (simplex.js).
// Optional: without it the graph still runs, the sliders are just called w1..w8.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { syncSimplex } from "./simplex.js";

const EXTENSION = "ParetoSlider.RewardSliders";
const NODE_IDS = new Set(["ParetoSliderApply", "ParetoSliderSweep", "ParetoSliderSchedule", "ParetoSliderRegional"]);
const SLIDER = /^(?:(start|end|inside|outside)_)?w(\d+)$/;
const ROUTE = "/pareto_slider/rewards";

async function rewardNames(file) {
  if (!file) return null;
  const response = await api.fetchApi(`${ROUTE}?file=${encodeURIComponent(file)}`);
  if (!response.ok) return null;
  return (await response.json()).reward_names;
}

async function relabel(node) {
  const fileWidget = node.widgets?.find((w) => w.name === "file");
  const file = fileWidget?.value;
  const names = await rewardNames(file);
  if (fileWidget?.value !== file) return; // the file changed while we waited; its own relabel wins
  for (const widget of node.widgets ?? []) {
    const match = SLIDER.exec(widget.name);
    if (!match) continue;
    const index = Number(match[2]) - 1;
    const used = names ? index < names.length : true;
    const reward = names?.[index] ?? widget.name;
    widget.label = match[1] ? `${match[1]}: ${reward}` : reward;
    widget.hidden = !used;
    // the 1.27 frontend lays out hidden widgets too: zero height keeps the widgets after them (the triangle, the
    // applied weights) right below the used sliders
    if (used) {
      delete widget.computeSize;
    } else {
      widget.computeSize = () => [0, -4];
      widget.value = 0;
    }
  }
  syncSimplex(node, names);
  node.setSize([node.size[0], node.computeSize()[1]]);
  node.setDirtyCanvas(true, true);
}

function showApplied(node, output) {
  const text = output?.text?.join("\n");
  if (!text) return;
  let widget = node.widgets?.find((w) => w.name === "applied_weights");
  if (!widget) {
    widget = node.addWidget("text", "applied_weights", "", () => {}, { serialize: false });
    widget.serialize = false;
    widget.disabled = true;
  }
  widget.value = text;
  node.setDirtyCanvas(true, true);
}

if (!app.extensions?.some((e) => e.name === EXTENSION)) {
  app.registerExtension({
    name: EXTENSION,
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (!NODE_IDS.has(nodeData.name)) return;
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        const fileWidget = this.widgets?.find((w) => w.name === "file");
        if (fileWidget) {
          const callback = fileWidget.callback;
          fileWidget.callback = (...args) => {
            const out = callback?.apply(fileWidget, args);
            relabel(this);
            return out;
          };
        }
        relabel(this);
        return result;
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        const result = onConfigure?.apply(this, arguments);
        relabel(this);
        return result;
      };
      const onExecuted = nodeType.prototype.onExecuted;
      nodeType.prototype.onExecuted = function (output) {
        const result = onExecuted?.apply(this, arguments);
        showApplied(this, output);
        return result;
      };
    },
  });
}
