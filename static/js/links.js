// Standards out: copy-ready links and snippets for every image and annotation layer of the dataset, for other
// viewers and for code (any Neuroglancer, vizarr, napari, tensorstore, zarr-python), and the metadata exports.
// Built in a collapsed <details> of the side panel when it is opened (the viewer's frame never moves), from the
// dataset's description, its annotation layers and the view this page's session shows now.
import { element, getJSON } from "./api.js";

// Neuroglancer's grey ramp between the image's window (viewer/state.py GREY_SHADER: the archives' EM shader).
export const GREY_SHADER = "#uicontrol invlerp normalized\nvoid main() {\n  emitGrayscale(normalized());\n}\n";
const VIEW_KEYS = ["dimensions", "position", "crossSectionOrientation", "crossSectionScale", "projectionOrientation",
  "projectionScale", "layout"];
const PUBLIC_NEUROGLANCER = "https://neuroglancer-demo.appspot.com/";

const httpOf = (url) => url.replace(/^[a-z0-9]+:\/\/(?=https?:)/, "");  // zarr3://http://… → http://…

export function annotationSources(dataset, layer) {
  return layer.spec.types.map((kind) => `precomputed://${location.origin}/api/datasets/${dataset.id}` +
    `/annotation-layers/${layer.id}/precomputed/${kind}/current`);
}

function defaultView(dataset) {
  const reference = dataset.images.find((image) => image.name === dataset.reference_image) || dataset.images[0];
  if (!reference) return { layout: "4panel" };
  const { x, y, z } = reference.shape;
  const v = reference.voxel_size_nm;
  return { dimensions: { x: [v.x * 1e-9, "m"], y: [v.y * 1e-9, "m"], z: [v.z * 1e-9, "m"] },
    position: [x / 2, y / 2, z / 2], crossSectionScale: Math.max(x, y) / 700,
    projectionScale: Math.max(x, y, z) * 1.6, layout: z > 1 ? "4panel" : "xy" };
}

function imageLayer(image, fromSession, zarr) {
  const source = zarr ? `${httpOf(image.urls.zarr)}|zarr${image.zarr_format}:` : image.urls.precomputed;
  if (!zarr && fromSession) {  // placed, coloured and windowed as this view shows it
    const { tab: _panelTab, ...layer } = fromSession;  // which tab of its panel was open: not the view
    if (layer.type === "image" && !layer.shader) layer.shader = GREY_SHADER;  // Neuroglancer's state omits its default
    return { ...layer, name: image.name };
  }
  if (image.kind === "segmentation") return { type: "segmentation", name: image.name, source, segments: [] };
  return { type: "image", name: image.name, source, shader: GREY_SHADER,
    shaderControls: { normalized: { range: image.window } } };
}

// A viewer state any Neuroglancer opens: every image (precomputed sources, placed as Lamella places them; or, with
// ``zarr``, the OME-Zarr sources of the images in the reference space) and every annotation layer, in this view.
export function neuroglancerState(dataset, layers, session, zarr = false) {
  const state = defaultView(dataset);
  for (const key of VIEW_KEYS) if (session?.[key] !== undefined) state[key] = session[key];
  const sessionLayers = new Map((session?.layers || []).map((layer) => [layer.name, layer]));
  state.layers = [];
  for (const image of dataset.images) {
    const fromSession = sessionLayers.get(image.name);
    if (zarr && fromSession && typeof fromSession.source !== "string") continue;  // placed by a transform
    state.layers.push(imageLayer(image, fromSession, zarr));
  }
  for (const layer of layers) {
    const colour = layer.spec.labels.find((label) => label.color)?.color;
    state.layers.push({ type: "annotation", name: layer.name, source: annotationSources(dataset, layer),
      ...(colour ? { annotationColor: colour } : {}) });
  }
  const reference = dataset.reference_image || dataset.images[0]?.name;
  if (reference) state.selectedLayer = { layer: reference };
  return state;
}

export function viewerUrl(base, state) {
  return `${base}#!${encodeURIComponent(JSON.stringify(state))}`;
}

function snippet(name, text, rows = 1) {
  const area = element("textarea", { readonly: "", rows: String(rows), spellcheck: "false", "data-snippet": name,
    "aria-label": name });
  area.value = text;
  const copy = element("button", { type: "button", class: "copy" }, "Copy");
  copy.addEventListener("click", async () => {
    area.select();
    const done = await navigator.clipboard?.writeText(text).then(() => true, () => false);
    if (!done) document.execCommand?.("copy");
    copy.textContent = "Copied";
    setTimeout(() => { copy.textContent = "Copy"; }, 1500);
  });
  return element("div", {}, element("span", { class: "name" }, name), element("div", { class: "snippet" }, area, copy));
}

