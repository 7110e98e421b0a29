// The dataset page: metadata beside an embedded Neuroglancer whose state the server owns.
import { mountAnnotations } from "./annotations.js";
import { element, getJSON, mountAccount } from "./api.js";
import { mountLinks } from "./links.js";
import { mountOverlayControls } from "./overlay.js";
import { mountSegments } from "./segments.js";

const datasetRef = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const status = document.getElementById("status");

function showFacts(dataset) {
  document.title = `Lamella: ${dataset.title}`;
  document.getElementById("title").textContent = dataset.title;
  document.getElementById("crumb").textContent = dataset.name;
  document.getElementById("description").textContent = dataset.description;
  const facts = document.getElementById("facts");
  const visibility = dataset.public ? "public"
    : `private${dataset.release_date ? ` until ${dataset.release_date}` : ""}`;
  const rows = [["Accession", dataset.accession], ["Licence", dataset.licence], ["Dataset", dataset.name],
    ["Visibility", visibility]];
  for (const [label, value] of rows) if (value) facts.append(element("dt", {}, label), element("dd", {}, value));
  const images = document.getElementById("images");
  for (const image of dataset.images) {
    const { x, y, z } = image.shape;
    const v = image.voxel_size_nm;
    images.append(element("li", {}, `${image.name} (${image.modality}): ${x}×${y}×${z} ${image.dtype}, ` +
      `${v.x}×${v.y}×${v.z} nm, ${image.levels.length} levels`));
  }
  const rembi = document.getElementById("rembi");
  for (const [module, fields] of Object.entries(dataset.rembi)) {
    const entries = Object.entries(fields);
    if (!entries.length) continue;
    const list = element("dl");
    for (const [key, value] of entries) {
      list.append(element("dt", {}, key.replaceAll("_", " ")),
        element("dd", {}, Array.isArray(value) ? value.join(", ") : String(value)));
    }
    rembi.append(element("h3", {}, module.replaceAll("_", " ")), list);
  }
}

// The dataset's Citizen Science projects: each links to its volunteers' page (and, for curators, its dashboard).
async function showProjects(dataset) {
  const { projects } = await getJSON(`/api/datasets/${dataset.id}/projects`);
  const list = document.getElementById("projects");
  for (const project of projects) {
    const page = `/datasets/${encodeURIComponent(dataset.name)}/projects/${encodeURIComponent(project.name)}`;
    const item = element("li", { "data-project": project.name },
      element("a", { href: page, class: "project-link" }, project.title),
      element("span", { class: "muted" }, ` · ${project.retired} of ${project.tasks} tasks done` +
        (project.status === "active" ? "" : ` · ${project.status}`)));
    if (dataset.can?.curate) item.append(" · ", element("a", { href: `${page}/dashboard`, class: "dashboard-link" },
      "dashboard"));
    list.append(item);
  }
  document.getElementById("projects-section").hidden = !projects.length;
}

try {
  const me = await mountAccount();
  const dataset = await getJSON(`/api/datasets/${encodeURIComponent(datasetRef)}`);
  showFacts(dataset);
  showProjects(dataset).catch((error) => { status.textContent = `Projects unavailable: ${error.message}`; });
  // Reuse this tab's session so a reload keeps the view; the server holds its state. A session acts
  // with the rights of whoever opened it, so each account (and anonymous) has its own.
  const key = `lamella-session-${dataset.id}-${me.signed_in ? me.name : ""}`;
  let token = sessionStorage.getItem(key);
  // A shared view (/v/{code} redirects here with ?view=): a new session of this reader from its frozen copy.
  const view = new URLSearchParams(location.search).get("view");
  if (view) {
    ({ token } = await getJSON(`/api/datasets/${dataset.id}/sessions?view=${encodeURIComponent(view)}`,
      { method: "POST" }));
    sessionStorage.setItem(key, token);
    history.replaceState(null, "", location.pathname);
  } else if (token) {
    const alive = await fetch(`/api/sessions/${token}`).then((r) => r.ok, () => false);
    if (!alive) token = null;
  }
  if (!token) {
    ({ token } = await getJSON(`/api/datasets/${dataset.id}/sessions`, { method: "POST" }));
    sessionStorage.setItem(key, token);
  }
  const frame = document.getElementById("viewer");
  frame.dataset.token = token;
  frame.src = `/v/${token}/`;
  document.getElementById("viewer-link").href = frame.src;  // the session's own address, to share
  document.getElementById("share").hidden = false;
  const copy = document.getElementById("copy-link");
  const shown = document.getElementById("shared-link");
  copy.addEventListener("click", async () => {
    try {
      const { url } = await getJSON(`/api/sessions/${token}/share`, { method: "POST" });
      shown.value = url;
      shown.hidden = false;
      shown.select();
      await navigator.clipboard?.writeText(url).then(() => { copy.textContent = "Link copied"; }, () => {});
    } catch (error) {
      status.textContent = `Could not share this view: ${error.message}`;
    }
  });
  mountAnnotations(document.getElementById("annotation-panel"), dataset, token, me)
    .catch((error) => { status.textContent = `Annotation layers unavailable: ${error.message}`; });
  mountSegments(document.getElementById("segment-panel"), dataset, token);
  mountLinks(document.getElementById("links"), dataset, token);
  // The viewer works without the side controls: report their failure, not the dataset's.
  mountOverlayControls(document.getElementById("controls"), dataset, token)
    .catch((error) => { status.textContent = `Overlay controls unavailable: ${error.message}`; });
} catch (error) {
  status.textContent = `Could not open the dataset: ${error.message}`;
  document.getElementById("title").textContent = "Dataset unavailable";
}
