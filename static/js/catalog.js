import { element, getJSON, mountAccount } from "./api.js";

const list = document.getElementById("datasets");
const status = document.getElementById("status");

mountAccount();
try {
  const { datasets } = await getJSON("/api/datasets");
  status.textContent = datasets.length ? "" : "No datasets yet: run `lamella demo` or `lamella import`.";
  for (const dataset of datasets) {
    const modalities = dataset.images.map((image) => image.modality).join(", ");
    list.append(
      element("li", {},
        element("h2", {}, element("a", { href: `/datasets/${dataset.id}` }, dataset.title)),
        element("div", { class: "muted" },
          [dataset.public ? null : "private", dataset.accession, dataset.licence,
            `${dataset.images.length} image(s)`, modalities]
            .filter(Boolean).join(" · ")),
        element("p", {}, dataset.description || "")));
  }
} catch (error) {
  status.textContent = `Could not load the catalog: ${error.message}`;
}