function imageSnippets(image) {
  const zarr = httpOf(image.urls.zarr);
  const level = image.levels[0]?.path ?? "0";
  const driver = image.zarr_format === 3 ? "zarr3" : "zarr";
  return element("section", { "data-image": image.name },
    element("h3", {}, `${image.name} (${image.modality}, ${image.kind})`),
    snippet("Neuroglancer source (precomputed)", image.urls.precomputed),
    snippet(`Neuroglancer source (OME-Zarr)`, `${zarr}|zarr${image.zarr_format}:`),
    snippet("OME-Zarr URL", zarr),
    element("p", {}, element("a", { href: `https://hms-dbmi.github.io/vizarr/?source=${encodeURIComponent(zarr)}`,
      target: "_blank", rel: "noopener", "data-link": "vizarr" }, "Open in vizarr")),
    snippet("napari", `napari --plugin napari-ome-zarr ${zarr}`),
    snippet("Python: tensorstore", `import tensorstore as ts\n\nlevel0 = ts.open({"driver": "${driver}", ` +
      `"kvstore": "${zarr}${level}/"}).result()\nprint(level0.shape)  # z, y, x\nslab = level0[0].read().result()`, 4),
    snippet("Python: zarr", `import zarr  # zarr-python 3, with fsspec and aiohttp for HTTP\n\n` +
      `image = zarr.open_group("${zarr}", mode="r")\nlevel0 = image["${level}"]\nprint(level0.shape)  # z, y, x`, 4));
}

function layerSnippets(dataset, layer) {
  const base = `/api/datasets/${dataset.id}/annotation-layers/${layer.id}`;
  return element("section", { "data-annotation-layer": layer.name },
    element("h3", {}, `${layer.name} (annotations: ${layer.spec.types.join(", ")})`),
    ...annotationSources(dataset, layer).map((url, i) => snippet(`Neuroglancer source (${layer.spec.types[i]})`,
      url)),
    element("p", {}, "Export: ",
      element("a", { href: `${base}/export?format=mifa`, "data-link": "mifa" }, "MIFA record"), " · ",
      element("a", { href: `${base}/export?format=ng-json` }, "Neuroglancer JSON"), " · ",
      element("a", { href: `${base}/export?format=csv` }, "CSV"), " · ",
      element("a", { href: `${base}/export?format=precomputed-zip` }, "precomputed (zip, with MIFA)")));
}

export function mountLinks(container, dataset, token) {
  const body = element("div", { id: "links-body" });
  const details = element("details", { id: "standard-links", class: "standard-links" },
    element("summary", {}, "Open elsewhere, and code"), body);
  container.append(details);
  async function build() {
    const [{ layers }, session] = await Promise.all([
      getJSON(`/api/datasets/${dataset.id}/annotation-layers`).catch(() => ({ layers: [] })),
      token ? getJSON(`/api/sessions/${token}`).then((s) => s.state, () => null) : null]);
    const state = neuroglancerState(dataset, layers, session);
    const zarrState = neuroglancerState(dataset, [], session, true);
    const own = token ? element("a", { href: viewerUrl(`${location.origin}/v/${token}/`, state), target: "_blank",
      rel: "noopener", id: "open-state" }, "in this server's Neuroglancer") : null;
    const elsewhere = dataset.public ? element("a", { href: viewerUrl(PUBLIC_NEUROGLANCER, state), target: "_blank",
      rel: "noopener" }, "in the public Neuroglancer") : null;
    body.replaceChildren(
      element("p", { class: "muted" }, dataset.public ? "Links to this public dataset work from any site."
        : "This dataset is private: these links work only where you are signed in."),
      element("p", {}, element("a", { href: `/api/datasets/${dataset.id}/metadata?format=rembi`,
        "data-link": "rembi" }, "Metadata (REMBI JSON)")),
      element("h3", {}, "Neuroglancer state (this view)"),
      snippet("Neuroglancer state, precomputed sources", JSON.stringify(state, null, 1), 6),
      element("p", {}, "Open it ", ...[own, elsewhere].filter(Boolean).flatMap((link, i) => (i ? [" or ", link]
        : [link])), "; or paste it into any Neuroglancer (its {} button)."),
      snippet("Neuroglancer state, OME-Zarr sources", JSON.stringify(zarrState, null, 1), 4),
      ...dataset.images.map(imageSnippets),
      ...layers.map((layer) => layerSnippets(dataset, layer)));
  }
  details.addEventListener("toggle", () => {
    if (details.open) build().catch((error) => { body.textContent = `Links unavailable: ${error.message}`; });
  });
}
