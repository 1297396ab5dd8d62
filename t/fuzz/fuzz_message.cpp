// Request validation: no body crashes it; what it accepts re-serialises to a
// canonical form that it accepts again unchanged.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "message.h"
#include "mime.h"

using namespace mailapi;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    std::string in(reinterpret_cast<const char *>(data), size);
    Message m;
    FieldError e;
    if (message_parse(in, MessageLimits(), 1800000000, m, e)) {
        std::string canon = message_to_json(m);
        Message again;
        if (!message_parse(canon, MessageLimits::stored(), 0, again, e)) abort();
        if (message_to_json(again) != canon) abort();
        for (const std::string &r : message_recipients(m)) {
            if (!address_valid(r)) abort();
        }
        std::string h = mime_header_text(m.subject) + mime_address(m.from);
        if (h.find('\n') != std::string::npos && h.find("\r\n ") == std::string::npos) abort();  // only folding
    } else if (e.code.empty() || (e.status != 400 && e.status != 422)) {
        abort();  // every refusal says why
    }
    address_valid(in);
    int64_t t;
    rfc3339_parse(in, t);
    return 0;
}
