// The API reference page: Swagger UI over this server's own OpenAPI document.
"use strict";
const specUrl = document.currentScript.dataset.spec;
window.addEventListener("DOMContentLoaded", () => {
  window.SwaggerUIBundle({
    url: specUrl,
    dom_id: "#reference",
    deepLinking: true,
    // The sign-in cookie goes with "Try it out" from this page, like the web app's own calls.
    requestInterceptor: (request) => { request.credentials = "same-origin"; return request; },
  });
});
