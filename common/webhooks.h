// Webhooks out (Standard Webhooks, https://www.standardwebhooks.com): what a
// tenant's endpoint receives for every event of its messages' timelines,
// and how it can tell the request is ours:
//   webhook-id         a stable id of the event: "<message id>_<event id>"
//                      (the same on every retry, so receivers drop repeats)
//   webhook-timestamp  unix seconds of this attempt
//   webhook-signature  "v1,<base64 HMAC-SHA256(key, id.timestamp.body)>", one
//                      a secret, space-separated while a rotation keeps two
// with the key the base64 after "whsec_" of the endpoint's secret.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailapi {

constexpr size_t WEBHOOKS_PER_TENANT = 20;

std::string webhook_secret_new();  // "whsec_" + base64 of 24 random bytes
// The HMAC key of a "whsec_..." secret; false if it is not one.
bool webhook_secret_key(std::string_view secret, std::string &key);
std::string webhook_signature(const std::vector<std::string> &secrets, std::string_view id, int64_t timestamp,
                              std::string_view body);

// An endpoint's URL: http(s)://host[:port]/path, no user or fragment, at most
// 2048 characters. (Where it points is checked when it is called: deliveryd
// refuses loopback and private addresses unless told otherwise.)
bool webhook_url_valid(std::string_view url, std::string &error);
// An endpoint's event types: "*" or a comma-separated list of timeline event
// types (contract::event); false with `error` naming the unknown one.
bool webhook_types_valid(std::string_view types, std::string &error);
bool webhook_wants(std::string_view types, std::string_view event_type);

}  // namespace mailapi
