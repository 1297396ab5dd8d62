// The providers' accounts whose event webhooks the module takes (directive
// mail_api_event_sources FILE), one a line:
//   NAME sendgrid public_key=BASE64            (the key SendGrid shows for its signed Event Webhook)
//   NAME mailgun  signing_key=KEY              (the webhook signing key)
//   NAME postmark username=USER password=PASS  (the Basic credentials set in the webhook's URL)
//   NAME ses      topic_arn=ARN [cert_host=sns.*.amazonaws.com] [cacert=PATH]
// Any value may be given as KEY_file=PATH (its first line). NAME is the last
// part of the webhook's URL: POST /v1/events/NAME.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace mailapi {

struct EventSource {
    std::string name, type;
    std::string public_key;       // sendgrid
    std::string signing_key;      // mailgun
    std::string username, password;  // postmark
    std::string topic_arn, cert_host = "sns.*.amazonaws.com", cacert;  // ses
};

// On error, `err` names the line and what is wrong (never a secret's value).
bool event_sources_parse(std::string_view text, std::vector<EventSource> &out, std::string &err);
const EventSource *event_source_find(const std::vector<EventSource> &sources, std::string_view name);

}  // namespace mailapi
