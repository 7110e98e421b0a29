// Small helpers around the JSON API; errors carry the server's message.

// The _xsrf cookie's value: writes made with a sign-in cookie must send it back as a header.
export function xsrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export async function getJSON(url, options = {}) {
  const method = (options.method || "GET").toUpperCase();
  const headers = new Headers(options.headers || {});
  if (method !== "GET" && method !== "HEAD") headers.set("X-XSRFToken", xsrfToken());
  const response = await fetch(url, { ...options, headers, credentials: "same-origin" });
  const body = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.message || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

export const postJSON = (url, body) => getJSON(url, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
});

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

// "signed in as … · Sign out" or "Sign in" in the page header; resolves to who is signed in.
export async function mountAccount() {
  const slot = document.getElementById("account");
  const me = await getJSON("/api/me").catch(() => ({ signed_in: false }));
  if (!slot) return me;
  if (me.signed_in) {
    const out = element("button", { type: "button", id: "sign-out", class: "link" }, "Sign out");
    out.addEventListener("click", () => postJSON("/api/sign-out", {})
      .then(() => location.assign("/"), (error) => { out.textContent = `Sign out failed: ${error.message}`; }));
    slot.replaceChildren(element("span", { id: "signed-in-as" }, `signed in as ${me.name} (${me.role})`), " · ", out);
  } else {
    const next = encodeURIComponent(location.pathname + location.search);
    slot.replaceChildren(element("a", { href: `/sign-in?next=${next}`, id: "sign-in-link" }, "Sign in"));
  }
  return me;
}
