// Answers (JSON, never cached) and request bodies.
#include "ngx_mail_api.h"

#include <jansson.h>

#include "links.h"

bool ngx_mail_api_add_header(ngx_http_request_t *r, const char *key, const std::string &value) noexcept {
    ngx_table_elt_t *h = static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) return false;
    u_char *v = static_cast<u_char *>(ngx_pnalloc(r->pool, value.size()));
    if (v == nullptr) return false;
    ngx_memcpy(v, value.data(), value.size());
    h->hash = 1;
    h->key.data = reinterpret_cast<u_char *>(const_cast<char *>(key));
    h->key.len = ngx_strlen(key);
    h->value.data = v;
    h->value.len = value.size();
    return true;
}

std::string ngx_mail_api_error_json(const char *code, const std::string &message,
                                    const std::string &field) {
    json_t *err = json_object();
    json_object_set_new(err, "code", json_string(code));
    json_object_set_new(err, "message", json_stringn(message.data(), message.size()));
    if (!field.empty()) json_object_set_new(err, "field", json_stringn(field.data(), field.size()));
    json_t *root = json_object();
    json_object_set_new(root, "error", err);
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    std::string out = s ? s : "{\"error\":{\"code\":\"internal\",\"message\":\"internal error\"}}";
    free(s);
    return out;
}

ngx_int_t ngx_mail_api_send_json(ngx_http_request_t *r, ngx_uint_t status, const std::string &body) noexcept {
    // An answer before the body was read: drop the body so that keep-alive
    // does not read it as the next request. A no-op once it was read.
    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    r->headers_out.status = status;
    r->headers_out.content_length_n = static_cast<off_t>(body.size());
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = nullptr;
    // Answers hold personal data or credentials: never cache them.
    if (!ngx_mail_api_add_header(r, "Cache-Control", "no-store")) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, body.size() ? body.size() : 1);
    if (b == nullptr) return NGX_ERROR;
    b->last = ngx_cpymem(b->pos, body.data(), body.size());
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    ngx_chain_t out = {b, nullptr};
    return ngx_http_output_filter(r, &out);
}

namespace {


}  // namespace

