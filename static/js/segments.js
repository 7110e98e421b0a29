// The segments of each label image beside the viewer: a table to filter and sort, a row jumps the viewer to
// that segment and selects it (its surface appears in the 3D panel), and the segment selected in the viewer
// (double-click) shows its measures here.
import { element, getJSON, xsrfToken } from "./api.js";

const PAGE = 50;
const POLL_MS = 1000;
const SORTS = [["volume_um3:desc", "largest first"], ["volume_um3:asc", "smallest first"], ["id:asc", "id"],
  ["name:asc", "name"], ["class:asc", "class"]];
const viewerOf = () => document.getElementById("viewer")?.contentWindow?.viewer;
const number = (value, digits = 3) => Number(value).toLocaleString("en", { maximumSignificantDigits: digits });

// Move the view to a segment's centre and select it there, through the session (the server pushes the state
// to the open viewer, as for every other change made beside it).
async function jumpTo(token, layerName, segment) {
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const { state, generation } = await getJSON(`/api/sessions/${token}`);
    const scales = viewerOf()?.coordinateSpace?.value;
    const names = scales?.names || ["x", "y", "z"];
    state.position = names.map((name, axis) => {
      const at = "xyz".indexOf(name);
      const metres = scales?.scales?.[axis] || 1e-9;
      return at < 0 ? (state.position || [])[axis] || 0 : segment.centroid_nm[at] * 1e-9 / metres;
    });
    const layer = (state.layers || []).find((l) => l.name === layerName);
    if (layer) {
      layer.segments = [segment.id];
      layer.visible = true;
    }
    const answer = await fetch(`/api/sessions/${token}`, {
      method: "PUT", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-XSRFToken": xsrfToken() },
      body: JSON.stringify({ state, generation }),
    });
    if (answer.ok) return;
    if (answer.status !== 412) throw new Error((await answer.json().catch(() => ({}))).message || answer.statusText);
  }
}

function describe(segment) {
  const list = element("dl", { class: "segment-facts" });
  const rows = [["Segment", segment.id], ["Name", segment.name], ["Class", segment.class],
    ["Volume", `${number(segment.volume_um3)} µm³ (${segment.voxels.toLocaleString("en")} voxels)`],
    ["Centre", segment.centroid_nm.map((v) => number(v, 5)).join(", ") + " nm"],
    ["Extent", segment.bbox_max_nm.map((v, i) => number(v - segment.bbox_min_nm[i], 4)).join(" × ") + " nm"]];
  for (const [label, value] of rows) if (value) list.append(element("dt", {}, label), element("dd", {}, value));
  return list;
}

function mountOne(container, dataset, image, token) {
  const base = `/api/datasets/${dataset.id}/images/${encodeURIComponent(image.name)}/segments`;
  const filter = element("input", { type: "search", placeholder: "name or class", "aria-label": "filter segments",
    class: "segment-filter" });
  const minimum = element("input", { type: "number", min: "0", step: "any", placeholder: "min µm³",
    "aria-label": "smallest volume", class: "segment-minimum" });
  const sort = element("select", { "aria-label": "order of segments", class: "segment-sort" },
    ...SORTS.map(([value, label]) => element("option", { value }, label)));
  const body = element("tbody");
  const table = element("table", { class: "segment-table" },
    element("thead", {}, element("tr", {}, ...["id", "name", "class", "µm³"].map((h) => element("th", {}, h)))), body);
  const more = element("button", { type: "button", class: "link", hidden: "" }, "more");
  const count = element("p", { class: "muted segment-count" });
  const selected = element("div", { class: "segment-selected" },
    element("p", { class: "muted" }, "Double-click a segment in the viewer, or a row below."));
  const status = element("p", { class: "error", role: "status" });
  const section = element("section", { class: "segments", "data-image": image.name },
    element("h2", {}, `Segments of ${image.name}`), selected,
    element("div", { class: "segment-controls" }, filter, minimum, sort), count, table, more, status);
  container.append(section);
  let offset = 0;
  let generation = 0;

  async function load(append = false) {
    const mine = ++generation;
    const [column, order] = sort.value.split(":");
    const query = new URLSearchParams({ sort: column, order, limit: String(PAGE), offset: String(append ? offset : 0) });
    if (filter.value.trim()) query.set("name", filter.value.trim());
    if (minimum.value) query.set("min_volume_um3", minimum.value);
    try {
      const page = await getJSON(`${base}?${query}`);
      if (mine !== generation) return;
      if (!append) body.replaceChildren();
      for (const segment of page.segments) {
        const row = element("tr", { "data-segment": segment.id, tabindex: "0" },
          element("td", {}, segment.id), element("td", {}, segment.name || ""), element("td", {}, segment.class || ""),
          element("td", {}, number(segment.volume_um3)));
        const go = () => jumpTo(token, image.name, segment).then(() => show(segment),
          (error) => { status.textContent = `Could not go to segment ${segment.id}: ${error.message}`; });
        row.addEventListener("click", go);
        row.addEventListener("keydown", (event) => { if (event.key === "Enter") go(); });
        body.append(row);
      }
      offset = page.next_offset ?? 0;
      more.hidden = page.next_offset === null;
      count.textContent = `${page.total.toLocaleString("en")} segment${page.total === 1 ? "" : "s"}`;
      status.textContent = "";
    } catch (error) {
      if (error.status === 404) section.hidden = true;  // no table for this image (yet)
      else status.textContent = `Could not list segments: ${error.message}`;
    }
  }

  function show(segment) {
    selected.replaceChildren(element("h3", {}, segment.name || `Segment ${segment.id}`), describe(segment));
  }

  let shownId = null;
  async function follow() {  // the viewer's selection of this layer, shown here
    try {
      const layer = viewerOf()?.state?.toJSON()?.layers?.find((l) => l.name === image.name);
      const segments = (layer?.segments || []).filter((s) => !String(s).startsWith("!"));
      const last = segments.length ? String(segments[segments.length - 1]) : null;
      if (last !== shownId) {
        shownId = last;
        if (last === null) {
          selected.replaceChildren(element("p", { class: "muted" }, "Double-click a segment in the viewer, or a row below."));
        } else {
          const found = await getJSON(`${base}?id=${encodeURIComponent(last)}`);
          if (found.segments.length) show(found.segments[0]);
          else selected.replaceChildren(element("p", { class: "muted" }, `Segment ${last} is not in the table.`));
        }
      }
    } catch (error) {
      status.textContent = `Could not show the selected segment: ${error.message}`;
    }
    setTimeout(follow, POLL_MS);
  }

  let typing = null;
  filter.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => load(), 250); });
  minimum.addEventListener("change", () => load());
  sort.addEventListener("change", () => load());
  more.addEventListener("click", () => load(true));
  load();
  setTimeout(follow, POLL_MS);
}

export function mountSegments(container, dataset, token) {
  for (const image of dataset.images) {
    if (image.kind === "segmentation") mountOne(container, dataset, image, token);
  }
}
