// The dataset's annotation layers beside the viewer: the list (and a form to make one), drawing tools,
// the selected annotation's label, description and properties, and what could not be saved.
//
// Each layer is in the viewer twice: its saved annotations (read from the server, cell by cell) under the
// layer's name, and, for whoever may annotate, an edit layer "name ✎" where Neuroglancer's own tools draw.
// The server saves what an edit layer changes as it receives the viewer's state; this panel only shows it.
import { element, getJSON } from "./api.js";

const TOOLS = { point: "annotatePoint", line: "annotateLine", axis_aligned_bounding_box: "annotateBoundingBox",
  ellipsoid: "annotateSphere", polyline: "annotatePolyline" };
const TYPE_LABELS = { point: "point", line: "line", axis_aligned_bounding_box: "box", ellipsoid: "ellipsoid",
  polyline: "polyline" };
const PROPERTY_TYPES = ["float32", "uint8", "int8", "uint16", "int16", "uint32", "int32", "rgb", "rgba"];
const COPY_ID = /^db-([1-9][0-9]*)$/;
const POLL_MS = 1500;

const viewerOf = () => document.getElementById("viewer")?.contentWindow?.viewer;
const sendJSON = (method, url, body) => getJSON(url, {
  method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
});

// Neuroglancer's JSON of an annotation (nanometres, as the edit layers are) from a stored record.
function neuroglancerJson(record, id) {
  const json = { type: record.type, id, description: record.description || undefined };
  if (record.type === "point") json.point = record.point;
  else if (record.type === "ellipsoid") Object.assign(json, { center: record.center, radii: record.radii });
  else if (record.type === "polyline") json.points = record.points;
  else Object.assign(json, { pointA: record.point_a, pointB: record.point_b });
  return json;
}

function geometryOf(record) {
  const fields = { point: ["point"], line: ["point_a", "point_b"], axis_aligned_bounding_box: ["point_a", "point_b"],
    ellipsoid: ["center", "radii"], polyline: ["points"] }[record.type];
  return Object.fromEntries(fields.map((name) => [name, record[name]]));
}

