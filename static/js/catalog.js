// The catalog: one card per dataset (thumbnail, accession, organism, method, size, licence), searched and filtered
// by the server (GET /api/datasets?text=&method=&organism=&accession=); the filters live in the page's address.
import { element, getJSON, mountAccount } from "./api.js";

const list = document.getElementById("datasets");
const status = document.getElementById("status");
const form = document.getElementById("filters");
const FIELDS = ["text", "method", "organism", "accession"];
let asked = 0;  // answers to older requests than the latest are dropped

export function formatBytes(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toPrecision(3)} ${units[unit]}`;
}

function sizeText(size) {
  const extent = size.extent_um ? `${size.extent_um.map((v) => +v.toPrecision(3)).join(" × ")} µm` : null;
  return [extent, size.bytes ? formatBytes(size.bytes) : null].filter(Boolean).join(", ");
}

function card(dataset) {
  const picture = dataset.thumbnail_url
    ? element("img", { src: dataset.thumbnail_url, alt: "", loading: "lazy", class: "thumbnail", width: "96",
      height: "96" })
    : element("div", { class: "thumbnail" });
  const facts = [["Accession", dataset.accession], ["Organism", dataset.organism],
    ["Method", dataset.imaging_method || [...new Set(dataset.images.map((image) => image.modality))].join(", ")],
    ["Size", sizeText(dataset.size)], ["Licence", dataset.licence]];
  const list = element("dl", { class: "card-facts" });
  for (const [label, value] of facts) if (value) list.append(element("dt", {}, label), element("dd", {}, value));
  return element("li", { "data-dataset": dataset.name },
    element("a", { href: `/datasets/${dataset.id}`, class: "thumbnail-link", tabindex: "-1" }, picture),
    element("div", {},
      element("h2", {}, element("a", { href: `/datasets/${dataset.id}` }, dataset.title)),
      dataset.public ? "" : element("div", { class: "muted" }, "private"),
      list,
      element("p", { class: "summary" }, dataset.description || "")));
}

function fillChoices(select, values) {
  const chosen = select.value;
  const first = select.options[0];
  select.replaceChildren(first, ...values.map((value) => element("option", { value }, value)));
  if (chosen && !values.includes(chosen)) select.append(element("option", { value: chosen }, chosen));
  select.value = chosen;
}

function wanted() {
  const query = new URLSearchParams();
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  return query;
}

async function show() {
  const query = wanted();
  const mine = ++asked;
  const { datasets, total, facets } = await getJSON(`/api/datasets${query.size ? `?${query}` : ""}`);
  if (mine !== asked) return;
  fillChoices(form.elements.method, facets.methods);
  fillChoices(form.elements.organism, facets.organisms);
  list.replaceChildren(...datasets.map(card));
  if (!total) status.textContent = "No datasets yet: run `lamella demo` or `lamella import`.";
  else status.textContent = query.size ? `${datasets.length} of ${total} datasets` : `${total} datasets`;
  history.replaceState(null, "", query.size ? `?${query}` : location.pathname);
}

function refresh() {
  show().catch((error) => { status.textContent = `Could not load the catalog: ${error.message}`; });
}

let typing = null;
form.addEventListener("input", (event) => {  // typing: asked once it pauses
  if (event.target.tagName === "SELECT") return;
  clearTimeout(typing);
  typing = setTimeout(refresh, 200);
});
form.addEventListener("change", (event) => {  // a choice (some browsers fire only this for a select)
  if (event.target.tagName === "SELECT") refresh();
});
form.addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
const given = new URLSearchParams(location.search);
for (const name of FIELDS) {
  const value = given.get(name);
  if (!value) continue;
  const field = form.elements[name];
  if (field.tagName === "SELECT") field.append(element("option", { value }, value));
  field.value = value;
}
mountAccount();
refresh();
