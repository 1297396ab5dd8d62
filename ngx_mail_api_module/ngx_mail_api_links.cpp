// The links in a recipient's copy of a message (links.h), each signed by
// deliveryd for that recipient and expiring:
//   GET  /u/{token}   a page with one button: unsubscribe (nothing recorded:
//                     RFC 8058 forbids a GET to unsubscribe; scanners fetch links)
//   POST /u/{token}   the one-click unsubscribe (RFC 8058: what Gmail and
//                     Yahoo send), or that button: recorded once, the address
//                     suppressed by deliveryd
//   GET  /r/{token}   a response ("yes", "no"...): the first one recorded;
//                     a page says so, or the browser goes to the tenant's
//                     responses_url
// A use is recorded once (contract::LINK_ONCE_LUA) and goes to deliveryd as an
// event of the source contract::LINKS_SOURCE (the timeline, the webhooks, the
// suppression list). A forged, altered or expired link records nothing.
#include "ngx_mail_api.h"

#include "contract.h"
#include "links.h"
#include "provider_events.h"

namespace contract = mailapi::contract;
namespace links = mailapi::links;

namespace {

constexpr size_t UNSUBSCRIBE_BODY_MAX = 4096;  // "List-Unsubscribe=One-Click", or a form's

struct Use {
    links::Link link;
    const mailapi::ApiKey *tenant_key;  // the tenant's key with responses_url, if any
};

ngx_int_t refused(ngx_http_request_t *r, links::Verdict v) {
    if (v == links::Verdict::expired) {
        return ngx_mail_api_send_page(r, 410, "This link has expired",
                                      "Links in a message work for a limited time. Nothing was recorded.");
    }
    return ngx_mail_api_send_page(r, NGX_HTTP_BAD_REQUEST, "This link is not valid",
                                  "It may have been cut short or changed on its way. Nothing was recorded; "
                                  "try the link in the message again.");
}

ngx_int_t unavailable(ngx_http_request_t *r) {
    ngx_mail_api_add_header(r, "Retry-After", "5");
    return ngx_mail_api_send_page(r, NGX_HTTP_SERVICE_UNAVAILABLE, "Please try again",
                                  "We could not record this just now. Nothing was recorded; try again in a moment.");
}

// The link of this request's URI, verified.
links::Verdict verified(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, links::Link &out) {
    std::string_view uri(reinterpret_cast<char *>(r->uri.data), r->uri.len);
    if (uri.size() < 4) return links::Verdict::malformed;
    links::Verdict v = links::token_verify(*mcf->keyring, uri.substr(3), ngx_time(), out);
    if (v == links::Verdict::ok && out.kind != uri[1]) return links::Verdict::malformed;
    return v;
}

const mailapi::ApiKey *responses_key(ngx_mail_api_main_conf_t *mcf, const std::string &tenant) {
    for (const mailapi::ApiKey &k : *mcf->keys) {
        if (k.tenant == tenant && !k.responses_url.empty()) return &k;
    }
    return nullptr;
}

std::string query_escape(std::string_view s) {
    static const char hex[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out.push_back(static_cast<char>(c));
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

ngx_int_t redirect(ngx_http_request_t *r, const Use *u, const std::string &response, bool first) {
    std::string url = u->tenant_key->responses_url;
    url += url.find('?') == std::string::npos ? '?' : '&';
    url += "message_id=" + u->link.message_id + "&response=" + query_escape(response) +
           "&first=" + (first ? "1" : "0");
    ngx_table_elt_t *h = static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    u_char *v = static_cast<u_char *>(ngx_pnalloc(r->pool, url.size()));
    if (h == nullptr || v == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ngx_memcpy(v, url.data(), url.size());
    h->hash = 1;
    ngx_str_set(&h->key, "Location");
    h->value = {url.size(), v};
    r->headers_out.location = h;
    ngx_mail_api_add_header(r, "Referrer-Policy", "no-referrer");
    ngx_mail_api_add_header(r, "Cache-Control", "no-store");
    return NGX_HTTP_SEE_OTHER;
}

ngx_int_t recorded(ngx_http_request_t *r, redisReply *reply, void *data) {
    auto *u = static_cast<Use *>(data);
    if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER) {
        return unavailable(r);
    }
    bool first = reply->element[0]->integer == 1;
    std::string was = !first && reply->elements > 1 && reply->element[1]->type == REDIS_REPLY_STRING
                          ? std::string(reply->element[1]->str, reply->element[1]->len)
                          : u->link.response;
    if (u->link.kind == links::UNSUBSCRIBE) {
        return ngx_mail_api_send_page(r, NGX_HTTP_OK, "You are unsubscribed",
                                      first ? "You will not get these messages any more."
                                            : "You had already unsubscribed: you will not get these messages.");
    }
    if (u->tenant_key) return redirect(r, u, was, first);
    return ngx_mail_api_send_page(r, NGX_HTTP_OK, first ? "Thank you" : "You have already responded",
                                  first ? "Your response \u201c" + was + "\u201d was recorded."
                                        : "Your response \u201c" + was + "\u201d was recorded before; it stays.");
}

// Recorded once: the link's key in Redis (until it expires) and its event on
// the events stream, in one script.
ngx_int_t record(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const links::Link &l) {
    mailapi::pevents::Event ev;
    bool unsub = l.kind == links::UNSUBSCRIBE;
    ev.id = std::string(1, l.kind) + std::to_string(l.rcpt);  // one of each a recipient: a repeat is the same
    ev.message_id = l.message_id;
    ev.type = unsub ? contract::event::UNSUBSCRIBED : contract::event::RESPONDED;
    ev.at_ms = ngx_mail_api_now_ms();
    ev.tenant = l.tenant;
    ev.rcpt = l.rcpt;
    ev.response = l.response;
    std::string sealed;
    if (!mailapi::envelope_seal(*mcf->keyring, contract::event_aad(contract::LINKS_SOURCE, l.message_id),
                                mailapi::pevents::event_to_json(ev), sealed)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    std::string stream(reinterpret_cast<char *>(mcf->redis_stream.data), mcf->redis_stream.len);
    auto *u = ngx_mail_api_pool_new<Use>(r->pool);
    if (u == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    u->link = l;
    u->tenant_key = unsub ? nullptr : responses_key(mcf, l.tenant);
    int64_t ttl = std::max<int64_t>(1, l.expires - ngx_time());
    return ngx_mail_api_redis_request(r, mcf,
                                      {"EVAL", contract::LINK_ONCE_LUA, "2",
                                       contract::link_key(stream, l.kind, l.message_id, l.rcpt),
                                       contract::events_stream(stream), unsub ? std::string("1") : l.response,
                                       std::to_string(ttl), contract::LINKS_SOURCE, l.message_id, sealed},
                                      recorded, u);
}

ngx_int_t unsubscribe_posted(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *,
                             const std::string &) {
    links::Link l;
    links::Verdict v = verified(r, mcf, l);
    if (v != links::Verdict::ok) return refused(r, v);
    return record(r, mcf, l);
}

}  // namespace

ngx_int_t ngx_mail_api_handle_link(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, char kind,
                                   std::string_view) {
    bool get = r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD);
    if (kind == links::UNSUBSCRIBE && r->method == NGX_HTTP_POST) {
        return ngx_mail_api_read_body(r, nullptr, UNSUBSCRIBE_BODY_MAX, unsubscribe_posted);
    }
    if (!get) {
        ngx_mail_api_add_header(r, "Allow", kind == links::UNSUBSCRIBE ? "GET, POST" : "GET");
        return ngx_mail_api_send_page(r, NGX_HTTP_NOT_ALLOWED, "Not allowed", "Open the link in a browser.");
    }
    links::Link l;
    links::Verdict v = verified(r, mcf, l);
    if (v != links::Verdict::ok) return refused(r, v);
    if (kind == links::UNSUBSCRIBE) {
        return ngx_mail_api_send_page(r, NGX_HTTP_OK, "Unsubscribe",
                                      "Stop getting these messages at this address?", "Unsubscribe");
    }
    // a HEAD (a link checker, a preview) records nothing
    if (r->method == NGX_HTTP_HEAD) return ngx_mail_api_send_page(r, NGX_HTTP_OK, "Respond", "");
    ngx_int_t rc = record(r, mcf, l);
    if (rc == NGX_DONE) r->main->count++;  // the reply's answer gives it back
    return rc;
}