export async function mountAnnotations(container, dataset, token, me) {
  const can = dataset.can || { annotate: false, curate: false };
  const base = `/api/datasets/${dataset.id}/annotation-layers`;
  const list = element("ul", { id: "layer-list", class: "layer-list" });
  const status = element("p", { id: "annotation-status", role: "status", class: "error" });
  const unsavedBox = element("div", { id: "unsaved", class: "unsaved", "aria-live": "polite" });
  const details = element("div", { id: "selected-annotation" },
    element("p", { class: "muted" }, "Ctrl+right-click an annotation in the viewer to see it here."));
  const section = element("section", { id: "annotations" }, element("h2", {}, "Annotation layers"), list);
  container.append(section);
  const report = (message) => { status.textContent = message; };

  let layers = [];  // the dataset's layers, with their declarations
  let session = { layers: [], saved: {}, unsaved: [], problems: [] };  // what this session saves
  let dismissed = Number(sessionStorage.getItem(`lamella-problems-${token}`) || 0);

  function renderList() {
    list.replaceChildren();
    if (!layers.length) list.append(element("li", { class: "muted" }, "No annotation layers yet."));
    for (const layer of layers) {
      const shown = session.layers.find((l) => l.layer_id === layer.id);
      const types = layer.spec.types.map((type) => TYPE_LABELS[type]).join(", ");
      const item = element("li", { "data-layer-id": String(layer.id) },
        element("strong", {}, layer.name), ` (${types})`);
      if (layer.description) item.append(element("div", { class: "muted" }, layer.description));
      if (shown?.edit_layer) {
        const tools = element("div", { class: "tools" }, "Draw: ");
        for (const type of layer.spec.types) {
          const button = element("button", { type: "button", "data-draw": type, "data-layer": shown.edit_layer },
            TYPE_LABELS[type]);
          button.addEventListener("click", () => draw(shown.edit_layer, type));
          tools.append(button);
        }
        item.append(tools);
      }
      list.append(item);
    }
  }

  // Choose the edit layer and one of Neuroglancer's tools in the viewer itself: then ctrl+click draws.
  function draw(name, type) {
    const viewer = viewerOf();
    const managed = viewer?.layerManager.getLayerByName(name);
    if (!managed) { report(`the viewer has no layer ${name}`); return; }
    managed.layer.tool.restoreState(TOOLS[type]);
    viewer.selectedLayer.layer = managed;
    viewer.selectedLayer.visible = true;
    report(`ctrl+click in the viewer to place a ${TYPE_LABELS[type]}` +
      (type === "point" ? "" : " (a second ctrl+click finishes it)"));
  }

  function renderUnsaved() {
    unsavedBox.replaceChildren();
    for (const item of session.unsaved) {
      unsavedBox.append(element("p", { class: "error", "data-unsaved": item.annotation }, `Not saved: ${item.message}`));
    }
    const fresh = session.problems.filter((p) => p.seq > dismissed && !session.unsaved.some((u) => u.message === p.message));
    if (fresh.length) {
      const dismiss = element("button", { type: "button", class: "link" }, "dismiss");
      dismiss.addEventListener("click", () => {
        dismissed = Math.max(...session.problems.map((p) => p.seq));
        sessionStorage.setItem(`lamella-problems-${token}`, String(dismissed));
        renderUnsaved();
      });
      unsavedBox.append(...fresh.map((p) => element("p", { class: "error problem" }, p.message)), dismiss);
    }
  }

  async function refresh(addLayers = false) {
    layers = (await getJSON(base)).layers;
    session = addLayers ? await getJSON(`/api/sessions/${token}/annotations`, { method: "POST" })
      : await getJSON(`/api/sessions/${token}/annotations`);
    renderList();
    renderUnsaved();
  }

  // The selected annotation: Neuroglancer's pinned selection names its layer and annotation id.
  let shownKey = "";
  function selected() {
    const viewer = viewerOf();
    const selection = viewer?.selectionDetailsState?.toJSON?.();
    for (const [name, value] of Object.entries(selection?.layers || {})) {
      if (!value?.annotationId) continue;
      const view = session.layers.find((l) => l.name === name);
      if (view) return { layer: view, id: Number(value.annotationId), ngLayer: name };
      const edit = session.layers.find((l) => l.edit_layer === name);
      if (!edit) continue;
      const copy = COPY_ID.exec(value.annotationId);
      const id = copy ? Number(copy[1]) : session.saved[name]?.[value.annotationId];
      return { layer: edit, id, ngLayer: name, ngId: value.annotationId };
    }
    return null;
  }

  async function showSelection(force = false) {
    const chosen = selected();
    const key = chosen ? `${chosen.layer.layer_id}/${chosen.id}/${chosen.ngId || ""}` : "";
    if (key === shownKey && !force) return;
    shownKey = key;
    if (!chosen) {
      details.replaceChildren(element("p", { class: "muted" }, "Ctrl+right-click an annotation in the viewer to see it here."));
      return;
    }
    if (!chosen.id) {
      details.replaceChildren(element("p", { class: "muted" }, "This annotation is not saved yet."));
      shownKey = "";  // look again once it is
      return;
    }
    const path = `${base}/${chosen.layer.layer_id}/annotations/${chosen.id}`;
    try {
      const [record, history] = await Promise.all([getJSON(path), getJSON(`${path}/history`)]);
      const layer = layers.find((l) => l.id === chosen.layer.layer_id);
      const creator = history.versions[0]?.author;
      const editable = can.curate || (can.annotate && me.signed_in && creator === me.name);
      details.replaceChildren(annotationForm(layer, chosen, record, creator, editable, path));
    } catch (error) {
      details.replaceChildren(element("p", { class: "error" }, `Annotation ${chosen.id}: ${error.message}`));
    }
  }

  function annotationForm(layer, chosen, record, creator, editable, path) {
    const form = element("form", { class: "form annotation-form", "data-annotation-id": String(record.id) });
    const disabled = editable ? {} : { disabled: "" };
    const label = element("select", { name: "label", "aria-label": "label", ...disabled },
      element("option", { value: "" }, "(no label)"),
      ...layer.spec.labels.map((l) => element("option", { value: l.id }, l.id)));
    label.value = record.label || "";
    const description = element("textarea", { name: "description", rows: "2", "aria-label": "description", ...disabled });
    description.value = record.description;
    form.append(
      element("h3", {}, `${TYPE_LABELS[record.type]} ${record.id} in ${layer.name}`),
      element("p", { class: "muted" }, `by ${creator || "?"}, version of ${new Date(record.updated_at).toLocaleString()}` +
        ` by ${record.author}`),
      element("label", {}, "label", label), element("label", {}, "description", description));
    const inputs = {};
    for (const prop of layer.spec.properties) {
      let input;
      if (prop.enum_values) {
        input = element("select", { name: prop.id, ...disabled }, element("option", { value: "" }, "(none)"),
          ...prop.enum_values.map((v, i) => element("option", { value: String(v) }, prop.enum_labels?.[i] || String(v))));
      } else if (prop.type === "rgb" || prop.type === "rgba") {
        input = element("input", { name: prop.id, type: "text", placeholder: prop.type === "rgb" ? "#rrggbb" : "#rrggbbaa",
          ...disabled });
      } else {
        input = element("input", { name: prop.id, type: "number", step: prop.type === "float32" ? "any" : "1", ...disabled });
      }
      const value = record.properties[prop.id];
      input.value = value === undefined || value === null ? "" : String(value);
      inputs[prop.id] = [prop, input];
      form.append(element("label", {}, `${prop.id} (${prop.type})`, input));
    }
    if (!editable) {
      form.append(element("p", { class: "muted" }, "Read only: its creator and the dataset's curators change it."));
      return form;
    }
    const save = element("button", { type: "submit", id: "save-annotation" }, "Save");
    const remove = element("button", { type: "button", id: "delete-annotation" }, "Delete");
    const buttons = element("div", { class: "register" }, save, remove);
    if (!chosen.ngId) {
      const edit = element("button", { type: "button", id: "edit-in-viewer" }, "Edit in viewer");
      edit.title = "Copy it into the edit layer, where Neuroglancer's tools move it (alt+drag) and delete it";
      edit.addEventListener("click", () => editInViewer(record, chosen.layer.edit_layer));
      buttons.append(edit);
    }
    const outcome = element("p", { class: "form-status", role: "status" });
    form.append(buttons, outcome);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const properties = {};
      for (const [id, [prop, input]] of Object.entries(inputs)) {
        if (input.value === "") continue;
        properties[id] = prop.type === "rgb" || prop.type === "rgba" ? input.value : Number(input.value);
      }
      const body = { type: record.type, ...geometryOf(record), label: label.value || null,
        description: description.value, properties, segments: record.segments };
      try {
        await sendJSON("PUT", path, body);
        outcome.textContent = "Saved.";
        outcome.className = "form-status";
        await showSelection(true);
      } catch (error) {
        outcome.textContent = `Not saved: ${error.message}`;
        outcome.className = "form-status error";
      }
    });
    remove.addEventListener("click", async () => {
      try {
        await getJSON(path, { method: "DELETE" });
        dropFromEditLayer(chosen.layer.edit_layer, record.id);
        details.replaceChildren(element("p", { class: "muted" }, `Annotation ${record.id} deleted (its history stays).`));
        shownKey = "";
      } catch (error) {
        outcome.textContent = `Not deleted: ${error.message}`;
        outcome.className = "form-status error";
      }
    });
    return form;
  }

  function editLayerSource(name) {
    const managed = name && viewerOf()?.layerManager.getLayerByName(name);
    return managed?.layer?.localAnnotations;
  }

  // An existing annotation goes into the edit layer as "db-<id>": the server then saves its moves and its deletion.
  function editInViewer(record, name) {
    const source = editLayerSource(name);
    if (!source) { report("this layer has no edit layer in your viewer"); return; }
    const id = `db-${record.id}`;
    const current = source.toJSON();
    if (!current.some((a) => a.id === id)) source.restoreState([...current, neuroglancerJson(record, id)]);
    const viewer = viewerOf();
    viewer.selectedLayer.layer = viewer.layerManager.getLayerByName(name);
    viewer.selectedLayer.visible = true;
    report(`Annotation ${record.id} is in ${name}: alt+drag moves it, ctrl+alt+right-click deletes it.`);
  }

  function dropFromEditLayer(name, annotationId) {
    const source = editLayerSource(name);
    if (!source) return;
    const ids = new Set([`db-${annotationId}`, ...Object.entries(session.saved[name] || {})
      .filter(([, saved]) => saved === annotationId).map(([ngId]) => ngId)]);
    const current = source.toJSON();
    if (current.some((a) => ids.has(a.id))) source.restoreState(current.filter((a) => !ids.has(a.id)));
  }

  section.append(status, unsavedBox, element("h3", {}, "Selected annotation"), details);
  if (can.annotate) section.append(newLayerForm(base, async (layer) => {
    report(`Layer ${layer.name} created.`);
    await refresh(true);
  }, report));

  await refresh(true);
  // Follow the viewer: its selection at once, the server's record of what was saved every moment.
  const watchSelection = () => {
    const viewer = viewerOf();
    if (!viewer?.selectionDetailsState) { setTimeout(watchSelection, 500); return; }
    viewer.selectionDetailsState.changed.add(() => showSelection().catch((error) => report(error.message)));
  };
  watchSelection();
  const poll = async () => {
    try {
      session = await getJSON(`/api/sessions/${token}/annotations`);
      renderUnsaved();
      if (!shownKey) await showSelection();
    } catch (error) {
      report(`Could not read what was saved: ${error.message}`);
    }
    setTimeout(poll, POLL_MS);
  };
  setTimeout(poll, POLL_MS);
}

