import { mountAccount, postJSON } from "./api.js";

const form = document.getElementById("sign-in");
const status = document.getElementById("status");
// Only a path on this server: never an open redirect to another site.
const wanted = new URLSearchParams(location.search).get("next") || "/";
const next = wanted.startsWith("/") && !wanted.startsWith("//") ? wanted : "/";

mountAccount();
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  status.textContent = "";
  const data = new FormData(form);
  try {
    await postJSON("/api/sign-in", { name: data.get("name"), password: data.get("password") });
    location.assign(next);
  } catch (error) {
    status.textContent = error.status === 429 ? `Too many attempts: ${error.message}` : error.message;
  }
});
