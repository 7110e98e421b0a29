// Swagger UI, served from this server (no CDN), on the generated document; no outside validator.
if (typeof window.SwaggerUIBundle === "function") {
  window.SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger",
    validatorUrl: null,
    deepLinking: true,
    withCredentials: true,
    requestInterceptor: (request) => {
      const match = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
      if (match && request.method !== "GET") request.headers["X-XSRFToken"] = decodeURIComponent(match[1]);
      return request;
    },
  });
} else {
  document.getElementById("missing").hidden = false;
}