ngx_int_t ngx_mail_api_send_page(ngx_http_request_t *r, ngx_uint_t status, const std::string &title,
                                 const std::string &text, const char *button) noexcept {
    try {
        std::string page =
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"robots\" content=\"noindex\"><title>" +
            mailapi::links::html_escape(title) +
            "</title><style>body{font:16px/1.5 system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em;"
            "color:#222}h1{font-size:1.4em}button{font:inherit;padding:.5em 1.5em}</style></head><body><main><h1>" +
            mailapi::links::html_escape(title) + "</h1><p>" + mailapi::links::html_escape(text) + "</p>";
        if (button) {
            // posts back to this very URL (RFC 8058's one-click body)
            page += "<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">"
                    "<button type=\"submit\">" + mailapi::links::html_escape(button) + "</button></form>";
        }
        page += "</main></body></html>\n";
        if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        r->headers_out.status = status;
        r->headers_out.content_length_n = static_cast<off_t>(page.size());
        ngx_str_set(&r->headers_out.content_type, "text/html; charset=utf-8");
        r->headers_out.content_type_len = r->headers_out.content_type.len;
        r->headers_out.content_type_lowcase = nullptr;
        // a page of ours alone: no scripts, no outside resources, not framed,
        // the link (a credential) not passed on as a referrer, never cached
        bool ok = ngx_mail_api_add_header(r, "Cache-Control", "no-store") &&
                  ngx_mail_api_add_header(r, "Content-Security-Policy",
                                          "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                          "frame-ancestors 'none'; base-uri 'none'") &&
                  ngx_mail_api_add_header(r, "X-Content-Type-Options", "nosniff") &&
                  ngx_mail_api_add_header(r, "X-Frame-Options", "DENY") &&
                  ngx_mail_api_add_header(r, "Referrer-Policy", "no-referrer");
        if (!ok) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        ngx_int_t rc = ngx_http_send_header(r);
        if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
        ngx_buf_t *b = ngx_create_temp_buf(r->pool, page.size());
        if (b == nullptr) return NGX_ERROR;
        b->last = ngx_cpymem(b->pos, page.data(), page.size());
        b->last_buf = (r == r->main) ? 1 : 0;
        b->last_in_chain = 1;
        ngx_chain_t out = {b, nullptr};
        return ngx_http_output_filter(r, &out);
    } catch (...) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

ngx_int_t ngx_mail_api_send_error(ngx_http_request_t *r, ngx_uint_t status, const char *code,
                                  const std::string &message, const std::string &field) noexcept {
    try {
        if (status == NGX_HTTP_UNAUTHORIZED) {
            ngx_mail_api_add_header(r, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        } else if (status == NGX_HTTP_FORBIDDEN && ngx_strcmp(code, "insufficient_scope") == 0) {
            ngx_mail_api_add_header(r, "WWW-Authenticate", "Bearer error=\"insufficient_scope\"");
        } else if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
            ngx_mail_api_add_header(r, "Retry-After", "1");
        }
        return ngx_mail_api_send_json(r, status, ngx_mail_api_error_json(code, message, field));
    } catch (...) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

bool ngx_mail_api_content_type_json(ngx_http_request_t *r) noexcept {
    ngx_table_elt_t *ct = r->headers_in.content_type;
    if (ct == nullptr) return false;
    static const char json[] = "application/json";
    size_t n = sizeof(json) - 1;
    if (ct->value.len < n || ngx_strncasecmp(ct->value.data, (u_char *)json, n) != 0) return false;
    return ct->value.len == n || ct->value.data[n] == ';' || ct->value.data[n] == ' ';
}

static ngx_int_t body_string(ngx_http_request_t *r, size_t max, std::string &out) {
    if (r->request_body == nullptr) return NGX_OK;
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        ngx_buf_t *b = cl->buf;
        size_t size = b->in_file ? static_cast<size_t>(b->file_last - b->file_pos)
                                 : static_cast<size_t>(b->last - b->pos);
        if (out.size() + size > max) return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        if (b->in_file) {
            size_t at = out.size();
            out.resize(at + size);
            ssize_t n = ngx_read_file(b->file, reinterpret_cast<u_char *>(&out[at]), size, b->file_pos);
            if (n != static_cast<ssize_t>(size)) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        } else {
            out.append(reinterpret_cast<char *>(b->pos), size);
        }
    }
    return NGX_OK;
}

static ngx_int_t too_large(ngx_http_request_t *r, size_t max) {
    return ngx_mail_api_send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "too_large",
                                   "the request body is larger than " + std::to_string(max) + " bytes");
}

static void body_read(ngx_http_request_t *r) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(ngx_http_get_module_main_conf(r, ngx_mail_api_module));
    auto *ctx = static_cast<ngx_mail_api_ctx_t *>(ngx_http_get_module_ctx(r, ngx_mail_api_module));
    ngx_int_t rc;
    try {
        std::string body;
        rc = body_string(r, ctx->max_body, body);
        if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
            rc = too_large(r, ctx->max_body);
        } else if (rc == NGX_OK) {
            rc = ctx->on_body(r, mcf, ctx->key, body);
            if (rc == NGX_DONE) return;  // the handler finishes the request later
        }
    } catch (...) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_finalize_request(r, rc);
}

ngx_int_t ngx_mail_api_read_body(ngx_http_request_t *r, const mailapi::ApiKey *key, size_t max,
                                 ngx_mail_api_body_pt on_body) noexcept {
    try {
        // refused before a byte of it is read, when the length is announced
        if (r->headers_in.content_length_n > static_cast<off_t>(max)) return too_large(r, max);
    } catch (...) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_mail_api_ctx_t *ctx = ngx_mail_api_ctx(r);
    if (ctx == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ctx->key = key;
    ctx->max_body = max;
    ctx->on_body = on_body;
    ngx_int_t rc = ngx_http_read_client_request_body(r, body_read);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) return rc;
    return NGX_DONE;
}

void ngx_mail_api_finish(ngx_http_request_t *r, ngx_int_t rc) noexcept {
    ngx_connection_t *c = r->connection;
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

std::string_view ngx_mail_api_header(ngx_http_request_t *r, std::string_view name) noexcept {
    ngx_list_part_t *part = &r->headers_in.headers.part;
    auto *h = static_cast<ngx_table_elt_t *>(part->elts);
    for (ngx_uint_t i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) return {};
            part = part->next;
            h = static_cast<ngx_table_elt_t *>(part->elts);
            i = 0;
        }
        if (h[i].key.len == name.size() &&
            ngx_strncasecmp(h[i].key.data, reinterpret_cast<u_char *>(const_cast<char *>(name.data())), name.size()) == 0) {
            return {reinterpret_cast<char *>(h[i].value.data), h[i].value.len};
        }
    }
}

ngx_mail_api_ctx_t *ngx_mail_api_ctx(ngx_http_request_t *r) noexcept {
    auto *ctx = static_cast<ngx_mail_api_ctx_t *>(ngx_http_get_module_ctx(r, ngx_mail_api_module));
    if (ctx) return ctx;
    ctx = static_cast<ngx_mail_api_ctx_t *>(ngx_pcalloc(r->pool, sizeof(ngx_mail_api_ctx_t)));
    if (ctx) ngx_http_set_ctx(r, ctx, ngx_mail_api_module);
    return ctx;
}