function newLayerForm(base, created, report) {
  const name = element("input", { name: "name", required: "", pattern: "[a-z][a-z0-9_\\-]{0,63}", id: "new-layer-name",
    placeholder: "synapses" });
  const types = element("fieldset", { class: "types" }, element("legend", {}, "types"),
    ...Object.entries(TYPE_LABELS).map(([type, label]) => element("label", {},
      element("input", { type: "checkbox", name: "types", value: type, ...(type === "point" ? { checked: "" } : {}) }),
      ` ${label}`)));
  const labels = element("input", { name: "labels", id: "new-layer-labels", placeholder: "synapse, vesicle" });
  const properties = element("div", { class: "properties" });
  const addProperty = element("button", { type: "button" }, "+ property");
  addProperty.addEventListener("click", () => {
    const type = element("select", { "aria-label": "property type" },
      ...PROPERTY_TYPES.map((t) => element("option", { value: t }, t)));
    const id = element("input", { "aria-label": "property id", placeholder: "confidence", pattern: "[a-z][a-zA-Z0-9_]*" });
    properties.append(element("div", { class: "property" }, id, type));
  });
  const description = element("input", { name: "description", placeholder: "optional" });
  const outcome = element("p", { class: "form-status", role: "status" });
  const form = element("form", { class: "form", id: "new-layer" },
    element("label", {}, "name", name), element("label", {}, "description", description), types,
    element("label", {}, "labels (comma-separated)", labels), properties, addProperty,
    element("button", { type: "submit", id: "create-layer" }, "Create layer"), outcome);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      name: name.value.trim(),
      description: description.value,
      types: [...types.querySelectorAll("input:checked")].map((box) => box.value),
      labels: labels.value.split(",").map((l) => l.trim()).filter(Boolean).map((id) => ({ id })),
      properties: [...properties.querySelectorAll(".property")].map((row) => ({
        id: row.querySelector("input").value.trim(), type: row.querySelector("select").value,
      })).filter((p) => p.id),
    };
    try {
      const layer = await sendJSON("POST", base, body);
      outcome.textContent = "";
      form.reset();
      properties.replaceChildren();
      await created(layer);
    } catch (error) {
      outcome.textContent = `Not created: ${error.message}`;
      outcome.className = "form-status error";
      report("");
    }
  });
  return element("details", { class: "new-layer" }, element("summary", {}, "New layer"), form);
}
