// The API's page (/docs): Swagger UI on /openapi.json, sending the session's CSRF token
// with every request (the relay refuses a change from a session without it).
window.addEventListener("load", function () {
  var csrf = document.querySelector("meta[name=csrf-token]").content;
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    requestInterceptor: function (request) {
      request.headers["X-CSRF-Token"] = csrf;
      return request;
    },
  });
});
