// Overlay controls and in-viewer landmark registration. The server owns the viewer state:
// every control posts a change, and the embedded Neuroglancer receives it by state sync.
import { element, getJSON, postJSON as post } from "./api.js";

function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function layerControls(token, layer, isReference, report) {
  const name = layer.name;
  const controls = layer.shaderControls || {};
  const [low, high] = controls.normalized?.range || [0, 255];
  // Changes within the debounce window are merged, so a quick colour-then-opacity keeps both.
  let pending = {};
  const flush = debounce(() => {
    const settings = pending;
    pending = {};
    post(`/api/sessions/${token}/display`, { layers: { [name]: settings } })
      .then(() => report(""), (error) => report(error.message));
  }, 150);
  const send = (settings) => { pending = { ...pending, ...settings }; flush(); };
  const visible = element("input", { type: "checkbox", "aria-label": `show ${name}` });
  visible.checked = layer.visible !== false;
  visible.addEventListener("change", () => send({ visible: visible.checked }));
  const row = element("div", { class: "overlay-layer", "data-layer": name },
    element("label", { class: "layer-name" }, visible, ` ${name}`));
  if (!isReference) {
    const colour = element("input", { type: "color", value: controls.color || "#00ff00", "aria-label": `${name} colour` });
    colour.addEventListener("input", () => send({ colour: colour.value }));
    const opacity = element("input", { type: "range", min: "0", max: "1", step: "0.05",
      value: String(layer.opacity ?? 1), "aria-label": `${name} opacity` });
    opacity.addEventListener("input", () => send({ opacity: Number(opacity.value) }));
    row.append(element("label", {}, "colour ", colour), element("label", {}, "opacity ", opacity));
  }
  const lowInput = element("input", { type: "number", value: String(low), step: "any", "aria-label": `${name} window low` });
  const highInput = element("input", { type: "number", value: String(high), step: "any", "aria-label": `${name} window high` });
  const sendWindow = () => {
    const range = [Number(lowInput.value), Number(highInput.value)];
    if (range[0] < range[1]) send({ window: range }); else report("the window needs low < high");
  };
  lowInput.addEventListener("change", sendWindow);
  highInput.addEventListener("change", sendWindow);
  row.append(element("label", { class: "window" }, "window ", lowInput, " – ", highInput));
  return row;
}

function residualTable(result) {
  const table = element("table", { class: "residuals" },
    element("tr", {}, element("th", {}, "pair"), element("th", {}, "residual (nm)"), element("th", {}, "px")));
  const show = (value, digits) => (value == null ? "n/a" : value.toFixed(digits));
  for (const row of result.landmarks) {
    table.append(element("tr", {}, element("td", {}, row.name),
      element("td", {}, show(row.residual_nm, 1)), element("td", {}, show(row.residual_px, 2))));
  }
  return table;
}

const neuroglancer = () => document.getElementById("viewer")?.contentWindow?.viewer;

function pointCounts(state, names) {
  return names.map((name) => {
    const layer = (state.layers || []).find((l) => l.name === `${name} landmarks`);
    return (layer?.annotations || []).length;
  }).join(",");
}

// The viewer sends its state a moment after a change: before fitting, wait until the server
// holds the same landmark points as the viewer shows.
async function pointsSynced(token, names) {
  const viewer = neuroglancer();
  if (!viewer) return;
  const want = pointCounts(viewer.state.toJSON(), names);
  for (let attempt = 0; attempt < 30; attempt += 1) {
    const { state } = await getJSON(`/api/sessions/${token}`);
    if (pointCounts(state, names) === want) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export async function mountOverlayControls(container, dataset, token) {
  const pictures = dataset.images.filter((image) => image.kind === "image");
  if (pictures.length < 2) return;
  const reference = dataset.reference_image;
  const status = element("p", { class: "overlay-status", role: "status" });
  const report = (message) => { status.textContent = message; };
  const { state } = await getJSON(`/api/sessions/${token}`);
  const section = element("section", { id: "overlay" }, element("h2", {}, "Overlay"));
  const layout = element("select", { "aria-label": "layout" },
    ...[["4panel", "4 panels"], ["xy", "overlay (xy)"], ["side-by-side", "side by side, linked"]]
      .map(([value, label]) => element("option", { value }, label)));
  layout.value = typeof state.layout === "string" ? state.layout : "side-by-side";
  if (!layout.value) layout.value = "4panel";
  layout.addEventListener("change", () => post(`/api/sessions/${token}/display`, { layout: layout.value })
    .then(() => report(""), (error) => report(error.message)));
  section.append(element("label", {}, "layout ", layout));
  for (const layer of state.layers.filter((l) => l.type === "image")) {
    section.append(layerControls(token, layer, layer.name === reference, report));
  }

  // Transforms: how each modality is placed, and landmark registration in the viewer.
  const moving = pictures.filter((image) => image.name !== reference);
  const transforms = element("dl", { id: "transforms" });
  async function showTransforms() {
    transforms.replaceChildren();
    for (const image of moving) {
      const t = await getJSON(image.transform_url);
      const how = t.method ? `${t.kind} (${t.method}${t.rms_nm != null ? `, RMS ${t.rms_nm.toFixed(1)} nm` : ""})`
        : "identity (no transform stored)";
      transforms.append(element("dt", {}, image.name), element("dd", {}, how, " ",
        element("a", { href: `${image.transform_url}?format=mobie`, download: `${image.name}-mobie.json` }, "MoBIE"),
        " ", element("a", { href: `${image.transform_url}?format=json`, download: `${image.name}-transform.json` }, "JSON")));
    }
  }
  const pickers = element("div", { class: "register", id: "landmark-pickers" });
  const target = element("select", { "aria-label": "image to register" },
    ...moving.map((image) => element("option", { value: image.name }, image.name)));
  target.addEventListener("change", () => pickers.replaceChildren());  // "Place landmarks" again
  const fit = element("select", { "aria-label": "fit" },
    ...["affine", "similarity", "rigid", "tps"].map((kind) => element("option", { value: kind }, kind)));
  const start = element("button", { type: "button", id: "place-landmarks" }, "Place landmarks");
  const preview = element("button", { type: "button", id: "fit-landmarks" }, "Fit");
  const save = element("button", { type: "button", id: "save-landmarks" }, "Fit and save");
  const results = element("div", { id: "registration-result" });
  const help = element("p", { class: "muted" },
    `Place landmarks, then with "Points on ${reference}" ctrl+click features in ${reference}, and with the other `,
    "button ctrl+click the same features in the overlay, in the same order (at least 3 pairs; 4 in 3D). ",
    "Fit shows each pair's residual; Fit and save stores the transform and moves the overlay.");
  // Selecting a layer happens in the viewer itself: a server-side change could overtake points
  // the viewer has placed but not yet sent, and replace them.
  const pick = async (name) => {
    const viewer = neuroglancer();
    const layer = viewer?.layerManager.getLayerByName(`${name} landmarks`);
    if (!layer) {
      await post(`/api/sessions/${token}/display`, { select: `${name} landmarks` });
    } else {
      viewer.selectedLayer.layer = layer;
      viewer.selectedLayer.visible = true;
    }
    report(`ctrl+click in the viewer to place a point on ${name}`);
  };
  start.addEventListener("click", () => post(`/api/sessions/${token}/landmark-layers`, { image: target.value })
    .then(() => {
      pickers.replaceChildren(...[reference, target.value].map((name) => {
        const button = element("button", { type: "button", "data-pick": name }, `Points on ${name}`);
        button.addEventListener("click", () => pick(name).catch((error) => report(error.message)));
        return button;
      }));
      return pick(reference);
    }).catch((error) => report(error.message)));
  const register = (saveIt) => pointsSynced(token, [reference, target.value])
    .then(() => post(`/api/sessions/${token}/register`, { image: target.value, fit: fit.value, save: saveIt }))
    .then(async (result) => {
      const rms = result.rms_nm == null ? "RMS not measurable" : `RMS ${result.rms_nm.toFixed(1)} nm`;
      results.replaceChildren(element("p", {}, `${saveIt ? "Saved" : "Preview"}: ${rms}`), residualTable(result));
      report("");
      if (saveIt) await showTransforms();
    }).catch((error) => report(error.message));
  preview.addEventListener("click", () => register(false));
  save.addEventListener("click", () => register(true));
  section.append(element("h2", {}, "Registration"), transforms,
    element("div", { class: "register" }, target, fit, start, preview, save), pickers, help, results, status);
  container.append(section);
  await showTransforms().catch((error) => report(error.message));
}
